"""The audit checkpoint file that every worker and replica writes: it only ever moves forward."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from cinema_grpc.adapters.audit_checkpoints import FileCheckpoints
from cinema_grpc.domain.payment.audit import AuditCheckpoint

KEY = b"k" * 40


def signed(sequence: int) -> AuditCheckpoint:
    return AuditCheckpoint(sequence, f"{sequence:064x}", datetime.now(UTC)).signed(KEY)


def test_an_older_checkpoint_does_not_replace_a_newer_one(tmp_path: Path) -> None:
    checkpoints = FileCheckpoints(tmp_path / "audit-checkpoint.json")
    newer = signed(10)
    assert checkpoints.save(newer)
    assert not checkpoints.save(signed(5))
    assert checkpoints.latest() == newer
    assert os.stat(checkpoints.path).st_mode & 0o777 == 0o600
    # The same head signed again later, and a newer one, replace it.
    again = signed(10)
    assert checkpoints.save(again)
    assert checkpoints.latest() == again
    assert checkpoints.save(signed(11))
    assert checkpoints.latest() == signed_at(checkpoints, 11)


def signed_at(checkpoints: FileCheckpoints, sequence: int) -> AuditCheckpoint:
    kept = checkpoints.latest()
    assert kept is not None and kept.sequence == sequence and kept.signed_by(KEY)
    return kept


def test_concurrent_writers_end_on_the_highest_checkpoint_and_it_never_moves_back(tmp_path: Path) -> None:
    checkpoints = FileCheckpoints(tmp_path / "audit-checkpoint.json")
    writers, rounds = 6, 25
    start = threading.Barrier(writers + 1)
    writing = threading.Event()
    writing.set()

    def write(first: int) -> None:
        # Each writer with its own handle on the file, newest first: the highest checkpoint is
        # among the first written and every later one is older.
        mine = FileCheckpoints(checkpoints.path)
        start.wait(10)
        for sequence in range(first + writers * (rounds - 1), first - 1, -writers):
            mine.save(signed(sequence))

    def watch() -> list[int]:
        seen: list[int] = []
        start.wait(10)
        while writing.is_set():
            kept = checkpoints.latest()
            if kept is not None:
                seen.append(kept.sequence)
        return seen

    with ThreadPoolExecutor(writers + 1) as pool:
        watcher = pool.submit(watch)
        try:
            list(pool.map(write, range(1, writers + 1)))
        finally:
            writing.clear()
        seen = watcher.result()
    assert signed_at(checkpoints, writers * rounds).hash == f"{writers * rounds:064x}"
    assert seen == sorted(seen)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".audit-checkpoint.json.lock", "audit-checkpoint.json"]
