"""Business rules and use cases. Imports no framework: no grpc, protobuf, SQLAlchemy, Stripe or Redis."""
