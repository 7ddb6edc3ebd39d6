"""gRPC servicers: protobuf <-> domain conversion, error mapping and request logging."""
