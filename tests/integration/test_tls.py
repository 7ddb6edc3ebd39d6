"""TLS on the gRPC port: with a certificate and key configured, clients that trust the
certificate talk to the server; plaintext clients and clients that trust another do not."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import ValidationError

from cinema.screening.v1 import screening_pb2 as spb
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.settings import ConfigurationError, Settings
from cinema_grpc.tls import server_credentials
from tests.conftest import RunningServer
from tests.tls_files import self_signed_certificate


def test_a_tls_channel_reaches_the_server_and_plaintext_does_not(server_settings: Settings, tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    other_cert, _ = self_signed_certificate(tmp_path, "other")
    running = RunningServer(server_settings.model_copy(update={"tls_cert_file": cert, "tls_key_file": key}))
    address = f"127.0.0.1:{running.port}"
    try:
        with grpc.secure_channel(address, grpc.ssl_channel_credentials(cert.read_bytes())) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            assert ScreeningServiceStub(channel).ListCinemas(spb.ListCinemasRequest(), timeout=10) is not None
        with grpc.insecure_channel(address) as plaintext, pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        untrusted = grpc.ssl_channel_credentials(other_cert.read_bytes())
        with grpc.secure_channel(address, untrusted) as channel, pytest.raises(grpc.RpcError) as refused:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    finally:
        running.stop()


def test_a_key_that_does_not_match_the_certificate_is_refused_naming_the_files(tmp_path: Path) -> None:
    cert, _ = self_signed_certificate(tmp_path)
    _, other_key = self_signed_certificate(tmp_path, "other")
    with pytest.raises(ConfigurationError) as refused:
        server_credentials(cert, other_key)
    assert str(cert) in str(refused.value) and str(other_key) in str(refused.value)
    with pytest.raises(ConfigurationError, match="cannot be used"):
        server_credentials(tmp_path / "missing.crt", tmp_path / "missing.key")


def test_a_certificate_without_a_key_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="CINEMA_TLS_CERT_FILE and CINEMA_TLS_KEY_FILE go together"):
        Settings(tls_cert_file=tmp_path / "server.crt")
    with pytest.raises(ValidationError, match="CINEMA_GATEWAY_TLS_CERT_FILE"):
        Settings(gateway_tls_key_file=tmp_path / "server.key")
