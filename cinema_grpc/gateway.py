"""The partner REST/JSON gateway: a grpc-gateway binary (gateway/main.go) built from protos/ by
scripts/build-gateway.sh, run as a child process in front of the gRPC server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import structlog

from cinema_grpc.settings import Settings

log = structlog.get_logger("cinema_grpc.gateway")

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "scripts" / "build-gateway.sh"
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-gateway-deps.sh"
BUILD_DIR = REPO_ROOT / "build" / "gateway"
OPENAPI_DIR = REPO_ROOT / "generated" / "openapi"
# The environment variable by which the gateway learns the key it sends as x-cinema-proxy-key.
PROXY_KEY_VARIABLE = "CINEMA_GATEWAY_PROXY_KEY"
# The server's settings that hold secrets by other names than CINEMA_*.
_SERVER_VARIABLES = frozenset({"DATABASE_URL", "REDIS_URL"})


def gateway_environment(environ: Mapping[str, str], proxy_key: str | None) -> dict[str, str]:
    """The gateway's environment: this one without the server's settings (the database URL,
    Stripe, token, ticket and audit keys), which the internet-facing gateway never needs, plus
    the proxy key, given here rather than on the command line, which every local user can read."""
    kept = {
        name: value
        for name, value in environ.items()
        if not name.upper().startswith("CINEMA_") and name.upper() not in _SERVER_VARIABLES
    }
    if proxy_key:
        kept[PROXY_KEY_VARIABLE] = proxy_key
    return kept


TOOLCHAIN_MISSING = 3  # build-gateway.sh's exit status when the Debian packages are not installed


class GatewayError(RuntimeError):
    """The gateway could not be built or started."""


class ToolchainMissing(GatewayError):
    """Go, protoc or the grpc-gateway plugins are not installed."""


def _sources() -> list[Path]:
    """What the binary is built from: a newer file means it must be rebuilt."""
    return [
        BUILD_SCRIPT,
        *(REPO_ROOT / "gateway").rglob("*.go"),
        *(REPO_ROOT / "gateway").rglob("*.proto"),
        *(REPO_ROOT / "protos").rglob("*.proto"),
        *(REPO_ROOT / "third_party").rglob("*.proto"),
    ]


def _run_script(*args: str) -> subprocess.CompletedProcess[str]:
    if not BUILD_SCRIPT.is_file():
        raise GatewayError(f"{BUILD_SCRIPT} is missing: the gateway is built from a checkout of the repository")
    return subprocess.run(["bash", str(BUILD_SCRIPT), *args], capture_output=True, text=True, check=False)


def toolchain_available() -> bool:
    """Whether the Debian packages the build needs are installed."""
    return _run_script("--check-tools").returncode == 0


def build_gateway(out_dir: Path = BUILD_DIR, *, update_openapi: bool = True) -> Path:
    """Builds the gateway into ``out_dir`` (binary ``gateway``, Swagger documents in ``openapi/``)
    and returns the binary. With ``update_openapi`` the documents also replace generated/openapi."""
    args = [] if update_openapi else ["--no-openapi-copy"]
    result = _run_script(*args, str(out_dir))
    if result.returncode == TOOLCHAIN_MISSING:
        raise ToolchainMissing(result.stderr.strip() or f"the gateway toolchain is missing: run {INSTALL_SCRIPT}")
    if result.returncode != 0:
        raise GatewayError(f"building the gateway failed (exit {result.returncode}):\n{result.stderr.strip()}")
    binary = out_dir / "gateway"
    if not binary.is_file():
        raise GatewayError(f"the build reported success but {binary} is missing")
    return binary


def ensure_gateway(out_dir: Path = BUILD_DIR) -> Path:
    """The gateway binary in ``out_dir``, (re)built if missing or older than its sources."""
    binary = out_dir / "gateway"
    if binary.is_file():
        built = binary.stat().st_mtime
        if all(source.stat().st_mtime <= built for source in _sources() if source.is_file()):
            return binary
        log.info("gateway sources changed: rebuilding", binary=str(binary))
    else:
        log.info("building the gateway (the first build takes up to a minute)", binary=str(binary))
    return build_gateway(out_dir, update_openapi=False)


def openapi_dir_of(binary: Path) -> Path:
    """The Swagger documents built with ``binary``, else the committed ones."""
    built = binary.parent / "openapi"
    return built if built.is_dir() else OPENAPI_DIR


@dataclass(frozen=True)
class GatewayConfig:
    """How ``serve`` runs the gateway in front of its gRPC server."""

    binary: Path
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    openapi_dir: Path | None = OPENAPI_DIR


def gateway_tls(settings: Settings) -> tuple[Path, Path] | None:
    """The gateway's HTTPS certificate and key, if configured."""
    if settings.gateway_tls_cert_file is None or settings.gateway_tls_key_file is None:
        return None
    return settings.gateway_tls_cert_file, settings.gateway_tls_key_file


