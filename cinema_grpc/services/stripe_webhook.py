"""The HTTP endpoint Stripe delivers webhook events to (POST /stripe/webhook)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from cinema_grpc.domain.errors import DomainError, InvalidWebhook

log = structlog.get_logger(__name__)
PATH = "/stripe/webhook"
Handler = Callable[[bytes, str], Awaitable[str]]


def webhook_app(handle: Handler) -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        payload = await request.read()
        try:
            outcome = await handle(payload, request.headers.get("Stripe-Signature", ""))
        except InvalidWebhook:
            log.warning("webhook refused: bad signature or payload")
            return web.json_response({"error": "invalid signature"}, status=400)
        except DomainError as exc:
            # Busy or unreachable database: Stripe retries the delivery later.
            log.warning("webhook not processed; Stripe will retry", reason=exc.reason)
            return web.json_response({"error": exc.reason}, status=503)
        except Exception:
            log.exception("webhook processing failed")
            return web.json_response({"error": "internal"}, status=500)
        log.info("webhook", outcome=outcome)
        return web.json_response({"outcome": outcome})

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post(PATH, receive)
    app.router.add_get("/healthz", health)
    return app


class WebhookListener:
    def __init__(self, handle: Handler) -> None:
        self._runner = web.AppRunner(webhook_app(handle), access_log=None)
        self.port = 0

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> int:
        """Listens on host:port; with ``reuse_port``, other worker processes listen on it too."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=reuse_port or None)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = int(sockets[0].getsockname()[1]) if sockets else port
        return self.port

    async def stop(self) -> None:
        await self._runner.cleanup()
