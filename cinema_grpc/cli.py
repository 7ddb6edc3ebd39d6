"""The cinema-grpc command: serve, console, migrate, seed-demo, create-admin, audit verify, gateway build,
ticket-key new/show."""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from cinema_grpc.adapters.clock import SystemClock
from cinema_grpc.adapters.passwords import Argon2PasswordHasher
from cinema_grpc.adapters.ticket_codes import Ed25519TicketCodec, new_private_key
from cinema_grpc.console.runner import DEFAULT_HOST, DEFAULT_PORT, ConsoleConfig, run_console
from cinema_grpc.demo import seed_demo
from cinema_grpc.domain.errors import ValidationFailed
from cinema_grpc.domain.identity.model import User
from cinema_grpc.domain.identity.use_cases import create_admin
from cinema_grpc.domain.payment.model import AuditVerdict
from cinema_grpc.domain.payment.use_cases import verify_audit_trail
from cinema_grpc.gateway import BUILD_DIR, GatewayConfig, GatewayError, build_gateway, ensure_gateway, openapi_dir_of
from cinema_grpc.log_config import configure_logging
from cinema_grpc.server import serve
from cinema_grpc.settings import ConfigurationError, Settings
from cinema_grpc.storage.database import database_url, migrate, open_database
from cinema_grpc.storage.unit_of_work import SqlUnitOfWork
from cinema_grpc.workers import serve_workers


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    if args.port is not None:
        settings.grpc_port = args.port
    if args.host is not None:
        settings.grpc_host = args.host
    if args.workers > 1:
        try:
            return serve_workers(settings, args.workers)
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
        console = ConsoleConfig(args.console_host, args.console_port) if args.console else None
        asyncio.run(serve(settings, gateway, console))
    except ConfigurationError as exc:
        print(f"cinema-grpc: refusing to start: {exc}", file=sys.stderr)
        return 2
    except GatewayError as exc:
        print(f"cinema-grpc: {exc}", file=sys.stderr)
        return 1
    return 0


def _console(settings: Settings, args: argparse.Namespace) -> int:
    asyncio.run(run_console(args.target, ConsoleConfig(args.host, args.port), args.grpc_ca))
    return 0


def _gateway_build(settings: Settings, args: argparse.Namespace) -> int:
    try:
        binary = build_gateway(args.out, update_openapi=not args.no_openapi_copy)
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


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    url, embedded = database_url(settings)
    try:
        migrate(url)
    finally:
        if embedded is not None:
            embedded.stop()
    print("database is at the newest migration")
    return 0


