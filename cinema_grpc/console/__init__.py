"""The staff console: a web back office that reaches the backend only through the gRPC services."""
