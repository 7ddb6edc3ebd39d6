"""`serve --workers N`: N server processes on one port, for machines with more cores than one
Python process can use.

The kernel spreads connections over the workers (SO_REUSEPORT, which gRPC sets on its
listening sockets; the webhook listener sets it too). What one process would start once is
started here, before the workers: the embedded PostgreSQL and the migrations, the local Stripe
test server, the development signing key. Each worker is a whole server; the sweeper and the
reconciler run in one at a time through their advisory locks, as across replicas, and seat
events cross workers through the database (LISTEN/NOTIFY) or Redis, as across replicas.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import socket
import sys
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

import structlog
from pydantic import SecretStr

from cinema_grpc.adapters.audit_checkpoints import audit_key
from cinema_grpc.adapters.local_stripe import API_KEY, LocalStripe
from cinema_grpc.adapters.ticket_codes import signing_key_text
from cinema_grpc.adapters.tokens import signing_key
from cinema_grpc.settings import ConfigurationError, Settings
from cinema_grpc.storage.database import EmbeddedPostgres, database_url, migrate, schema_behind

log = structlog.get_logger(__name__)


def _free_ports(*hosts: str) -> list[int]:
    """A free port on each host, all different: every socket stays bound until all are picked
    (one closed before the next ``bind(0)`` may be handed out again)."""
    with contextlib.ExitStack() as bound:
        ports = []
        for host in (host.strip("[]") for host in hosts):
            sock = bound.enter_context(socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def worker_settings(settings: Settings, index: int) -> Settings:
    """Worker ``index``'s settings: the same ports, except metrics (each worker has its own
    registry, so worker i serves them on the configured port + i)."""
    if settings.metrics_port == 0:
        return settings
    return settings.model_copy(update={"metrics_port": settings.metrics_port + index})


def _run_worker(settings: Settings, index: int) -> None:
    """A worker process: logs as the parent does, marked with its index, and serves."""
    import asyncio  # noqa: PLC0415 - in the worker process only

    from cinema_grpc.log_config import configure_logging  # noqa: PLC0415
    from cinema_grpc.server import serve  # noqa: PLC0415

    configure_logging(settings.log_level, settings.log_format)
    structlog.contextvars.bind_contextvars(worker=index)
    # The parent tells the workers when to stop; Ctrl-C reaches them too, and they stop the same way.
    # The parent migrated (or checked the schema) before starting the workers.
    asyncio.run(serve(settings, worker=index, run_migrations=False))


class Workers:
    """Starts the shared parts and N workers; stops them all when told, or when one dies."""

    def __init__(self, settings: Settings, count: int, *, run_migrations: bool = True) -> None:
        self.settings = settings
        self.count = count
        self.run_migrations = run_migrations
        self.embedded: EmbeddedPostgres | None = None
        self.local_stripe: LocalStripe | None = None
        self.processes: list[BaseProcess] = []
        self._stopping = False

    def prepare(self) -> Settings:
        """What must exist once before the workers start; returns the settings they share."""
        settings = self.settings
        settings.check_production()
        url, self.embedded = database_url(settings)
        if self.run_migrations:
            migrate(url)
        elif (behind := schema_behind(url)) is not None:
            raise ConfigurationError(f"{behind}: run 'cinema-grpc migrate' as the schema owner first")
        updates: dict[str, object] = {"database_url": SecretStr(url.render_as_string(hide_password=False))}
        if settings.token_signing_key is None:
            signing_key(None, settings.data_dir)  # created once here, read by every worker
        if settings.ticket_signing_key is None:
            signing_key_text(None, settings.data_dir)  # likewise the key of ticket codes
        if settings.audit_key is None:
            audit_key(None, settings.data_dir)  # the same
        if settings.stripe_secret_key is None:
            self.local_stripe = LocalStripe(settings.data_dir / "localstripe-state.pickle")
            self.local_stripe.start()
            log.warning(
                "no Stripe key: started the local Stripe test server, which accepts any test card",
                api=self.local_stripe.api_base,
            )
            updates.update(
                stripe_secret_key=SecretStr(API_KEY),
                stripe_webhook_secret=SecretStr(self.local_stripe.webhook_secret),
                stripe_api_base=self.local_stripe.api_base,
            )
        # Picked after the local Stripe server listens, so its port is not among them.
        unset = {
            name: host
            for name, host, port in (
                ("grpc_port", settings.grpc_host, settings.grpc_port),
                ("webhook_port", settings.webhook_host, settings.webhook_port),
            )
            if port == 0
        }
        updates.update(zip(unset, _free_ports(*unset.values()), strict=True))
        return settings.model_copy(update=updates)

    def run(self) -> int:
        """Serves until SIGTERM or SIGINT (0), or until a worker exits by itself (1)."""
        try:
            shared = self.prepare()
            context = multiprocessing.get_context("spawn")
            for index in range(self.count):
                process = context.Process(
                    target=_run_worker, args=(worker_settings(shared, index), index), name=f"cinema-grpc-worker-{index}"
                )
                process.start()
                self.processes.append(process)
            if self.local_stripe is not None:
                self.local_stripe.deliver_webhooks_to(
                    f"http://{shared.webhook_host}:{shared.webhook_port}/stripe/webhook"
                )
                self.local_stripe.announce(shared.data_dir)
            log.info("workers started", workers=self.count, host=shared.grpc_host, port=shared.grpc_port)
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
            died = self._watch()
        finally:
            self._stop_all()
        return 1 if died else 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _watch(self) -> bool:
        """Waits for a stop signal (False) or a worker that exited by itself (True)."""
        while not self._stopping:
            ended = wait([p.sentinel for p in self.processes], timeout=0.5)
            if ended and not self._stopping:
                for process in self.processes:
                    if not process.is_alive():
                        log.error("a worker exited: stopping the others", worker=process.name, code=process.exitcode)
                return True
        return False

    def _stop_all(self) -> None:
        for process in self.processes:
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: a graceful stop, as for one server
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + 15
        for process in self.processes:
            process.join(max(deadline - time.monotonic(), 0.1))
            if process.is_alive():
                log.error("a worker did not stop in time: killed", worker=process.name)
                process.kill()
                process.join(5)
        if self.local_stripe is not None:
            self.local_stripe.stop()
        if self.embedded is not None:
            self.embedded.stop()


def serve_workers(settings: Settings, count: int, *, run_migrations: bool = True) -> int:
    """Runs ``count`` worker processes on one port; the exit status for the command."""
    status = Workers(settings, count, run_migrations=run_migrations).run()
    sys.stdout.flush()
    return status
