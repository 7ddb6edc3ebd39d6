"""A TCP proxy in front of PostgreSQL that delays every answer by a fixed time, so the round
trips of a piece of work can be counted from how long it takes: statements sent together
(a pipeline) cost one delay, each wait for an answer before sending more costs another."""

from __future__ import annotations

import asyncio
import threading
import time


class SlowLink:
    def __init__(self, upstream_host: str, upstream_port: int, delay: float) -> None:
        """``upstream_host`` may be a directory: then PostgreSQL's Unix socket in it."""
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay  # may be changed at any time; applies to answers arriving after
        # Set when the database answers while answers are held back: what was sent has run.
        self.answer_held = threading.Event()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-link", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the slow link did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _connected(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        host, port = self.upstream
        if host.startswith("/"):
            upstream_reader, upstream_writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        else:
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
        answers: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def requests() -> None:
            while data := await client_reader.read(65536):
                upstream_writer.write(data)
                await upstream_writer.drain()
            upstream_writer.close()

        async def read_answers() -> None:
            while data := await upstream_reader.read(65536):
                answers.put_nowait((time.monotonic() + self.delay, data))
                if self.delay > 0:
                    self.answer_held.set()
            answers.put_nowait((time.monotonic(), b""))

        async def deliver_answers() -> None:
            # In order, each no earlier than its delay after it arrived: a burst of answers to
            # statements sent together costs one delay, not one per answer.
            while True:
                due, data = await answers.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    break
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()

        await asyncio.gather(requests(), read_answers(), deliver_answers(), return_exceptions=True)

    def close(self) -> None:
        # Connections still open end here, on the proxy's own loop, before it closes: left to
        # the garbage collector, their tasks would run their clean-up on a closed loop.
        async def shut_down() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut_down(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
