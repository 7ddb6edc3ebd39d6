"""The cinema-grpc command as operators run it: serve on an embedded PostgreSQL, grpcurl
through reflection, health, graceful shutdown on SIGTERM, and an idempotent seed-demo."""

from __future__ import annotations

import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import grpc
import psycopg
import pytest

from cinema.payment.v1 import payment_pb2 as ppb
from cinema.payment.v1.payment_pb2_grpc import PaymentServiceStub
from cinema.screening.v1.screening_pb2_grpc import ScreeningServiceStub
from cinema_grpc.adapters.local_stripe import LocalStripe
from cinema_grpc.demo import DAILY_SLOTS
from tests.auth_client import with_token
from tests.booking_data import customer, hold, open_sale
from tests.ports import free_port

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


def grpcurl(port: int, *args: str, data: str | None = None, token: str = "") -> subprocess.CompletedProcess[str]:
    """grpcurl -plaintext [-H authorization] [-d DATA] 127.0.0.1:PORT ARGS..."""
    flags = ["-d", data] if data is not None else []
    if token:
        flags += ["-H", f"authorization: Bearer {token}"]
    return subprocess.run(
        [str(BIN / "grpcurl"), "-plaintext", *flags, f"127.0.0.1:{port}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def wait_until_serving(port: int, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"server exited with {process.returncode}: {process.stderr.read() if process.stderr else ''}"
            )
        result = grpcurl(port, "grpc.health.v1.Health/Check", data='{"service": ""}')
        if result.returncode == 0 and "SERVING" in result.stdout:
            return
        time.sleep(0.2)
    raise AssertionError("server did not report SERVING in time")


@pytest.fixture
def embedded_env(tmp_path: Path) -> dict[str, str]:
    return embedded_server_env(tmp_path)


def embedded_server_env(tmp_path: Path) -> dict[str, str]:
    """Environment of a server on its own embedded PostgreSQL in a temporary data dir, with
    every port it opens (gRPC, webhooks, metrics) free."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CINEMA_DATABASE_URL"}}
    env.update(
        CINEMA_DATA_DIR=str(tmp_path / "data"),
        CINEMA_GRPC_PORT=str(free_port()),
        CINEMA_SHUTDOWN_GRACE_SECONDS="5",
        CINEMA_WEBHOOK_PORT="0",
        CINEMA_METRICS_PORT="0",
    )
    return env


@pytest.fixture
def served(embedded_env: dict[str, str]) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    port = int(embedded_env["CINEMA_GRPC_PORT"])
    env = embedded_env
    process = subprocess.Popen(
        [str(BIN / "cinema-grpc"), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until_serving(port, process)
        yield port, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_serve_on_embedded_postgres_answers_grpcurl_and_stops_cleanly_on_sigterm(
    served: tuple[int, subprocess.Popen[str]], embedded_env: dict[str, str]
) -> None:
    port, process = served
    listed = grpcurl(port, "list")
    assert listed.stdout.split() == [
        "cinema.admission.v1.AdmissionService",
        "cinema.booking.v1.BookingService",
        "cinema.identity.v1.IdentityService",
        "cinema.payment.v1.PaymentService",
        "cinema.reports.v1.ReportsService",
        "cinema.screening.v1.ScreeningService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
    described = grpcurl(port, "describe", "cinema.screening.v1.ScreeningService")
    assert (
        "rpc CreateHall ( .cinema.screening.v1.CreateHallRequest ) returns ( .cinema.screening.v1.Hall )"
        in described.stdout
    )

    new_cinema = '{"cinema": {"name": "Rialto", "time_zone": "Europe/Rome", "currency_code": "EUR"}}'
    anonymous = grpcurl(port, "cinema.screening.v1.ScreeningService/CreateCinema", data=new_cinema)
    assert anonymous.returncode == 64 + 16  # UNAUTHENTICATED
    assert "AUTHENTICATION_REQUIRED" in anonymous.stdout + anonymous.stderr

    # create-admin attaches to the running embedded PostgreSQL of the same data dir
    admin = subprocess.run(
        [str(BIN / "cinema-grpc"), "create-admin", "--email", "Boss@Example.com", "--password-stdin"],
        input="a long enough password\n",
        env=embedded_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert admin.returncode == 0, admin.stderr
    assert json.loads(admin.stdout)["roles"] == ["ROLE_ADMIN", "ROLE_CUSTOMER"]  # as the API names them
    login = grpcurl(
        port,
        "cinema.identity.v1.IdentityService/Login",
        data='{"email": "boss@example.com", "password": "a long enough password"}',
    )
    assert login.returncode == 0, login.stderr
    token = json.loads(login.stdout)["access_token"]

    cinema = grpcurl(port, "cinema.screening.v1.ScreeningService/CreateCinema", data=new_cinema, token=token)
    assert cinema.returncode == 0, cinema.stderr
    cinema_id = json.loads(cinema.stdout)["id"]
    hall = grpcurl(
        port,
        "cinema.screening.v1.ScreeningService/CreateHall",
        token=token,
        data=json.dumps(
            {
                "cinema_id": cinema_id,
                "name": "Sala 1",
                "layout": {"rows": [{"label": "A", "columns": 8}, {"label": "B", "columns": 8}]},
            }
        ),
    )
    assert hall.returncode == 0, hall.stderr
    assert json.loads(hall.stdout)["seat_count"] == 16

    missing = grpcurl(
        port, "cinema.screening.v1.ScreeningService/GetHall", data='{"hall_id": "00000000-0000-0000-0000-000000000000"}'
    )
    assert missing.returncode == 64 + 5  # grpcurl exits with 64 + the gRPC code (NOT_FOUND)
    assert "HALL_NOT_FOUND" in missing.stdout + missing.stderr

    health = grpcurl(port, "grpc.health.v1.Health/Check", data='{"service": "cinema.screening.v1.ScreeningService"}')
    assert json.loads(health.stdout) == {"status": "SERVING"}

    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0
    logs = [
        json.loads(line)
        for line in (process.stderr.read() if process.stderr else "").splitlines()
        if line.startswith("{")
    ]
    events = [entry["event"] for entry in logs]
    assert "shutting down" in events and events[-1] == "stopped"
    rpc_logs = [entry for entry in logs if entry["event"] == "rpc"]
    assert {entry["code"] for entry in rpc_logs} >= {"OK", "NOT_FOUND", "UNAUTHENTICATED"}
    assert any(entry["user_id"] for entry in rpc_logs)
    assert all(entry["request_id"] for entry in rpc_logs)


def _a_demo_slot_passed(since: datetime, until: datetime) -> bool:
    """Whether a demo showtime started, or the demo cinema's day changed, in [since, until]."""
    zone = ZoneInfo("Europe/Berlin")
    first, last = since.astimezone(zone), until.astimezone(zone)
    if first.date() != last.date():
        return True
    return any(first <= datetime.combine(first.date(), slot, tzinfo=zone) <= last for slot in DAILY_SLOTS)


def test_seed_demo_is_idempotent(database_url: str, db: object) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    started = datetime.now(UTC)
    runs = [
        subprocess.run(
            [str(BIN / "cinema-grpc"), "seed-demo", "--days", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        for _ in range(2)
    ]
    first, second = (json.loads(run.stdout) for run in runs)
    # The count is of showtimes still ahead: it changes only when one starts or a day begins.
    assert first == second or _a_demo_slot_passed(started, datetime.now(UTC))
    assert first["halls"] == second["halls"] == 3 and first["movies"] == second["movies"] == 4
    assert first["showtimes"] > 0


def test_bad_flags_and_configuration_fail_with_a_clear_message(tmp_path: Path) -> None:
    bad_flag = subprocess.run(
        [str(BIN / "cinema-grpc"), "serve", "--port", "x"], capture_output=True, text=True, check=False
    )
    assert bad_flag.returncode == 2 and "argument --port: invalid port 'x'" in bad_flag.stderr
    env = {**os.environ, "CINEMA_GRPC_PORT": "99999"}
    bad_config = subprocess.run(
        [str(BIN / "cinema-grpc"), "migrate"], env=env, capture_output=True, text=True, check=False
    )
    assert bad_config.returncode == 2 and "CINEMA_GRPC_PORT" in bad_config.stderr


@pytest.mark.skipif(shutil.which("true") is None, reason="needs a POSIX userland")
def test_migrate_brings_a_configured_database_to_the_newest_schema(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url}
    done = subprocess.run(
        [str(BIN / "cinema-grpc"), "migrate"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "newest migration" in done.stdout


def _children(pid: int) -> list[int]:
    return [
        int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()
    ]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie that nobody reaped yet does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_serve_without_a_stripe_key_says_payments_are_test_ones_and_takes_its_test_server_down_when_killed(
    tmp_path: Path, database_url: str
) -> None:
    env = {
        **embedded_server_env(tmp_path),
        "DATABASE_URL": database_url,
        "CINEMA_METRICS_PORT": str(free_port()),
        "CINEMA_STRIPE_SECRET_KEY": "",
    }
    port = int(env["CINEMA_GRPC_PORT"])
    with (tmp_path / "serve.log").open("w+") as log:
        process = subprocess.Popen([str(BIN / "cinema-grpc"), "serve"], env=env, stdout=log, stderr=log, text=True)
        try:
            wait_until_serving(port, process)
            local_stripe = [
                pid
                for pid in _children(process.pid)
                if b"cinema_grpc.adapters.local_stripe" in Path(f"/proc/{pid}/cmdline").read_bytes()
            ]
            assert len(local_stripe) == 1
            metrics_url = f"http://127.0.0.1:{env['CINEMA_METRICS_PORT']}/metrics"
            with urllib.request.urlopen(metrics_url, timeout=5) as page:
                assert "cinema_test_payment_mode 1.0" in page.read().decode().splitlines()
        finally:
            process.kill()  # SIGKILL: serve cannot stop anything itself
            process.wait(10)
        deadline = time.monotonic() + 10
        while _alive(local_stripe[0]):
            assert time.monotonic() < deadline, "the local Stripe test server outlived the killed serve"
            time.sleep(0.1)
        log.seek(0)
        output = log.read()
    assert "TEST PAYMENT MODE" in output
    assert "started the local Stripe test server" in output


def test_production_refuses_to_start_without_a_live_stripe_key(tmp_path: Path) -> None:
    env = {**embedded_server_env(tmp_path), "CINEMA_ENV": "production", "CINEMA_STRIPE_SECRET_KEY": ""}
    refused = subprocess.run(
        [str(BIN / "cinema-grpc"), "serve"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode == 2
    assert "refusing to start: CINEMA_ENV=production" in refused.stderr
    assert "CINEMA_STRIPE_SECRET_KEY is unset" in refused.stderr
    assert "CINEMA_TOKEN_SIGNING_KEY is unset" in refused.stderr
    assert "CINEMA_TICKET_SIGNING_KEY is unset" in refused.stderr
    assert "CINEMA_AUDIT_KEY is unset" in refused.stderr
    assert "DATABASE_URL is unset" in refused.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was started or written


def cli(*args: str, env: dict[str, str] | None = None, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cinema-grpc"), *args],
        input=stdin,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_usage_errors_name_the_bad_argument_and_show_the_usage_of_its_command() -> None:
    bogus = cli("--bogus")
    assert bogus.returncode == 2
    assert "unrecognized arguments: --bogus" in bogus.stderr and "COMMAND missing" not in bogus.stderr

    serve_bogus = cli("serve", "--bogus")
    assert serve_bogus.returncode == 2
    assert serve_bogus.stderr.startswith("usage: cinema-grpc serve ")
    assert "cinema-grpc serve: error: unrecognized arguments: --bogus" in serve_bogus.stderr

    days = cli("seed-demo", "--days", "0")
    assert days.returncode == 2
    assert "argument --days: invalid number of days 0: a number from 1 to 30" in days.stderr
    assert "choose from" not in days.stderr and "29" not in days.stderr

    nothing = cli("audit")
    assert nothing.returncode == 2
    assert "cinema-grpc audit: error: AUDIT_COMMAND missing: one of verify" in nothing.stderr


def test_help_imports_no_server_code_and_documents_every_option_with_its_default() -> None:
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from cinema_grpc.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('grpc', 'sqlalchemy', 'stripe', 'pydantic', 'structlog') if m in sys.modules)\n"
            "print('HEAVY', heavy, file=sys.stderr)",
            "create-admin",
            "--help",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "HEAVY []" in probe.stderr  # lazy imports: --help answers in tens of milliseconds
    assert "email address of the account" in probe.stdout
    assert "(default: Administrator)" in probe.stdout
    assert "10 to 128 characters" in probe.stdout
    assert "(default: 7)" in cli("seed-demo", "--help").stdout
    assert "(default: pm_card_visa)" in cli("dev", "pay", "--help").stdout


def test_create_admin_refuses_a_short_password_before_asking_again_or_opening_the_database(tmp_path: Path) -> None:
    env = {**os.environ, "CINEMA_DATA_DIR": str(tmp_path / "data")}
    piped = cli("create-admin", "--email", "boss@example.com", "--password-stdin", env=env, stdin="short\n")
    assert piped.returncode == 1
    assert "the password must be 10 to 128 characters" in piped.stderr
    assert not (tmp_path / "data").exists()  # refused before any embedded PostgreSQL started

    # At a terminal the rule is checked after the first prompt, not after typing it twice.
    main, secondary = pty.openpty()
    with subprocess.Popen(
        [str(BIN / "cinema-grpc"), "create-admin", "--email", "boss@example.com"],
        stdin=secondary,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
        start_new_session=True,  # no controlling terminal: getpass reads the pty on stdin
    ) as asking:
        os.close(secondary)
        assert asking.stderr is not None
        # Typed once the prompt is there: getpass flushes what was typed before it asked.
        prompt = ""
        while "characters): " not in prompt:
            chunk = os.read(asking.stderr.fileno(), 1024).decode()
            assert chunk, f"no password prompt: {prompt!r}"
            prompt += chunk
        os.write(main, b"short\n")
        try:
            _, rest = asking.communicate(timeout=30)
        finally:
            asking.kill()
            os.close(main)
    err = prompt + rest
    assert asking.returncode == 1
    assert "Password (10 to 128 characters):" in err
    assert "again" not in err
    assert "the password must be 10 to 128 characters" in err


def test_dev_pay_is_refused_when_a_real_stripe_account_is_configured(tmp_path: Path) -> None:
    env = {**os.environ, "CINEMA_DATA_DIR": str(tmp_path), "CINEMA_STRIPE_SECRET_KEY": "sk_live_abc"}
    refused = cli("dev", "pay", "00000000-0000-0000-0000-000000000000", env=env)
    assert refused.returncode == 2
    assert "only pays at the local Stripe test server" in refused.stderr
    assert "CINEMA_STRIPE_SECRET_KEY" in refused.stderr


def test_dev_pay_confirms_a_card_payment_at_the_local_test_server_and_the_booking_follows(
    channel: grpc.Channel,
    screening: ScreeningServiceStub,
    db: psycopg.Connection[tuple[object, ...]],
    local_stripe: LocalStripe,
    database_url: str,
) -> None:
    sale = open_sale(screening, hours_ahead=7)
    ana = customer(channel, db)
    stub = PaymentServiceStub(with_token(channel, ana.token))
    env = {**os.environ, "DATABASE_URL": database_url}

    paid = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=hold(ana, sale, "C1", "C2").id))
    done = cli("dev", "pay", paid.id, "--stripe-api", local_stripe.api_base, env=env)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["state"] == "PAYMENT_STATE_SUCCESS" and answer["booking_id"]
    assert stub.GetPayment(ppb.GetPaymentRequest(payment_id=paid.id)).booking_id == answer["booking_id"]

    declined = stub.CreatePayment(ppb.CreatePaymentRequest(hold_id=hold(ana, sale, "C3").id))
    declining = ("--card", "pm_card_chargeCustomerFail", "--stripe-api", local_stripe.api_base)
    refused = cli("dev", "pay", declined.id, *declining, env=env)
    assert refused.returncode == 0, refused.stderr
    answer = json.loads(refused.stdout)
    assert answer["intent_status"].startswith("declined") and answer["state"] == "PAYMENT_STATE_FAILED"

    again = cli("dev", "pay", paid.id, "--stripe-api", local_stripe.api_base, env=env)
    assert again.returncode == 1 and "is SUCCESS: nothing to confirm" in again.stderr
