"""The cinema-grpc command: serve, console, migrate, seed-demo, create-admin, audit verify, gateway
build, ticket-key new/show, dev pay.

Each command imports what it needs when it runs, so ``--help`` and usage errors answer at once
instead of after a second of importing gRPC, SQLAlchemy and Stripe.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from cinema_grpc.console.runner import ConsoleConfig
    from cinema_grpc.settings import Settings
    from cinema_grpc.storage.database import Database

SEED_DAYS = (1, 30)
ROLE_PREFIX = "ROLE_"
# The Stripe test cards `dev pay` offers (the local test server knows these): one that pays,
# one that the bank declines.
TEST_CARDS = ("pm_card_visa", "pm_card_chargeCustomerFail")


def role_name(role: str) -> str:
    """A role as the API names it (ROLE_ADMIN), whatever form it was given in (admin, ADMIN)."""
    upper = role.strip().upper()
    return upper if upper.startswith(ROLE_PREFIX) else ROLE_PREFIX + upper


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from cinema_grpc.gateway import GatewayConfig, GatewayError, ensure_gateway, openapi_dir_of
    from cinema_grpc.server import serve
    from cinema_grpc.settings import ConfigurationError
    from cinema_grpc.workers import serve_workers

    if args.port is not None:
        settings.grpc_port = args.port
    if args.host is not None:
        settings.grpc_host = args.host
    if args.workers > 1:
        try:
            return serve_workers(settings, args.workers, run_migrations=not args.no_migrate)
        except ConfigurationError as exc:
            print(f"cinema-grpc: refusing to start: {exc}", file=sys.stderr)
            return 2
    gateway = None
    try:
        if args.gateway:
            binary = ensure_gateway()
            host = args.gateway_host or "127.0.0.1"
            port = 8080 if args.gateway_port is None else args.gateway_port
            gateway = GatewayConfig(binary, host, port, openapi_dir_of(binary))
        console = _console_config(args.console_host, args.console_port) if args.console else None
        asyncio.run(serve(settings, gateway, console, run_migrations=not args.no_migrate))
    except ConfigurationError as exc:
        print(f"cinema-grpc: refusing to start: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"cinema-grpc: {exc}", file=sys.stderr)
        return 1
    return 0


def _console_config(host: str | None, port: int | None) -> ConsoleConfig:
    from cinema_grpc.console.runner import DEFAULT_HOST, DEFAULT_PORT, ConsoleConfig

    return ConsoleConfig(host or DEFAULT_HOST, DEFAULT_PORT if port is None else port)


def _console(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from cinema_grpc.console.runner import run_console

    asyncio.run(run_console(args.target, _console_config(args.host, args.port), args.grpc_ca))
    return 0


def _gateway_build(settings: Settings, args: argparse.Namespace) -> int:
    from cinema_grpc.gateway import BUILD_DIR, GatewayError, build_gateway

    try:
        binary = build_gateway(args.out or BUILD_DIR, update_openapi=not args.no_openapi_copy)
    except GatewayError as exc:
        print(f"cinema-grpc: {exc}", file=sys.stderr)
        return 1
    print(f"gateway built: {binary}")
    return 0


def _workers(value: str) -> int:
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid worker count {value!r}: a number from 1 to 64") from None
    if not 1 <= count <= 64:
        raise argparse.ArgumentTypeError(f"invalid worker count {count}: a number from 1 to 64")
    return count


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {value!r}: a number from 0 to 65535") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}: a number from 0 to 65535")
    return port


def _days(value: str) -> int:
    low, high = SEED_DAYS
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of days {value!r}: a number from {low} to {high}") from None
    if not low <= days <= high:
        raise argparse.ArgumentTypeError(f"invalid number of days {days}: a number from {low} to {high}")
    return days


def _open_database(settings: Settings, *, run_migrations: bool = True) -> Database:
    from cinema_grpc.storage.database import open_database

    return open_database(settings, run_migrations=run_migrations)


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from cinema_grpc.storage.database import database_url, migrate

    url, embedded = database_url(settings)
    try:
        migrate(url)
    finally:
        if embedded is not None:
            embedded.stop()
    print("database is at the newest migration")
    return 0


def _seed_demo(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio
    import json

    from cinema_grpc.adapters.clock import SystemClock
    from cinema_grpc.demo import seed_demo
    from cinema_grpc.storage.unit_of_work import SqlUnitOfWork

    async def run() -> dict[str, int]:
        database = await asyncio.to_thread(_open_database, settings)
        try:
            return await seed_demo(lambda: SqlUnitOfWork(database.sessions), SystemClock(), days=args.days)
        finally:
            await database.close()

    print(json.dumps(asyncio.run(run())))
    return 0


def _password_problem(password: str, email: str) -> str | None:
    """What is wrong with the password by the API's rule, checked before anything is stored."""
    from cinema_grpc.domain.errors import Violations
    from cinema_grpc.domain.identity.model import password_violations

    violations = Violations()
    password_violations(violations, "password", password, email)
    return "; ".join(v.description for v in violations.items) or None


