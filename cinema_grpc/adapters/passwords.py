"""Password hashing with Argon2id on threads of its own, with a cap on hashes at once.

Each hash takes tens of milliseconds and 64 MiB. The threads are not asyncio's default pool,
so a flood of registrations or sign-ins cannot hold up the calls that use that pool or
Stripe's, and hashes beyond the cap are refused at once (PASSWORD_HASHING_BUSY) instead of
queueing without end.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import PasswordHasher as Argon2
from argon2.exceptions import InvalidHashError, VerificationError

from cinema_grpc.domain.errors import PasswordHashingBusy

T = TypeVar("T")


class Argon2PasswordHasher:
    def __init__(self, argon2: Argon2 | None = None, *, threads: int = 2, max_pending: int = 64) -> None:
        self._argon2 = argon2 or Argon2()
        # Verified against when an account does not exist, so that case takes as long.
        self._dummy = self._argon2.hash("not a password of anybody")
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="argon2")
        self._max_pending = max_pending
        self._pending = 0

    @property
    def pending(self) -> int:
        """Hashes running or waiting for a thread."""
        return self._pending

    async def _run(self, work: Callable[[], T]) -> T:
        # Counted on the event loop's thread only, so no lock is needed.
        if self._pending >= self._max_pending:
            raise PasswordHashingBusy("too many password checks at once; retry in a moment")
        self._pending += 1
        try:
            context = contextvars.copy_context()
            return await asyncio.get_running_loop().run_in_executor(self._pool, context.run, work)
        finally:
            self._pending -= 1

    async def hash(self, password: str) -> str:
        return await self._run(lambda: self._argon2.hash(password))

    async def verify(self, password_hash: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self._argon2.verify(password_hash or self._dummy, password) and bool(password_hash)
            except (VerificationError, InvalidHashError):
                return False

        return await self._run(check)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
