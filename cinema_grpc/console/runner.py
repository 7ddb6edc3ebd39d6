"""Runs the console's HTTP server (uvicorn) inside an asyncio loop that something else owns:
next to the gRPC server in `serve --console`, or alone in `console --target`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import structlog
import uvicorn
from starlette.applications import Starlette

from cinema_grpc.console.app import create_app
from cinema_grpc.console.backend import Backend

log = structlog.get_logger("cinema_grpc.console")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8090


@dataclass(frozen=True)
class ConsoleConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT


class _EmbeddedServer(uvicorn.Server):
    """The loop's owner handles SIGTERM/SIGINT and stops the console itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ConsoleServer:
    def __init__(
        self, target: str, config: ConsoleConfig, grpc_ca: Path | None = None, proxy_key: str | None = None
    ) -> None:
        """``grpc_ca``: the server's gRPC port speaks TLS; trust this certificate (PEM) for it.
        ``proxy_key``: the in-process server's proxy key (see Backend)."""
        self.proxy_key = proxy_key
        self.target = target
        self.config = config
        self.grpc_ca = grpc_ca
        self.port = 0
        self._channel: grpc.aio.Channel | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self.app: Starlette | None = None

    async def start(self) -> int:
        """Serves on the configured address (port 0: any free one) and returns the port."""
        if self.grpc_ca is None:
            self._channel = grpc.aio.insecure_channel(self.target)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=self.grpc_ca.read_bytes())
            self._channel = grpc.aio.secure_channel(self.target, credentials)
        self.app = app = create_app(Backend(self._channel, self.proxy_key))
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.config.host, self.config.port))
        self.port = sock.getsockname()[1]
        # Open seat-map streams would hold a graceful stop forever: they get two seconds.
        settings = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2)
        self._server = _EmbeddedServer(settings)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise RuntimeError("the console stopped while starting")
            await asyncio.sleep(0.02)
        log.info("console serving", url=self.url, grpc_target=self.target)
        return self.port

    @property
    def url(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{self.port}/"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        if self.app is not None:
            self.app.state.console.close()
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
        if self._channel is not None:
            await self._channel.close()


async def run_console(target: str, config: ConsoleConfig, grpc_ca: Path | None = None) -> None:
    """`cinema-grpc console`: serves until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    console = ConsoleServer(target, config, grpc_ca)
    await console.start()
    print(f"console: {console.url} (gRPC server {target})", flush=True)
    try:
        await stop.wait()
    finally:
        await console.stop()
