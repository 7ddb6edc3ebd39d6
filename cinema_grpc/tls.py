"""TLS for the gRPC port: the server's certificate and key, checked at start."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

import grpc

from cinema_grpc.settings import ConfigurationError


def server_credentials(cert_file: Path, key_file: Path) -> grpc.ServerCredentials:
    """Credentials of a TLS port; raises ConfigurationError, naming the files, unless the
    certificate chain and its private key can be read and belong together."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_file, key_file)
        key, chain = key_file.read_bytes(), cert_file.read_bytes()
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"TLS certificate {cert_file} and key {key_file} cannot be used: {exc} "
            "(both PEM, the key unencrypted and matching the certificate)"
        ) from exc
    return grpc.ssl_server_credentials([(key, chain)])


def is_loopback(host: str) -> bool:
    """Whether a listener bound to ``host`` is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
