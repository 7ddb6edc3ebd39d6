"""The audit key and the signed checkpoints of the audit trail, both kept outside the database:
a file in the data dir (mode 0600) and, for checkpoints, the log as well."""

from __future__ import annotations

import json
import os
import secrets
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
    """The latest checkpoint in one JSON file, replaced atomically; each one is also logged, so
    the log keeps their history."""

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

    def save(self, checkpoint: AuditCheckpoint) -> None:
        body = {
            "sequence": checkpoint.sequence,
            "hash": checkpoint.hash,
            "created_at": checkpoint.created_at.isoformat(timespec="microseconds"),
            "signature": checkpoint.signature,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(body, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)
        log.info("audit checkpoint", **body)
