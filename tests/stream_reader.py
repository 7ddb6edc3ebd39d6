"""Reads a server stream on a background thread so tests can wait for messages with a timeout."""

from __future__ import annotations

import queue
import threading
from typing import Any

import grpc


class StreamReader:
    def __init__(self, call: Any) -> None:
        self.call = call
        self._messages: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self.call:
                self._messages.put(message)
        except grpc.RpcError as error:
            self._messages.put(error)

    def next(self, timeout: float = 10) -> Any:
        item = self._messages.get(timeout=timeout)
        if isinstance(item, grpc.RpcError) and item.code() is not grpc.StatusCode.CANCELLED:
            raise item
        return item

    def nothing_within(self, seconds: float) -> bool:
        try:
            self._messages.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.call.cancel()
        self._thread.join(5)
