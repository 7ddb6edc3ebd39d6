"""A redis-server of one test's own (tests that stop Redis cannot use a shared one)."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.ports import free_port


@dataclass
class PrivateRedis:
    """A redis-server of one test's own, so the test can stop and restart it."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, tmp_path: Path) -> PrivateRedis:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed and REDIS_URL is not set: replicas share seat events via Redis")
        redis = cls(free_port(), tmp_path / "redis")
        redis.directory.mkdir(exist_ok=True)
        redis.resume()
        return redis

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def resume(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_timeout=1).ping()
                return
            except redis.RedisError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None
