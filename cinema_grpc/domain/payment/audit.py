"""The audit trail's chain and its checkpoints.

Each entry's hash covers the previous entry's hash and its own fields; since the chain was keyed,
with HMAC-SHA256 and a key held outside the database, so whoever can write the table but does
not hold the key cannot rewrite it and recompute a chain that verifies. Signed checkpoints of
(sequence, head hash), kept outside the database, pin the chain up to the head they name, so
entries deleted from its end are noticed too.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
from dataclasses import dataclass
from datetime import UTC, datetime

from cinema_grpc.domain.payment.model import GENESIS_HASH, AuditEntry, AuditScheme


class AuditProblem(enum.Enum):
    """Why a trail is not intact (stable codes for the command line and the RPC)."""

    # An entry's hash does not match its content and its predecessor, or the checkpoint's head.
    ENTRY_ALTERED = "ENTRY_ALTERED"
    # A plain entry after a keyed one: the chain was recomputed without the key.
    KEYED_CHAIN_DOWNGRADED = "KEYED_CHAIN_DOWNGRADED"
    # The entry a checkpoint names is gone: entries were deleted from the end of the trail.
    ENTRIES_MISSING = "ENTRIES_MISSING"
    # The checkpoint's signature does not match: it was edited, or another key signed it.
    CHECKPOINT_FORGED = "CHECKPOINT_FORGED"


@dataclass(frozen=True)
class AuditCheckpoint:
    """The head of the trail at one moment, signed with the audit key."""

    sequence: int
    hash: str
    created_at: datetime
    signature: str = ""

    def _payload(self) -> bytes:
        stamp = self.created_at.astimezone(UTC).isoformat(timespec="microseconds")
        return f"cinema-audit-checkpoint:{self.sequence}:{self.hash}:{stamp}".encode()

    def signed(self, key: bytes) -> AuditCheckpoint:
        signature = hmac.new(key, self._payload(), hashlib.sha256).hexdigest()
        return AuditCheckpoint(self.sequence, self.hash, self.created_at, signature)

    def signed_by(self, key: bytes) -> bool:
        return hmac.compare_digest(self.signed(key).signature, self.signature)


@dataclass(frozen=True)
class AuditVerdict:
    intact: bool
    entries_checked: int
    first_broken_sequence: int
    problem: AuditProblem | None = None
    # The sequence of the checkpoint the trail was compared with; 0 without one.
    checkpoint_sequence: int = 0


def _broken(checked: int, sequence: int, problem: AuditProblem, checkpoint: AuditCheckpoint | None) -> AuditVerdict:
    return AuditVerdict(False, checked, sequence, problem, checkpoint.sequence if checkpoint else 0)


def verify_chain(entries: list[AuditEntry], key: bytes, checkpoint: AuditCheckpoint | None = None) -> AuditVerdict:
    """Recomputes the chain in sequence order and compares it with the checkpoint; the first
    entry that does not hold is named, with the problem."""
    previous = GENESIS_HASH
    keyed = False
    for count, entry in enumerate(entries, start=1):
        if keyed and entry.scheme is AuditScheme.PLAIN_SHA256:
            return _broken(count, entry.sequence, AuditProblem.KEYED_CHAIN_DOWNGRADED, checkpoint)
        if not hmac.compare_digest(entry.chained_hash(previous, key), entry.hash):
            return _broken(count, entry.sequence, AuditProblem.ENTRY_ALTERED, checkpoint)
        keyed = keyed or entry.scheme is AuditScheme.HMAC_SHA256
        previous = entry.hash
    if checkpoint is not None:
        if not checkpoint.signed_by(key):
            return _broken(len(entries), checkpoint.sequence, AuditProblem.CHECKPOINT_FORGED, checkpoint)
        pinned = next((entry for entry in entries if entry.sequence == checkpoint.sequence), None)
        if pinned is None:
            return _broken(len(entries), checkpoint.sequence, AuditProblem.ENTRIES_MISSING, checkpoint)
        if not hmac.compare_digest(pinned.hash, checkpoint.hash):
            return _broken(len(entries), checkpoint.sequence, AuditProblem.ENTRY_ALTERED, checkpoint)
    return AuditVerdict(True, len(entries), 0, None, checkpoint.sequence if checkpoint else 0)


def extends(checkpoint: AuditCheckpoint, pinned: AuditEntry | None, newer: list[AuditEntry], key: bytes) -> bool:
    """Whether the trail still holds the checkpoint's head (``pinned``) and the entries after
    it chain from there: only then may a newer checkpoint replace it."""
    if pinned is None or not hmac.compare_digest(pinned.hash, checkpoint.hash):
        return False
    previous = checkpoint.hash
    for entry in newer:
        if entry.scheme is not AuditScheme.HMAC_SHA256:
            return False
        if not hmac.compare_digest(entry.chained_hash(previous, key), entry.hash):
            return False
        previous = entry.hash
    return True
