"""Console sign-in sessions: kept in the console's memory behind an opaque cookie, holding the
Identity service's token pair (refreshed before it expires) and the session's CSRF token.

The browser never sees a token: the cookie carries only a random session id (HttpOnly,
SameSite=Strict, Secure over TLS), and signing out forgets the session here and revokes its
refresh token at the Identity service."""

from __future__ import annotations

import asyncio
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from starlette.requests import Request
from starlette.responses import Response

from cinema.identity.v1 import identity_pb2 as ipb
from cinema_grpc.console.backend import Backend, CallFailed, call

COOKIE = "cinema_console"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
# A session nobody used for this long is forgotten (the refresh token outlives it anyway).
IDLE_LIMIT = timedelta(hours=8)
# Refresh the access token this long before it expires, so no call races its expiry.
REFRESH_MARGIN = timedelta(seconds=60)
MAX_ANONYMOUS = 10_000  # sessions of visitors who have not signed in (yet)
STAFF_ROLES = frozenset({ipb.ROLE_STAFF, ipb.ROLE_ADMIN})


def now() -> datetime:
    return datetime.now(UTC)


@dataclass
class StaffSession:
    id: str
    csrf_token: str
    last_seen: datetime
    access_token: str = ""
    refresh_token: str = ""
    access_expires: datetime | None = None
    user: ipb.User | None = None
    flash: list[str] = field(default_factory=list)
    # One refresh at a time: a page's parallel calls must not each trade the same refresh token
    # (the Identity service takes a reused refresh token for a stolen one and ends the session).
    refreshing: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def signed_in(self) -> bool:
        return self.user is not None

    @property
    def is_admin(self) -> bool:
        return self.user is not None and ipb.ROLE_ADMIN in self.user.roles

    def csrf_matches(self, offered: str | None) -> bool:
        return offered is not None and hmac.compare_digest(offered.encode(), self.csrf_token.encode())

    def take(self, pair: ipb.TokenPair) -> None:
        self.access_token = pair.access_token
        self.refresh_token = pair.refresh_token
        self.access_expires = pair.access_expire_time.ToDatetime(UTC)
        self.user = pair.user


class NotSignedIn(Exception):
    """The session has no (longer a) valid sign-in: the page sends the browser to sign in."""


class SessionStore:
    def __init__(self, max_anonymous: int = MAX_ANONYMOUS) -> None:
        self._sessions: dict[str, StaffSession] = {}
        self._max_anonymous = max_anonymous

    def of(self, request: Request) -> StaffSession:
        """The request's session, or a new anonymous one (the sign-in form needs a CSRF token too)."""
        at = now()
        for stale in [k for k, s in self._sessions.items() if at - s.last_seen > IDLE_LIMIT]:
            del self._sessions[stale]
        session = self._sessions.get(request.cookies.get(COOKIE, ""))
        if session is None:
            anonymous = [k for k, s in self._sessions.items() if not s.signed_in]
            # Visits that never sign in cannot fill the memory: the oldest of them are dropped
            # (dicts keep insertion order); signed-in sessions are never dropped for them.
            for oldest in anonymous[: max(0, len(anonymous) - self._max_anonymous + 1)]:
                del self._sessions[oldest]
            session = StaffSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), at)
            self._sessions[session.id] = session
        session.last_seen = at
        request.state.session = session
        return session

    def renew(self, session: StaffSession) -> StaffSession:
        """A fresh id and CSRF token at sign-in, so an id planted before it is worth nothing."""
        self._sessions.pop(session.id, None)
        fresh = StaffSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now(), flash=session.flash)
        self._sessions[fresh.id] = fresh
        return fresh

    def forget(self, session: StaffSession) -> None:
        self._sessions.pop(session.id, None)


def set_cookie(request: Request, response: Response, session: StaffSession) -> None:
    response.set_cookie(
        COOKIE,
        session.id,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )


async def valid_token(backend: Backend, session: StaffSession) -> str:
    """The session's access token, refreshed through IdentityService.RefreshToken when it is
    about to expire; NotSignedIn when the refresh token is no longer accepted."""
    if not session.signed_in:
        raise NotSignedIn
    if session.access_expires is None or session.access_expires - now() < REFRESH_MARGIN:
        await refresh(backend, session, session.access_token)
    return session.access_token


async def refresh(backend: Backend, session: StaffSession, refused_token: str) -> None:
    """Trades the refresh token for a new pair, unless another call of the session already
    replaced ``refused_token`` (the access token that was found stale or refused)."""
    async with session.refreshing:
        if session.access_token != refused_token:
            if not session.signed_in:
                raise NotSignedIn
            return
        await _refresh(backend, session)


async def _refresh(backend: Backend, session: StaffSession) -> None:
    try:
        pair: ipb.TokenPair = await call(
            backend.identity.RefreshToken, ipb.RefreshTokenRequest(refresh_token=session.refresh_token)
        )
    except CallFailed as failure:
        session.user = None
        session.access_token = session.refresh_token = ""
        raise NotSignedIn from failure
    session.take(pair)