def grpc_target(grpc_host: str, grpc_port: int) -> str:
    """The address the gateway dials to reach a gRPC server listening on ``grpc_host``."""
    return _join(_dial_host(grpc_host), grpc_port)


def _dial_host(host: str) -> str:
    """Where to connect to reach a listener bound to ``host``."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}.get(host, host.strip("[]"))


def _join(host: str, port: int) -> str:
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((_dial_host(host), port), timeout=0.5):
            return True
    except OSError:
        return False


class GatewayProcess:
    """One running gateway binary, forwarding REST/JSON on ``http_host:http_port`` to gRPC."""

    def __init__(self, binary: Path, *, output: IO[str] | None = None) -> None:
        self.binary = binary
        self._output = output
        self._process: subprocess.Popen[str] | None = None
        self.http_host = ""
        self.http_port = 0
        self._tls = False

    @property
    def url(self) -> str:
        scheme = "https" if self._tls else "http"
        return f"{scheme}://{_join(_dial_host(self.http_host), self.http_port)}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(
        self,
        grpc_address: str,
        http_host: str = "127.0.0.1",
        http_port: int = 8080,
        openapi_dir: Path | None = OPENAPI_DIR,
        *,
        grpc_ca: Path | None = None,
        tls: tuple[Path, Path] | None = None,
        flags: Sequence[str] = (),
        timeout: float = 15,
        proxy_key: str | None = None,
    ) -> None:
        """Starts the gateway and returns once its HTTP port accepts connections.

        ``http_port`` 0 picks a free port. ``proxy_key`` (the gRPC server's) is sent with every
        call so the server believes the client address the gateway forwards. ``grpc_ca``: dial
        the gRPC server over TLS, trusting the certificates of this PEM file (the server's own
        certificate will do), for the host of ``grpc_address``. ``tls``: (certificate, key) to
        serve HTTPS with. ``flags``: more of the binary's flags (its limits, e.g.
        ``-read-timeout 10s``). Raises
        GatewayError if the port is taken or the process exits or does not listen within
        ``timeout`` seconds.
        """
        if self._process is not None:
            raise GatewayError("the gateway is already started")
        if not os.access(self.binary, os.X_OK):
            raise GatewayError(f"no gateway binary at {self.binary}: run 'cinema-grpc gateway build'")
        if http_port == 0:
            with socket.socket(socket.AF_INET6 if ":" in _dial_host(http_host) else socket.AF_INET) as probe:
                probe.bind((http_host.strip("[]"), 0))
                http_port = int(probe.getsockname()[1])
        elif _accepts(http_host, http_port):
            raise GatewayError(f"{_join(http_host, http_port)} is already in use")
        command = [str(self.binary), "-grpc", grpc_address, "-http", _join(http_host, http_port), "-stdin-lifeline"]
        if grpc_ca is not None:
            command += ["-grpc-ca", str(grpc_ca)]
        if tls is not None:
            command += ["-tls-cert", str(tls[0]), "-tls-key", str(tls[1])]
        command += flags
        self._tls = tls is not None
        if openapi_dir is not None:
            if not openapi_dir.is_dir():
                raise GatewayError(f"OpenAPI directory {openapi_dir} does not exist")
            command += ["-openapi", str(openapi_dir)]
        self.http_host, self.http_port = http_host, http_port
        # Its own session: a Ctrl-C at the terminal reaches this process only, which stops the
        # gateway before the gRPC server. The stdin pipe ends the gateway if this process dies.
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=self._output,
            stderr=self._output,
            text=True,
            start_new_session=True,
            env=gateway_environment(os.environ, proxy_key),
        )
        deadline = time.monotonic() + timeout
        while not _accepts(http_host, http_port):
            code = self._process.poll()
            if code is not None:
                self.stop()
                raise GatewayError(f"the gateway exited with status {code} while starting (see its log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise GatewayError(f"the gateway did not listen on {_join(http_host, http_port)} within {timeout} s")
            time.sleep(0.05)
        log.info("gateway listening", url=self.url, grpc=grpc_address, pid=self._process.pid)

    def wait(self) -> int:
        """Blocks until the gateway exits; returns its status."""
        if self._process is None:
            raise GatewayError("the gateway is not started")
        return self._process.wait()

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit status."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("gateway did not stop in time: killing it", pid=process.pid)
                process.kill()
                process.wait()
        if process.stdin is not None:
            process.stdin.close()
        return process.returncode

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