def _read_password(args: argparse.Namespace) -> str:
    import getpass

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif not sys.stdin.isatty():
        raise SystemExit("cinema-grpc: no terminal to ask for the password; use --password-stdin")
    else:
        password = getpass.getpass("Password (10 to 128 characters): ")
        # Said before asking again: a password the rule refuses need not be typed twice.
        if (problem := _password_problem(password, args.email)) is not None:
            raise SystemExit(f"cinema-grpc: the password {problem}")
        if password != getpass.getpass("Password (again): "):
            raise SystemExit("cinema-grpc: the passwords differ")
    if (problem := _password_problem(password, args.email)) is not None:
        raise SystemExit(f"cinema-grpc: the password {problem}")
    return password


def _create_admin(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio
    import json

    from cinema_grpc.adapters.clock import SystemClock
    from cinema_grpc.adapters.passwords import Argon2PasswordHasher
    from cinema_grpc.domain.errors import ValidationFailed
    from cinema_grpc.domain.identity.model import User
    from cinema_grpc.domain.identity.use_cases import create_admin
    from cinema_grpc.storage.unit_of_work import SqlUnitOfWork

    password = _read_password(args)

    async def run() -> User:
        database = await asyncio.to_thread(_open_database, settings)
        try:
            return await create_admin(
                SqlUnitOfWork(database.sessions),
                Argon2PasswordHasher(),
                SystemClock(),
                email=args.email,
                password=password,
                display_name=args.name,
            )
        finally:
            await database.close()

    try:
        user = asyncio.run(run())
    except ValidationFailed as exc:
        print(f"cinema-grpc: {exc.message}", file=sys.stderr)
        return 2
    roles = sorted(role_name(r.name) for r in user.roles)
    print(json.dumps({"user_id": str(user.id), "email": user.email, "roles": roles}))
    return 0


def _audit_verify(settings: Settings, args: argparse.Namespace) -> int:
    import asyncio

    from cinema_grpc.adapters.audit_checkpoints import CHECKPOINT_FILE, KEY_FILE, FileCheckpoints, audit_key
    from cinema_grpc.domain.payment.audit import AuditVerdict
    from cinema_grpc.domain.payment.use_cases import verify_audit_trail
    from cinema_grpc.settings import ConfigurationError
    from cinema_grpc.storage.database import open_database
    from cinema_grpc.storage.unit_of_work import SqlUnitOfWork

    configured = settings.audit_key.get_secret_value() if settings.audit_key else None
    if configured is None and not os.path.lexists(settings.data_dir / KEY_FILE):
        # A key made up here would call every keyed entry altered: verify with the servers' key.
        print(
            f"cinema-grpc: no audit key: set CINEMA_AUDIT_KEY to the servers' key, or CINEMA_DATA_DIR to the data "
            f"dir of a server that generated one ({settings.data_dir / KEY_FILE} does not exist)",
            file=sys.stderr,
        )
        return 2
    try:
        key = audit_key(configured, settings.data_dir)
    except ConfigurationError as exc:
        print(f"cinema-grpc: {exc}", file=sys.stderr)
        return 2
    checkpoints = FileCheckpoints(args.checkpoint or settings.data_dir / CHECKPOINT_FILE)

    async def run() -> AuditVerdict:
        # Only reads: no migrations, so the runtime role may verify too.
        database = await asyncio.to_thread(open_database, settings, run_migrations=False)
        try:
            return await verify_audit_trail(SqlUnitOfWork(database.sessions), key, checkpoints)
        finally:
            await database.close()

    verdict = asyncio.run(run())
    against = (
        f"checkpoint at entry {verdict.checkpoint_sequence} ({checkpoints.path})"
        if verdict.checkpoint_sequence
        else f"no checkpoint ({checkpoints.path} does not exist: deleted newest entries cannot be noticed)"
    )
    if verdict.intact:
        print(f"audit trail intact: {verdict.entries_checked} entries checked, {against}")
        return 0
    problem = verdict.problem.value if verdict.problem else "UNKNOWN"
    print(
        f"audit trail BROKEN at entry {verdict.first_broken_sequence}: {problem} - {AUDIT_PROBLEMS.get(problem, '')} "
        f"({verdict.entries_checked} entries checked, {against})",
        file=sys.stderr,
    )
    return 1


AUDIT_PROBLEMS = {
    "ENTRY_ALTERED": "its hash does not match its content and its predecessor, or the checkpoint",
    "KEYED_CHAIN_DOWNGRADED": "a plain SHA-256 entry after keyed ones: the chain was recomputed without the key",
    "ENTRIES_MISSING": "the entry the signed checkpoint names is gone: entries were deleted from the end",
    "CHECKPOINT_FORGED": "the checkpoint's signature does not match: it was edited or signed with another key",
}


def _grant_runtime_role(settings: Settings, args: argparse.Namespace) -> int:
    import getpass

    import psycopg

    from cinema_grpc.storage.database import database_url, grant_runtime_role

    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif args.ask_password:
        password = getpass.getpass(f"Password of {args.role}: ")
    url, embedded = database_url(settings)
    try:
        grant_runtime_role(url, args.role, password)
    except (RuntimeError, psycopg.Error) as exc:
        print(f"cinema-grpc: {exc}", file=sys.stderr)
        return 1
    finally:
        if embedded is not None:
            embedded.stop()
    print(
        f"role {args.role} may read and write the application's rows and append to the audit trail; "
        f"run 'cinema-grpc serve --no-migrate' with DATABASE_URL naming it"
    )
    return 0


def _ticket_key_new(settings: Settings, args: argparse.Namespace) -> int:
    import base64
    import json

    from cinema_grpc.adapters.ticket_codes import Ed25519TicketCodec, new_private_key

    private = new_private_key()
    key = Ed25519TicketCodec.from_settings(private, "", settings.data_dir).verification_keys()[0]
    print(
        json.dumps(
            {
                "private_key": private,
                "public_key": base64.b64encode(key.public_key).decode(),
                "key_id": key.key_id,
            }
        )
    )
    return 0


def _ticket_key_show(settings: Settings, args: argparse.Namespace) -> int:
    import base64
    import json

    from cinema_grpc.adapters.ticket_codes import Ed25519TicketCodec
    from cinema_grpc.settings import ConfigurationError

    configured = settings.ticket_signing_key.get_secret_value() if settings.ticket_signing_key else None
    try:
        codec = Ed25519TicketCodec.from_settings(configured, settings.ticket_retired_public_keys, settings.data_dir)
    except ConfigurationError as exc:
        print(f"cinema-grpc: {exc}", file=sys.stderr)
        return 2
    keys = [
        {"key_id": k.key_id, "public_key": base64.b64encode(k.public_key).decode(), "current": k.current}
        for k in codec.verification_keys()
    ]
    print(json.dumps({"keys": keys}))
    return 0


def _dev_pay(settings: Settings, args: argparse.Namespace) -> int:
    """Confirms a card payment at the local Stripe test server, as a customer's card form would,
    then waits briefly for the server to settle it (the test server's webhook)."""
    import asyncio
    import functools
    import json
    import uuid

    from cinema_grpc.adapters.local_stripe import API_KEY, CardConfirmationFailed, confirm_intent, recorded_api_base
    from cinema_grpc.domain.payment.model import Payment, PaymentState
    from cinema_grpc.storage.unit_of_work import SqlUnitOfWork

    if settings.stripe_secret_key is not None and settings.stripe_secret_key.get_secret_value() != API_KEY:
        print(
            "cinema-grpc: dev pay only pays at the local Stripe test server, and CINEMA_STRIPE_SECRET_KEY "
            "names a real Stripe account: confirm the payment with Stripe.js and its client_secret instead",
            file=sys.stderr,
        )
        return 2
    try:
        payment_id = uuid.UUID(args.payment_id)
    except ValueError:
        print(
            f"cinema-grpc: invalid payment id {args.payment_id!r}: a UUID such as the id CreatePayment returned",
            file=sys.stderr,
        )
        return 2
    api_base = args.stripe_api or recorded_api_base(settings.data_dir)
    if api_base is None:
        print(
            f"cinema-grpc: no local Stripe test server is recorded in {settings.data_dir}: "
            "start `cinema-grpc serve` (with no CINEMA_STRIPE_SECRET_KEY) for this data dir, or pass --stripe-api URL",
            file=sys.stderr,
        )
        return 1

    async def run() -> dict[str, Any]:
        # Only reads a payment of a running server, which migrated the schema.
        database = await asyncio.to_thread(functools.partial(_open_database, settings, run_migrations=False))

        async def read() -> Payment | None:
            async with SqlUnitOfWork(database.sessions) as uow:
                return await uow.payments.get(payment_id)

        try:
            payment = await read()
            if payment is None:
                raise SystemExit(f"cinema-grpc: no payment {payment_id}")
            if payment.state is not PaymentState.INITIALIZED or not payment.intent_id:
                raise SystemExit(
                    f"cinema-grpc: payment {payment_id} is {payment.state.value}"
                    + ("" if payment.intent_id else " and has no PaymentIntent yet")
                    + ": nothing to confirm"
                )
            try:
                outcome = await asyncio.to_thread(confirm_intent, api_base, payment.intent_id, args.card)
            except CardConfirmationFailed as exc:
                raise SystemExit(f"cinema-grpc: {exc}") from exc
            # The test server tells the server by webhook; give it a moment to settle.
            loop = asyncio.get_running_loop()
            deadline = loop.time() + args.wait
            current: Payment | None = payment
            while current is not None and current.state is PaymentState.INITIALIZED and loop.time() < deadline:
                await asyncio.sleep(0.2)
                current = await read()
            assert current is not None
            return {
                "payment_id": str(current.id),
                "intent_id": current.intent_id,
                "card": args.card,
                "intent_status": outcome,
                "state": f"PAYMENT_STATE_{current.state.value}",
                "booking_id": str(current.booking_id) if current.booking_id else "",
            }
        finally:
            await database.close()

    print(json.dumps(asyncio.run(run())))
    return 0


class _Parser(argparse.ArgumentParser):
    """Errors name the bad argument and show the usage of the command it was given to."""

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        # The innermost command parsed last: it owns the leftovers.
        if extras and getattr(parsed, "_parser", self) is self:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed, extras

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _commands(parser: argparse.ArgumentParser, dest: str) -> argparse._SubParsersAction[_Parser]:
    commands = parser.add_subparsers(dest=dest, metavar=dest.upper(), parser_class=_Parser)
    parser.set_defaults(_parser=parser, _needs=commands)
    return commands


def _command(
    commands: argparse._SubParsersAction[_Parser], name: str, help_text: str, run: Any | None = None
) -> _Parser:
    command = commands.add_parser(name, help=help_text, description=help_text)
    command.set_defaults(_parser=command, _needs=None)
    if run is not None:
        command.set_defaults(run=run)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cinema-grpc",
        description="Cinema selling backend over gRPC. Configured by environment variables (see README).",
    )
    commands = _commands(parser, "command")
    serve_cmd = _command(commands, "serve", "run the gRPC server until SIGTERM/SIGINT", _serve)
    serve_cmd.add_argument("--host", help="listen address (default: CINEMA_GRPC_HOST, else 127.0.0.1)")
    serve_cmd.add_argument(
        "--port", type=_port, help="listen port, 0 for any free one (default: CINEMA_GRPC_PORT, else 50051)"
    )
    serve_cmd.add_argument(
        "--gateway",
        action="store_true",
        help="also run the REST/JSON gateway (grpc-gateway) in front of the gRPC port; built first if needed",
    )
    serve_cmd.add_argument("--gateway-host", metavar="HOST", help="gateway listen address (default: 127.0.0.1)")
    serve_cmd.add_argument("--gateway-port", type=_port, metavar="PORT", help="gateway listen port (default: 8080)")
    serve_cmd.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="server processes sharing the port (SO_REUSEPORT), for machines with free cores (default: %(default)s)",
    )
    serve_cmd.add_argument(
        "--console", action="store_true", help="also serve the staff web console, calling this server over gRPC"
    )
    serve_cmd.add_argument("--console-host", metavar="HOST", help="console listen address (default: 127.0.0.1)")
    serve_cmd.add_argument("--console-port", type=_port, metavar="PORT", help="console port (default: 8090)")
    serve_cmd.add_argument(
        "--no-migrate",
        action="store_true",
        help="do not migrate the schema (the database role may own nothing): refuse to start unless it is at the "
        "newest migration; run 'cinema-grpc migrate' as the owner first",
    )
    console_cmd = _command(commands, "console", "serve the staff web console against a running gRPC server", _console)
    console_cmd.add_argument(
        "--target", default="127.0.0.1:50051", metavar="HOST:PORT", help="the gRPC server (default: %(default)s)"
    )
    console_cmd.add_argument("--host", help="listen address (default: 127.0.0.1)")
    console_cmd.add_argument("--port", type=_port, help="listen port, 0 for any free one (default: 8090)")
    console_cmd.add_argument(
        "--grpc-ca", type=Path, metavar="PEM", help="the server's gRPC port uses TLS: trust this certificate"
    )
    _command(commands, "migrate", "bring the database schema to the newest migration", _migrate)
    seed = _command(commands, "seed-demo", "create a demo cinema, halls, movies and days of showtimes", _seed_demo)
    seed.add_argument(
        "--days",
        type=_days,
        default=7,
        metavar="N",
        help=f"days of showtimes from today, {SEED_DAYS[0]} to {SEED_DAYS[1]} (default: %(default)s)",
    )
    admin = _command(
        commands, "create-admin", "create an admin account, or make an existing account admin", _create_admin
    )
    admin.add_argument("--email", required=True, help="email address of the account (its sign-in name)")
    admin.add_argument("--name", default="Administrator", help="display name of a new account (default: %(default)s)")
    admin.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password (10 to 128 characters) from the first line of stdin instead of asking twice",
    )
    audit = _command(commands, "audit", "payment audit trail tools")
    audit_commands = _commands(audit, "audit_command")
    verify = _command(
        audit_commands,
        "verify",
        "recompute the audit trail's keyed hash chain and compare it with the latest signed checkpoint; "
        "exit 1 and name the first broken entry and the problem",
        _audit_verify,
    )
    verify.add_argument(
        "--checkpoint",
        type=Path,
        metavar="FILE",
        help="the checkpoint file to compare with (default: $CINEMA_DATA_DIR/audit-checkpoint.json; any "
        "replica's will do)",
    )
    role = _command(
        commands,
        "grant-runtime-role",
        "as the schema owner (DATABASE_URL): create or update the database role 'serve --no-migrate' runs as; it "
        "reads and writes rows, owns nothing, and may only append to the audit trail",
        _grant_runtime_role,
    )
    role.add_argument("role", help="role name, e.g. cinema_app")
    passwords = role.add_mutually_exclusive_group()
    passwords.add_argument(
        "--password-stdin", action="store_true", help="set its password from the first line of stdin"
    )
    passwords.add_argument("--ask-password", action="store_true", help="set its password, asked at the terminal")
    gateway = _command(commands, "gateway", "the REST/JSON gateway (grpc-gateway) in front of the gRPC server")
    gateway_commands = _commands(gateway, "gateway_command")
    build = _command(
        gateway_commands,
        "build",
        "build the gateway binary and its OpenAPI documents from protos/ (needs Go and protoc: "
        "scripts/install-gateway-deps.sh)",
        _gateway_build,
    )
    build.add_argument(
        "--out", type=Path, metavar="DIR", help="output directory (default: build/gateway in the source tree)"
    )
    build.add_argument(
        "--no-openapi-copy", action="store_true", help="do not refresh the committed documents in generated/openapi"
    )
    ticket_key = _command(commands, "ticket-key", "the Ed25519 key that signs ticket codes")
    ticket_key_commands = _commands(ticket_key, "ticket_key_command")
    _command(
        ticket_key_commands,
        "new",
        "print a new signing key (for CINEMA_TICKET_SIGNING_KEY) with its public key and key id",
        _ticket_key_new,
    )
    _command(
        ticket_key_commands,
        "show",
        "print the public keys and key ids the server verifies codes with (never the private key)",
        _ticket_key_show,
    )
    dev = _command(commands, "dev", "development helpers for a server running without a Stripe account")
    dev_commands = _commands(dev, "dev_command")
    pay = _command(
        dev_commands,
        "pay",
        "pay a card payment (CreatePayment) at the local Stripe test server that `serve` started, as a "
        "customer's card form would; refused when a real Stripe key is configured",
        _dev_pay,
    )
    pay.add_argument("payment_id", metavar="PAYMENT_ID", help="the id CreatePayment returned")
    pay.add_argument(
        "--card",
        choices=TEST_CARDS,
        default="pm_card_visa",
        help="Stripe test card: one that pays, or one the bank declines (default: %(default)s)",
    )
    pay.add_argument(
        "--stripe-api",
        metavar="URL",
        help="the local test server's URL (default: the one `serve` recorded in CINEMA_DATA_DIR)",
    )
    pay.add_argument(
        "--wait",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for the server to settle it (default: %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    # Subprocesses (the embedded PostgreSQL, the local Stripe server, the gateway) are forked
    # while gRPC threads run; gRPC's fork handlers are for children that use gRPC, which none
    # does, and they only print a warning at shutdown. Must be set before grpc is imported.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    needs: argparse._SubParsersAction[_Parser] | None = args._needs
    if needs is not None and getattr(args, needs.dest) is None:
        args._parser.error(f"{needs.metavar} missing: one of {', '.join(needs.choices)}")
    if args.command == "serve" and not args.gateway and (args.gateway_host or args.gateway_port is not None):
        args._parser.error("--gateway-host and --gateway-port need --gateway")
    if args.command == "serve" and args.gateway and args.workers > 1:
        args._parser.error("--gateway runs with one worker; with --workers, run the gateway in front of the port apart")
    if args.command == "serve" and args.console and args.workers > 1:
        args._parser.error("--console runs with one worker; with --workers, run 'cinema-grpc console --target' apart")
    # The embedded PostgreSQL's platformdirs warns that XDG_RUNTIME_DIR is unset (services and
    # containers) and falls back to a directory that works: nothing for the operator to do.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
    from pydantic import ValidationError

    from cinema_grpc.log_config import configure_logging
    from cinema_grpc.settings import Settings, describe_errors, unknown_variables

    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"cinema-grpc: bad configuration:\n{describe_errors(exc)}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    unknown = unknown_variables(os.environ)
    if unknown:
        import structlog

        structlog.get_logger("cinema_grpc.settings").warning(
            "environment variables that no setting reads are ignored (misspelt?); see README, Configuration",
            variables=unknown,
        )
    return int(args.run(settings, args))


if __name__ == "__main__":
    sys.exit(main())
