"""How many calls one replica runs at once: long-lived streams have a budget of their own (per
server, per client address, per signed-in caller), so streams can never take the room of unary
calls, and ``grpc.health.v1.Health/Check`` is never refused at all."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass
from typing import TypeVar

from cinema_grpc.domain.errors import ServerBusy, StreamLimitReached
from cinema_grpc.services.metrics import RPC_REFUSED

# How long a refused client is told to wait. A full server frees room as calls end (a balancer
# sends the retry elsewhere meanwhile); a client over its own stream share must close some first.
BUSY_RETRY_SECONDS = 1.0
STREAMS_FULL_RETRY_SECONDS = 5.0
OWN_SHARE_RETRY_SECONDS = 30.0
K = TypeVar("K")


@dataclass(frozen=True)
class Budgets:
    unary_calls: int
    streams: int
    streams_per_address: int
    streams_per_caller: int


class StreamSlot:
    """One admitted stream; ``release`` gives its room back (once)."""

    def __init__(self, budget: CallBudget, address: str) -> None:
        self._budget = budget
        self.address = address
        self.caller: uuid.UUID | None = None
        self._released = False

    def claim_for_caller(self, caller: uuid.UUID) -> None:
        """Counts the stream against a signed-in caller's share, once the caller is known."""
        self._budget._claim_for_caller(self, caller)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._budget._release_stream(self)


class CallBudget:
    """The counters of one replica. Used from the server's event loop only, so no lock is needed."""

    def __init__(self, budgets: Budgets) -> None:
        self.budgets = budgets
        self.unary_calls = 0
        self.streams = 0
        self._per_address: Counter[str] = Counter()
        self._per_caller: Counter[uuid.UUID] = Counter()

    def enter_unary(self) -> None:
        """Counts one unary call in; raises ServerBusy when the replica runs as many as allowed."""
        if self.unary_calls >= self.budgets.unary_calls:
            RPC_REFUSED.labels("unary", ServerBusy.reason, "server").inc()
            raise ServerBusy(
                f"this server runs {self.budgets.unary_calls} calls at once; retry shortly or elsewhere",
                BUSY_RETRY_SECONDS,
            )
        self.unary_calls += 1

    def leave_unary(self) -> None:
        self.unary_calls -= 1

    def open_stream(self, address: str) -> StreamSlot:
        """Admits one stream from ``address``, or raises StreamLimitReached naming the limit met."""
        limits = self.budgets
        if self.streams >= limits.streams:
            self._refuse(
                "server",
                limits.streams,
                "this server has as many open streams as it allows",
                STREAMS_FULL_RETRY_SECONDS,
            )
        if self._per_address[address] >= limits.streams_per_address:
            self._refuse(
                "address",
                limits.streams_per_address,
                f"your address has {limits.streams_per_address} streams open; close one first",
                OWN_SHARE_RETRY_SECONDS,
            )
        self.streams += 1
        self._per_address[address] += 1
        return StreamSlot(self, address)

    def _claim_for_caller(self, slot: StreamSlot, caller: uuid.UUID) -> None:
        limit = self.budgets.streams_per_caller
        if self._per_caller[caller] >= limit:
            self._refuse("caller", limit, f"you have {limit} streams open; close one first", OWN_SHARE_RETRY_SECONDS)
        self._per_caller[caller] += 1
        slot.caller = caller

    def _release_stream(self, slot: StreamSlot) -> None:
        self.streams -= 1
        _decrement(self._per_address, slot.address)
        if slot.caller is not None:
            _decrement(self._per_caller, slot.caller)

    @staticmethod
    def _refuse(scope: str, limit: int, message: str, retry_after: float) -> None:
        RPC_REFUSED.labels("stream", StreamLimitReached.reason, scope).inc()
        raise StreamLimitReached(message, scope, limit, retry_after)


def _decrement(counts: Counter[K], key: K) -> None:
    counts[key] -= 1
    if counts[key] <= 0:
        del counts[key]  # addresses come and go: keep only those with open streams
