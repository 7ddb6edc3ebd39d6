"""Safe retries of mutating requests by client request_id (AIP-155)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from cinema_grpc.domain.errors import RequestIdReused, Violations
from cinema_grpc.domain.ports import UnitOfWork

_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class RequestKey:
    """A client's request_id, a fingerprint of the request it was first sent with, and whose
    request it is: ids of different callers never meet."""

    request_id: str
    fingerprint: str
    owner: str = ""


def request_key(violations: Violations, request_id: str, fingerprint: str, owner: str) -> RequestKey | None:
    if not request_id:
        return None
    if not _REQUEST_ID.match(request_id):
        violations.add("request_id", "INVALID_FORMAT", "1 to 64 letters, digits, '-' or '_' (a UUID)")
        return None
    return RequestKey(request_id, fingerprint, owner)


async def earlier_result(uow: UnitOfWork, scope: str, key: RequestKey | None) -> uuid.UUID | None:
    """The resource created by an earlier request with this key, if any.

    Takes a lock on the key for the rest of the transaction, so two concurrent retries
    cannot both carry the request out.
    """
    if key is None:
        return None
    prior = await uow.requests.lock_and_find(f"{scope}/{key.owner}", key.request_id)
    if prior is None:
        return None
    if prior.fingerprint != key.fingerprint:
        raise RequestIdReused(f"request_id {key.request_id} was already used for a different request")
    return prior.resource_id


async def remember_result(uow: UnitOfWork, scope: str, key: RequestKey | None, resource_id: uuid.UUID) -> None:
    if key is not None:
        await uow.requests.record(f"{scope}/{key.owner}", key.request_id, key.fingerprint, resource_id)
