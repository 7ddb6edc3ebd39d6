"""The audit key and the signed checkpoints of the audit trail, both kept outside the database:
a file in the data dir (mode 0600) and, for checkpoints, the log as well."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import structlog

from cinema_grpc.adapters.tokens import check_private_file, private_key_file
from cinema_grpc.domain.payment.audit import AuditCheckpoint
from cinema_grpc.settings import ConfigurationError

log = structlog.get_logger("cinema_grpc.audit")

KEY_FILE = "audit-chain-key"
CHECKPOINT_FILE = "audit-checkpoint.json"


def audit_key(configured: str | None, data_dir: Path) -> bytes:
    """The configured key, or one generated once and kept in the data dir (refused, as ssh
    refuses a private key, when someone else owns it or may read or write it)."""
    if configured:
        return configured.encode()
    path = data_dir / KEY_FILE
    key = private_key_file(path, "the audit chain key", lambda: secrets.token_urlsafe(48))
    if len(key) < 32:
        raise ConfigurationError(f"the audit chain key in {path} is shorter than 32 characters")
    return key.encode()


class FileCheckpoints:
    """The latest checkpoint in one JSON file, replaced atomically and never by an older one;
    each one is also logged, so the log keeps their history."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def latest(self) -> AuditCheckpoint | None:
        if not os.path.lexists(self.path):
            return None
        check_private_file(self.path, "the audit checkpoint")
        try:
            data = json.loads(self.path.read_text())
            return AuditCheckpoint(
                int(data["sequence"]),
                str(data["hash"]),
                datetime.fromisoformat(str(data["created_at"])),
                str(data["signature"]),
            )
        except (ValueError, KeyError, TypeError):
            # Edited or damaged: a checkpoint that no key signed, so verification reports it.
            log.error("the audit checkpoint is unreadable", path=str(self.path))
            return AuditCheckpoint(0, "", datetime.fromtimestamp(0, UTC), "unreadable")

    def save(self, checkpoint: AuditCheckpoint) -> bool:
        """Keeps the checkpoint unless the file holds one of a higher sequence; whether it did.

        Every worker of ``serve --workers N`` writes this file. Each reads the latest
        checkpoint, then signs the head it found, so a slow writer may come with a checkpoint
        older than the one kept meanwhile; putting it back
        would hide the newest entries from truncation checks. Comparing and replacing happen
        under an exclusive flock on a lock file beside the checkpoint (not on the checkpoint
        itself, which the rename replaces), so of two writers the second sees the first's file.
        """
        body = {
            "sequence": checkpoint.sequence,
            "hash": checkpoint.hash,
            "created_at": checkpoint.created_at.isoformat(timespec="microseconds"),
            "signature": checkpoint.signature,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = os.open(
            self.path.with_name(f".{self.path.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            kept = self.latest()
            if kept is not None and kept.sequence > checkpoint.sequence:
                log.info(
                    "audit checkpoint not kept: a newer one is",
                    sequence=checkpoint.sequence,
                    kept_sequence=kept.sequence,
                )
                return False
            fd, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
            with os.fdopen(fd, "w") as out:
                json.dump(body, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        finally:
            os.close(lock)  # closing the last descriptor releases the flock
        log.info("audit checkpoint", **body)
        return True
