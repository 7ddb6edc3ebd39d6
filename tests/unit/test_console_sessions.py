"""Console sessions in memory: anonymous visits cannot crowd out signed-in staff."""

from __future__ import annotations

from starlette.requests import Request

from cinema.identity.v1 import identity_pb2 as ipb
from cinema_grpc.console.sessions import COOKIE, SessionStore


def request(session_id: str = "") -> Request:
    cookie = [(b"cookie", f"{COOKIE}={session_id}".encode())] if session_id else []
    return Request({"type": "http", "method": "GET", "path": "/", "headers": cookie, "query_string": b""})


def test_anonymous_sessions_are_capped_and_signed_in_ones_are_kept() -> None:
    store = SessionStore(max_anonymous=3)
    staff = store.of(request())
    staff.user = ipb.User(id="u1", roles=[ipb.ROLE_STAFF])
    visits = [store.of(request()) for _ in range(10)]
    assert store.of(request(staff.id)) is staff
    assert store.of(request(visits[-1].id)) is visits[-1]
    assert store.of(request(visits[0].id)) is not visits[0]  # the oldest visits were dropped
    assert sum(1 for s in store._sessions.values() if not s.signed_in) <= 3


def test_renewing_a_session_at_sign_in_gives_a_new_id_and_csrf_token() -> None:
    store = SessionStore()
    before = store.of(request())
    after = store.renew(before)
    assert (after.id, after.csrf_token) != (before.id, before.csrf_token)
    assert store.of(request(before.id)) is not after
