"""Password hashing with Argon2id, off the event loop (each hash takes tens of milliseconds)."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher as Argon2
from argon2.exceptions import InvalidHashError, VerificationError


class Argon2PasswordHasher:
    def __init__(self, argon2: Argon2 | None = None) -> None:
        self._argon2 = argon2 or Argon2()
        # Verified against when an account does not exist, so that case takes as long.
        self._dummy = self._argon2.hash("not a password of anybody")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._argon2.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        def check() -> bool:
            try:
                return self._argon2.verify(password_hash or self._dummy, password) and bool(password_hash)
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)
