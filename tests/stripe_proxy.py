"""A fault-injecting HTTP proxy in front of the Stripe test server: it can answer an error
status (with Stripe's error type and code), or hold a response back for a while, for requests
whose path matches a pattern."""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass, field

from aiohttp import ClientSession, web


@dataclass
class Fault:
    pattern: str
    status: int = 0  # answer with this status instead of forwarding
    delay: float = 0  # forward, then wait this long before answering
    hits: int = 0
    error_type: str = "api_error"
    code: str = ""


@dataclass
class FaultyStripe:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    port: int = 0
    # Every request that reached the proxy: (method, path, Idempotency-Key header).
    requests: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail(
        self, pattern: str, *, status: int = 0, delay: float = 0, error_type: str = "api_error", code: str = ""
    ) -> Fault:
        fault = Fault(pattern, status, delay, error_type=error_type, code=code)
        self.faults.append(fault)
        return fault

    def heal(self) -> None:
        self.faults.clear()
        self.requests.clear()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append((request.method, request.path, request.headers.get("Idempotency-Key", "")))
        fault = next((f for f in self.faults if re.search(f.pattern, request.path)), None)
        if fault is not None:
            fault.hits += 1
            if fault.status:
                error = {"message": "injected failure", "type": fault.error_type}
                if fault.code:
                    error["code"] = fault.code
                return web.json_response({"error": error}, status=fault.status)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in {"host", "content-length"}}
        async with (
            ClientSession() as session,
            session.request(
                request.method, f"{self.upstream}{request.path_qs}", data=body, headers=headers
            ) as upstream,
        ):
            payload = await upstream.read()
            status = upstream.status
            content_type = upstream.headers.get("Content-Type", "application/json")
        if fault is not None and fault.delay:
            await asyncio.sleep(fault.delay)
        return web.Response(body=payload, status=status, headers={"Content-Type": content_type})

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        self._runner = runner
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        await self._runner.cleanup()
        # Responses still held back by a delay fault: end them rather than leave them pending.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
