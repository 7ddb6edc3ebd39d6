"""cinema.identity.v1.IdentityService: accounts, sessions and roles."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf import empty_pb2

from cinema.identity.v1 import identity_pb2 as pb
from cinema.identity.v1 import identity_pb2_grpc
from cinema_grpc.domain.access import Role
from cinema_grpc.domain.errors import invalid
from cinema_grpc.domain.identity import use_cases as uc
from cinema_grpc.domain.identity.model import IssuedTokens, User
from cinema_grpc.domain.identity.throttle import ThrottleRules
from cinema_grpc.domain.ports import Clock, PasswordHasher, TokenCodec, UnitOfWork
from cinema_grpc.services.access import ClientAddresses, current_caller
from cinema_grpc.services.convert import Context, require_id, timestamp

_ROLES = {
    Role.CUSTOMER: pb.ROLE_CUSTOMER,
    Role.STAFF: pb.ROLE_STAFF,
    Role.ADMIN: pb.ROLE_ADMIN,
    Role.SCANNER: pb.ROLE_SCANNER,
}
_ROLE_OF = {number: role for role, number in _ROLES.items()}


def user_message(user: User) -> pb.User:
    return pb.User(
        id=str(user.id),
        email=user.email,
        display_name=user.display_name,
        phone=user.phone,
        roles=[_ROLES[role] for role in sorted(user.roles)],
        create_time=timestamp(user.created_at),
        update_time=timestamp(user.updated_at),
    )


def tokens_message(issued: IssuedTokens) -> pb.TokenPair:
    return pb.TokenPair(
        access_token=issued.access_token,
        access_expire_time=timestamp(issued.access_expires_at),
        refresh_token=issued.refresh_token,
        refresh_expire_time=timestamp(issued.refresh_expires_at),
        user=user_message(issued.user),
    )


def _role(value: pb.Role.ValueType) -> Role:
    role = _ROLE_OF.get(value)
    if role is None:
        raise invalid("role", "INVALID_ENUM", "must be ROLE_CUSTOMER, ROLE_STAFF, ROLE_ADMIN or ROLE_SCANNER")
    return role


class IdentityServicer(identity_pb2_grpc.IdentityServiceServicer):
    def __init__(
        self,
        unit_of_work: Callable[[], UnitOfWork],
        clock: Clock,
        hasher: PasswordHasher,
        tokens: TokenCodec,
        authenticator: uc.Authenticator,
        addresses: ClientAddresses,
        throttle: ThrottleRules,
    ) -> None:
        self._uow = unit_of_work
        self._addresses = addresses
        self._throttle = throttle
        self._clock = clock
        self._hasher = hasher
        self._tokens = tokens
        self._authenticator = authenticator

    async def Register(self, request: pb.RegisterRequest, context: Context) -> pb.User:
        user = await uc.register(
            self._uow(),
            self._hasher,
            self._clock,
            email=request.email,
            password=request.password,
            display_name=request.display_name,
            phone=request.phone,
            client=self._addresses.of(context),
            rules=self._throttle,
        )
        return user_message(user)

    async def Login(self, request: pb.LoginRequest, context: Context) -> pb.TokenPair:
        issued = await uc.login(
            self._uow(),
            self._hasher,
            self._tokens,
            self._clock,
            email=request.email,
            password=request.password,
            client=self._addresses.of(context),
            rules=self._throttle,
        )
        return tokens_message(issued)

    async def RefreshToken(self, request: pb.RefreshTokenRequest, context: Context) -> pb.TokenPair:
        return tokens_message(await uc.refresh(self._uow(), self._tokens, self._clock, request.refresh_token))

    async def Logout(self, request: pb.LogoutRequest, context: Context) -> empty_pb2.Empty:
        caller = current_caller()
        await uc.logout(self._uow(), self._clock, caller)
        if caller.session_id is not None:
            self._authenticator.forget(caller.session_id)
        return empty_pb2.Empty()

    async def GetMe(self, request: pb.GetMeRequest, context: Context) -> pb.User:
        user_id = current_caller().user_id
        assert user_id is not None
        return user_message(await uc.get_user(self._uow(), user_id))

    async def UpdateMe(self, request: pb.UpdateMeRequest, context: Context) -> pb.User:
        user = await uc.update_profile(
            self._uow(),
            self._clock,
            current_caller(),
            display_name=request.user.display_name,
            phone=request.user.phone,
            mask=frozenset(request.update_mask.paths),
        )
        return user_message(user)

    async def ChangePassword(self, request: pb.ChangePasswordRequest, context: Context) -> empty_pb2.Empty:
        revoked = await uc.change_password(
            self._uow(),
            self._hasher,
            self._clock,
            current_caller(),
            current=request.current_password,
            new=request.new_password,
            client=self._addresses.of(context),
            rules=self._throttle,
        )
        self._authenticator.forget(*revoked)
        return empty_pb2.Empty()

    async def GetUser(self, request: pb.GetUserRequest, context: Context) -> pb.User:
        return user_message(await uc.get_user(self._uow(), require_id("user_id", request.user_id)))

    async def GrantRole(self, request: pb.GrantRoleRequest, context: Context) -> pb.User:
        user_id = require_id("user_id", request.user_id)
        user = await uc.change_role(self._uow(), current_caller(), user_id, _role(request.role), grant=True)
        self._authenticator.forget_user(user_id)
        return user_message(user)

    async def RevokeRole(self, request: pb.RevokeRoleRequest, context: Context) -> pb.User:
        user_id = require_id("user_id", request.user_id)
        user = await uc.change_role(self._uow(), current_caller(), user_id, _role(request.role), grant=False)
        self._authenticator.forget_user(user_id)
        return user_message(user)
