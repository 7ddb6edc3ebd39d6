"""Fixtures of the end-to-end tests: the grpc-gateway, built once, in front of the test server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cinema_grpc.gateway import GatewayProcess, build_gateway, toolchain_available
from tests.conftest import RunningServer
from tests.ports import free_port


@pytest.fixture(scope="session")
def gateway_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The gateway, built once per session from the working tree's protos."""
    if not toolchain_available():
        message = (
            "the gateway toolchain (Go, protoc, grpc-gateway) is not installed: run scripts/install-gateway-deps.sh"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return build_gateway(tmp_path_factory.mktemp("gateway"), update_openapi=False)


@pytest.fixture(scope="session")
def gateway(gateway_binary: Path, address: str, server: RunningServer) -> Iterator[str]:
    """Base URL of a gateway in front of the session's test server, trusted as serve trusts its own."""
    assert server.server is not None
    process = GatewayProcess(gateway_binary)
    process.start(
        address, "127.0.0.1", free_port(), gateway_binary.parent / "openapi", proxy_key=server.server.gateway_proxy_key
    )
    yield process.url
    assert process.stop() == 0  # SIGTERM is a graceful stop