def _seed_demo(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> dict[str, int]:
        database = await asyncio.to_thread(open_database, settings)
        try:
            return await seed_demo(lambda: SqlUnitOfWork(database.sessions), SystemClock(), days=args.days)
        finally:
            await database.close()

    print(json.dumps(asyncio.run(run())))
    return 0


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise SystemExit("cinema-grpc: no terminal to ask for the password; use --password-stdin")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Password (again): "):
        raise SystemExit("cinema-grpc: the passwords differ")
    return first


def _create_admin(settings: Settings, args: argparse.Namespace) -> int:
    password = _read_password(args)

    async def run() -> User:
        database = await asyncio.to_thread(open_database, settings)
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
    print(json.dumps({"user_id": str(user.id), "email": user.email, "roles": sorted(r.name for r in user.roles)}))
    return 0


def _audit_verify(settings: Settings, args: argparse.Namespace) -> int:
    async def run() -> AuditVerdict:
        database = await asyncio.to_thread(open_database, settings)
        try:
            return await verify_audit_trail(SqlUnitOfWork(database.sessions))
        finally:
            await database.close()

    verdict = asyncio.run(run())
    if verdict.intact:
        print(f"audit trail intact: {verdict.entries_checked} entries checked")
        return 0
    print(
        f"audit trail BROKEN at entry {verdict.first_broken_sequence} "
        f"({verdict.entries_checked} entries checked): its hash does not match its content or its predecessor",
        file=sys.stderr,
    )
    return 1


def _ticket_key_new(settings: Settings, args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cinema-grpc",
        description="Cinema selling backend over gRPC. Configured by environment variables (see README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_cmd = commands.add_parser("serve", help="run the gRPC server until SIGTERM/SIGINT")
    serve_cmd.add_argument("--host", help="listen address (default CINEMA_GRPC_HOST or 127.0.0.1)")
    serve_cmd.add_argument(
        "--port", type=int, help="listen port, 0 for any free one (default CINEMA_GRPC_PORT or 50051)"
    )
    serve_cmd.add_argument(
        "--gateway",
        action="store_true",
        help="also run the REST/JSON gateway (grpc-gateway) in front of the gRPC port; built first if needed",
    )
    serve_cmd.add_argument(
        "--gateway-host", metavar="HOST", help="gateway listen address (default 127.0.0.1; needs --gateway)"
    )
    serve_cmd.add_argument(
        "--gateway-port", type=_port, metavar="PORT", help="gateway listen port (default 8080; needs --gateway)"
    )
    serve_cmd.add_argument(
        "--workers",
        type=_workers,
        default=1,
        metavar="N",
        help="server processes sharing the port (SO_REUSEPORT), for machines with free cores (default 1)",
    )
    serve_cmd.add_argument(
        "--console", action="store_true", help="also serve the staff web console, calling this server over gRPC"
    )
    serve_cmd.add_argument(
        "--console-host", default=DEFAULT_HOST, metavar="HOST", help=f"console listen address (default {DEFAULT_HOST})"
    )
    serve_cmd.add_argument(
        "--console-port",
        type=_port,
        default=DEFAULT_PORT,
        metavar="PORT",
        help=f"console port (default {DEFAULT_PORT})",
    )
    serve_cmd.set_defaults(run=_serve)
    console_cmd = commands.add_parser("console", help="serve the staff web console against a running gRPC server")
    console_cmd.add_argument(
        "--target", default="127.0.0.1:50051", metavar="HOST:PORT", help="the gRPC server (default 127.0.0.1:50051)"
    )
    console_cmd.add_argument("--host", default=DEFAULT_HOST, help=f"listen address (default {DEFAULT_HOST})")
    console_cmd.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"listen port, 0 for any free one (default {DEFAULT_PORT})"
    )
    console_cmd.add_argument(
        "--grpc-ca", type=Path, metavar="PEM", help="the server's gRPC port uses TLS: trust this certificate"
    )
    console_cmd.set_defaults(run=_console)
    commands.add_parser("migrate", help="bring the database schema to the newest migration").set_defaults(run=_migrate)
    seed = commands.add_parser("seed-demo", help="create a demo cinema, halls, movies and a week of showtimes")
    seed.add_argument("--days", type=int, default=7, choices=range(1, 31), metavar="1..30", help="days of showtimes")
    seed.set_defaults(run=_seed_demo)
    admin = commands.add_parser("create-admin", help="create an admin account, or make an existing account admin")
    admin.add_argument("--email", required=True)
    admin.add_argument("--name", default="Administrator", help="display name of a new account")
    admin.add_argument(
        "--password-stdin", action="store_true", help="read the password from the first line of stdin instead of asking"
    )
    admin.set_defaults(run=_create_admin)
    audit = commands.add_parser("audit", help="payment audit trail tools")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True, metavar="AUDIT_COMMAND")
    audit_commands.add_parser(
        "verify", help="recompute the audit trail's hash chain; exit 1 and name the first broken entry if any"
    ).set_defaults(run=_audit_verify)
    gateway = commands.add_parser("gateway", help="the REST/JSON gateway (grpc-gateway) in front of the gRPC server")
    gateway_commands = gateway.add_subparsers(dest="gateway_command", required=True, metavar="GATEWAY_COMMAND")
    build = gateway_commands.add_parser(
        "build",
        help="build the gateway binary and its OpenAPI documents from protos/ (needs Go and protoc: "
        "scripts/install-gateway-deps.sh)",
    )
    build.add_argument(
        "--out", type=Path, default=BUILD_DIR, metavar="DIR", help=f"output directory (default {BUILD_DIR})"
    )
    build.add_argument(
        "--no-openapi-copy", action="store_true", help="do not refresh the committed documents in generated/openapi"
    )
    build.set_defaults(run=_gateway_build)
    ticket_key = commands.add_parser("ticket-key", help="the Ed25519 key that signs ticket codes")
    ticket_key_commands = ticket_key.add_subparsers(dest="ticket_key_command", required=True, metavar="KEY_COMMAND")
    ticket_key_commands.add_parser(
        "new", help="print a new signing key (for CINEMA_TICKET_SIGNING_KEY) with its public key and key id"
    ).set_defaults(run=_ticket_key_new)
    ticket_key_commands.add_parser(
        "show", help="print the public keys and key ids the server verifies codes with (never the private key)"
    ).set_defaults(run=_ticket_key_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve" and not args.gateway and (args.gateway_host or args.gateway_port is not None):
        parser.error("--gateway-host and --gateway-port need --gateway")
    if args.command == "serve" and args.gateway and args.workers > 1:
        parser.error("--gateway runs with one worker; with --workers, run the gateway in front of the port apart")
    if args.command == "serve" and args.console and args.workers > 1:
        parser.error("--console runs with one worker; with --workers, run 'cinema-grpc console --target' apart")
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"cinema-grpc: bad configuration:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    return int(args.run(settings, args))


if __name__ == "__main__":
    sys.exit(main())
