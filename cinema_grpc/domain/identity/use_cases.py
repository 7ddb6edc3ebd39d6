"""Identity use cases: registration, sign-in with rotation of refresh tokens, roles."""

from __future__ import annotations

import re
import secrets
import time
import uuid
from dataclasses import replace

from cinema_grpc.domain.access import Caller, PermissionDenied, Role
from cinema_grpc.domain.errors import (
    EmailTaken,
    InvalidCredentials,
    RefreshTokenReused,
    RegistrationThrottled,
    RoleChangeRefused,
    TokenRevoked,
    UserNotFound,
    Violations,
)
from cinema_grpc.domain.identity.model import (
    REFRESH_TOKEN_TTL,
    IssuedTokens,
    Session,
    User,
    normalize_email,
    password_violations,
)
from cinema_grpc.domain.identity.throttle import ThrottleRules
from cinema_grpc.domain.ports import Clock, PasswordHasher, TokenCodec, UnitOfWork
from cinema_grpc.domain.text import clean_text

_PHONE = re.compile(r"^\+?[0-9 ()./-]{3,32}$")
PROFILE_FIELDS = frozenset({"display_name", "phone"})


def _profile(violations: Violations, display_name: str | None, phone: str | None) -> tuple[str | None, str | None]:
    name = clean_text(violations, "display_name", display_name, max_length=100) if display_name is not None else None
    if phone is not None:
        phone = phone.strip()
        if phone and not _PHONE.match(phone):
            violations.add("phone", "INVALID_FORMAT", "digits, spaces and + ( ) . / - only, 3 to 32 characters")
    return name, phone


async def register(
    uow: UnitOfWork,
    hasher: PasswordHasher,
    clock: Clock,
    *,
    email: str,
    password: str,
    display_name: str,
    phone: str = "",
    roles: frozenset[Role] = frozenset({Role.CUSTOMER}),
    client: str | None = None,
    rules: ThrottleRules | None = None,
) -> User:
    """A new account. With ``client`` (the caller's address), registrations from one address
    are limited per window by ``rules`` before any password is hashed."""
    violations = Violations()
    normalized = normalize_email(violations, "email", email)
    password_violations(violations, "password", password, normalized)
    name, clean_phone = _profile(violations, display_name, phone)
    violations.raise_if_any()
    assert name is not None and clean_phone is not None
    if client is not None:
        await _count_registration(uow, clock, rules or ThrottleRules(), client)
    password_hash = await hasher.hash(password)
    now = clock.now()
    user = User(uuid.uuid4(), normalized, name, clean_phone, roles, password_hash, now, now)
    async with uow:
        await uow.users.add(user)
        await uow.commit()
    return user


async def _count_registration(uow: UnitOfWork, clock: Clock, rules: ThrottleRules, client: str) -> None:
    now = clock.now()
    async with uow:
        count, started = await uow.login_throttle.count_registration(client, now, rules.registration_window)
        await uow.commit()
    if count > rules.registrations_per_address:
        wait = (started + rules.registration_window - now).total_seconds()
        raise RegistrationThrottled("too many accounts registered from this address; try later", max(wait, 1))


async def _refuse_if_throttled(uow: UnitOfWork, clock: Clock, rules: ThrottleRules, account: str, client: str) -> None:
    """Refuses a throttled attempt before its password is hashed (no hashing time spent)."""
    async with uow:
        pair, whole = await uow.login_throttle.records(account, client)
    rules.refuse_if_throttled(pair, whole, clock.now())


async def _settle_attempt(
    uow: UnitOfWork,
    clock: Clock,
    rules: ThrottleRules,
    account: str,
    client: str,
    *,
    valid: bool,
    wrong: str = "wrong email or password",
) -> None:
    """Records a checked password in the open unit of work; only a wrong one counts.

    The pair's row lock puts parallel attempts in a line, and each is judged again under it, so
    parallel guesses cannot slip past the allowance, and a throttled answer never tells whether
    the password was right. A wrong password is committed and refused; a right one resets the
    pair in the caller's transaction.
    """
    now = clock.now()
    pair = await uow.login_throttle.lock_pair(account, client, now)
    if valid:
        whole = (await uow.login_throttle.records(account, client))[1] if pair.last_success_at is None else pair
        rules.refuse_if_throttled(pair, whole, now)
        await uow.login_throttle.save(account, client, rules.succeeded(pair, now), now)
        return
    whole = await uow.login_throttle.lock_address(client, now)
    rules.refuse_if_throttled(pair, whole, now)
    await uow.login_throttle.save(account, client, rules.failed(pair, now), now)
    await uow.login_throttle.save(None, client, rules.failed(whole, now), now)
    await uow.commit()
    raise InvalidCredentials(wrong)


