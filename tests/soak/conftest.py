from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.soak.harness import PrivateRedis


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """REDIS_URL when set; otherwise a private redis-server on a free port, if installed."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    private = PrivateRedis.start(tmp_path)
    yield private.url
    private.stop()
