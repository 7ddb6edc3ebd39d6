"""Cinema selling backend: screening, booking, payment and identity behind gRPC."""
