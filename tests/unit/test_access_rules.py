"""Who may call what: the audience rule, and that every RPC declares a policy."""

from __future__ import annotations

import importlib
import uuid
from pathlib import Path

import pytest

from cinema.access.v1 import access_pb2
from cinema_grpc.domain.access import (
    ANONYMOUS,
    Audience,
    AuthenticationRequired,
    Caller,
    PermissionDenied,
    Role,
    authorize,
)
from cinema_grpc.server import SERVICES
from cinema_grpc.services.access import declared_policies

CUSTOMER = Caller(uuid.uuid4(), frozenset({Role.CUSTOMER}))
STAFF = Caller(uuid.uuid4(), frozenset({Role.CUSTOMER, Role.STAFF}))
ADMIN = Caller(uuid.uuid4(), frozenset({Role.CUSTOMER, Role.ADMIN}))
SCANNER = Caller(uuid.uuid4(), frozenset({Role.CUSTOMER, Role.SCANNER}))


@pytest.mark.parametrize(
    ("audience", "allowed", "refused"),
    [
        (Audience.PUBLIC, [ANONYMOUS, CUSTOMER, STAFF, ADMIN], []),
        (Audience.AUTHENTICATED, [CUSTOMER, STAFF, ADMIN], [ANONYMOUS]),
        (Audience.STAFF, [STAFF, ADMIN], [ANONYMOUS, CUSTOMER, SCANNER]),
        (Audience.ADMIN, [ADMIN], [ANONYMOUS, CUSTOMER, STAFF, SCANNER]),
        (Audience.SCANNER, [SCANNER, STAFF, ADMIN], [ANONYMOUS, CUSTOMER]),
    ],
)
def test_roles_are_ordered_admin_over_staff_over_customer(
    audience: Audience, allowed: list[Caller], refused: list[Caller]
) -> None:
    for caller in allowed:
        authorize(audience, caller)
    for caller in refused:
        expected = AuthenticationRequired if caller is ANONYMOUS else PermissionDenied
        with pytest.raises(expected):
            authorize(audience, caller)


def test_customers_reach_only_what_they_own_and_staff_reach_everything() -> None:
    assert CUSTOMER.may_see(CUSTOMER.user_id)  # type: ignore[arg-type]
    assert not CUSTOMER.may_see(uuid.uuid4())
    assert STAFF.may_see(uuid.uuid4())


def test_every_rpc_of_every_cinema_service_declares_a_policy() -> None:
    missing = []
    for service in SERVICES:
        for method in service.methods:
            options = method.GetOptions()
            if (
                not options.HasExtension(access_pb2.policy)
                or options.Extensions[access_pb2.policy].audience == access_pb2.AUDIENCE_UNSPECIFIED
            ):
                missing.append(f"{service.full_name}.{method.name}")
    assert missing == []
    assert len(declared_policies(SERVICES)) == sum(len(s.methods) for s in SERVICES)


def test_every_cinema_service_in_the_generated_code_is_served() -> None:
    root = Path(__file__).parents[2] / "generated"
    generated = set()
    for path in root.glob("cinema/*/v1/*_pb2.py"):
        module = importlib.import_module(".".join(path.relative_to(root).with_suffix("").parts))
        generated |= {s.full_name for s in module.DESCRIPTOR.services_by_name.values()}
    assert generated == {s.full_name for s in SERVICES}


def test_screening_reads_are_public_and_writes_need_staff() -> None:
    policies = declared_policies(SERVICES)
    screening = {path.rsplit("/", 1)[1]: audience for path, audience in policies.items() if "Screening" in path}
    reads = {name for name in screening if name.startswith(("Get", "List", "Find"))}
    assert {screening[name] for name in reads} == {Audience.PUBLIC}
    assert {screening[name] for name in set(screening) - reads - {"CreateCinema"}} == {Audience.STAFF}
    assert screening["CreateCinema"] is Audience.ADMIN


def test_the_scanner_role_stands_beside_the_order_and_ranks_as_a_customer() -> None:
    assert SCANNER.rank == Role.CUSTOMER and not SCANNER.is_staff
    assert not SCANNER.may_see(uuid.uuid4())


def test_admission_rpcs_declare_who_may_call_them() -> None:
    policies = declared_policies(SERVICES)
    admission = {path.rsplit("/", 1)[1]: audience for path, audience in policies.items() if "AdmissionService" in path}
    assert admission == {
        "GetScannerConfig": Audience.SCANNER,
        "CheckInTicket": Audience.SCANNER,
        "UploadScans": Audience.SCANNER,
        "GetTicketPass": Audience.AUTHENTICATED,
        "ReissueTicketPass": Audience.AUTHENTICATED,
        "UndoAdmission": Audience.STAFF,
    }
    assert policies["/cinema.reports.v1.ReportsService/GetShowtimeAdmissions"] is Audience.STAFF