async def login(
    uow: UnitOfWork,
    hasher: PasswordHasher,
    tokens: TokenCodec,
    clock: Clock,
    *,
    email: str,
    password: str,
    client: str,
    rules: ThrottleRules | None = None,
) -> IssuedTokens:
    rules = rules or ThrottleRules()
    violations = Violations()
    normalized = normalize_email(violations, "email", email)
    if not password:
        violations.add("password", "REQUIRED", "must not be empty")
    violations.raise_if_any()
    await _refuse_if_throttled(uow, clock, rules, normalized, client)
    async with uow:
        user = await uow.users.by_email(normalized)
    # An unknown email costs the same hashing time as a wrong password.
    valid = await hasher.verify(user.password_hash if user else "", password)
    async with uow:
        await _settle_attempt(uow, clock, rules, normalized, client, valid=user is not None and valid)
        assert user is not None
        now = clock.now()
        session = Session(uuid.uuid4(), user.id, secrets.token_urlsafe(16), now, now + REFRESH_TOKEN_TTL)
        await uow.sessions.add(session)
        issued = tokens.issue(user, session, now)
        await uow.commit()
    return issued


async def prune_sign_in_records(uow: UnitOfWork, clock: Clock, rules: ThrottleRules) -> int:
    """Forgets sign-in records untouched for the retention period and ended registration windows."""
    now = clock.now()
    async with uow:
        pruned = await uow.login_throttle.prune(now - rules.retention, now - rules.registration_window)
        await uow.commit()
    return pruned


async def refresh(uow: UnitOfWork, tokens: TokenCodec, clock: Clock, refresh_token: str) -> IssuedTokens:
    claims = tokens.decode_refresh(refresh_token)
    now = clock.now()
    async with uow:
        session = await uow.sessions.get(claims.session_id, for_update=True)
        if session is None or session.user_id != claims.user_id or not session.usable(now):
            raise TokenRevoked("this session has been signed out; sign in again")
        if claims.token_id != session.refresh_token_id:
            # A rotated-out refresh token is back: it was copied. Sign the session out.
            await uow.sessions.revoke(session.id, now)
            await uow.commit()
            raise RefreshTokenReused("this refresh token was already used; the session is signed out")
        user = await uow.users.get(session.user_id)
        if user is None:
            raise TokenRevoked("the account no longer exists")
        rotated = replace(session, refresh_token_id=secrets.token_urlsafe(16))
        await uow.sessions.rotate(session.id, rotated.refresh_token_id)
        issued = tokens.issue(user, rotated, now)
        await uow.commit()
    return issued


async def logout(uow: UnitOfWork, clock: Clock, caller: Caller) -> None:
    assert caller.session_id is not None
    async with uow:
        await uow.sessions.revoke(caller.session_id, clock.now())
        await uow.commit()


async def get_user(uow: UnitOfWork, user_id: uuid.UUID) -> User:
    async with uow:
        user = await uow.users.get(user_id)
    if user is None:
        raise UserNotFound(user_id)
    return user


async def update_profile(
    uow: UnitOfWork, clock: Clock, caller: Caller, *, display_name: str, phone: str, mask: frozenset[str]
) -> User:
    assert caller.user_id is not None
    violations = Violations()
    if not mask:
        violations.add("update_mask", "REQUIRED", "name the fields to change")
    for name in sorted(mask - PROFILE_FIELDS):
        violations.add("update_mask", "UNKNOWN_FIELD", f"{name} cannot be changed here")
    new_name, new_phone = _profile(
        violations, display_name if "display_name" in mask else None, phone if "phone" in mask else None
    )
    violations.raise_if_any()
    async with uow:
        user = await uow.users.get(caller.user_id, for_update=True)
        if user is None:
            raise UserNotFound(caller.user_id)
        user = replace(
            user,
            display_name=new_name if new_name is not None else user.display_name,
            phone=new_phone if new_phone is not None else user.phone,
            updated_at=clock.now(),
        )
        await uow.users.update_profile(user)
        await uow.commit()
    return user


async def change_password(
    uow: UnitOfWork,
    hasher: PasswordHasher,
    clock: Clock,
    caller: Caller,
    *,
    current: str,
    new: str,
    client: str,
    rules: ThrottleRules | None = None,
) -> list[uuid.UUID]:
    """Changes the password and signs out the caller's other sessions; returns their ids."""
    assert caller.user_id is not None
    rules = rules or ThrottleRules()
    async with uow:
        user = await uow.users.get(caller.user_id)
    if user is None:
        raise UserNotFound(caller.user_id)
    # A stolen session must not be a way to guess the password without limit.
    await _refuse_if_throttled(uow, clock, rules, user.email, client)
    valid = await hasher.verify(user.password_hash, current)
    new_hash = ""
    if valid:
        violations = Violations()
        password_violations(violations, "new_password", new, user.email)
        violations.raise_if_any()
        new_hash = await hasher.hash(new)
    async with uow:
        await _settle_attempt(uow, clock, rules, user.email, client, valid=valid, wrong="the current password is wrong")
        user = await uow.users.get(caller.user_id, for_update=True)
        if user is None:
            raise UserNotFound(caller.user_id)
        now = clock.now()
        await uow.users.update_password(replace(user, password_hash=new_hash, updated_at=now))
        revoked = await uow.sessions.revoke_all(user.id, now, keep=caller.session_id)
        await uow.commit()
    return revoked


async def change_role(uow: UnitOfWork, caller: Caller, user_id: uuid.UUID, role: Role, *, grant: bool) -> User:
    if not grant and role is Role.CUSTOMER:
        raise RoleChangeRefused("every user keeps the customer role", subject=f"users/{user_id}")
    if not grant and role is Role.ADMIN and user_id == caller.user_id:
        raise RoleChangeRefused("an admin cannot revoke their own admin role", subject=f"users/{user_id}")
    async with uow:
        user = await uow.users.get(user_id, for_update=True)
        if user is None:
            raise UserNotFound(user_id)
        roles = user.roles | {role} if grant else user.roles - {role}
        await uow.users.set_roles(user.id, roles)
        await uow.commit()
    return replace(user, roles=roles)


async def create_admin(
    uow: UnitOfWork, hasher: PasswordHasher, clock: Clock, *, email: str, password: str, display_name: str
) -> User:
    """Bootstraps an admin: a new account, or the admin role for an existing one."""
    violations = Violations()
    normalized = normalize_email(violations, "email", email)
    violations.raise_if_any()
    async with uow:
        existing = await uow.users.by_email(normalized)
    if existing is not None:
        return await change_role(uow, existing.as_caller(), existing.id, Role.ADMIN, grant=True)
    try:
        return await register(
            uow,
            hasher,
            clock,
            email=email,
            password=password,
            display_name=display_name,
            roles=frozenset({Role.CUSTOMER, Role.ADMIN}),
        )
    except EmailTaken:  # created concurrently by someone else: grant the role instead
        return await create_admin(uow, hasher, clock, email=email, password=password, display_name=display_name)


class Authenticator:
    """Turns an access token into a Caller, checking that its session is still signed in.

    Session checks are cached for ``ttl_seconds`` per process, so a sign-out or role change
    made on another replica takes effect there within that time; on this replica at once.
    """

    def __init__(self, tokens: TokenCodec, clock: Clock, ttl_seconds: float = 5.0) -> None:
        self._tokens = tokens
        self._clock = clock
        self._ttl = ttl_seconds
        self._cache: dict[uuid.UUID, tuple[float, Caller]] = {}

    async def caller(self, uow: UnitOfWork, token: str) -> Caller:
        claims = self._tokens.decode_access(token)
        cached = self._cache.get(claims.session_id)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        async with uow:
            caller = await uow.sessions.caller(claims.session_id, self._clock.now())
        if caller is None or caller.user_id != claims.user_id:
            self._cache.pop(claims.session_id, None)
            raise TokenRevoked("this session has been signed out; sign in again")
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[claims.session_id] = (time.monotonic(), caller)
        return caller

    def forget(self, *session_ids: uuid.UUID) -> None:
        for session_id in session_ids:
            self._cache.pop(session_id, None)

    def forget_user(self, user_id: uuid.UUID) -> None:
        for session_id, (_, caller) in list(self._cache.items()):
            if caller.user_id == user_id:
                self._cache.pop(session_id, None)


def require_owner_or_staff(caller: Caller, owner_id: uuid.UUID) -> None:
    if not caller.may_see(owner_id):
        raise PermissionDenied("this belongs to another user")
