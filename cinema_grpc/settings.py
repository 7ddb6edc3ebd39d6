"""Configuration: one typed settings object read from environment variables (CINEMA_* and a
few conventional names). Secrets are never logged."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cinema_grpc.domain.admission.model import AdmissionRules
from cinema_grpc.domain.booking.model import BookingRules
from cinema_grpc.domain.identity.throttle import ThrottleRules
from cinema_grpc.domain.payment.use_cases import PaymentRules
from cinema_grpc.domain.retention import RetentionRules
from cinema_grpc.services.call_budget import Budgets


class ConfigurationError(RuntimeError):
    """The configuration or a file it names is unsafe or inconsistent: the server refuses to start."""


LIVE_STRIPE_KEY_PREFIXES = ("sk_live_", "rk_live_")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


# CINEMA_* variables that are not settings but are read by something else on purpose.
NOT_SETTINGS = frozenset({"CINEMA_GATEWAY_PROXY_KEY"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """CINEMA_* variables no setting reads: a misspelt name (CINEMA_TRUSTED_PROXY) would
    otherwise leave its setting at the development default without a word."""
    known = set(NOT_SETTINGS)
    for name, info in Settings.model_fields.items():
        known.add(f"CINEMA_{name.upper()}")
        if isinstance(info.validation_alias, AliasChoices):
            known.update(str(choice) for choice in info.validation_alias.choices)
    return sorted(name for name in environ if name.upper().startswith("CINEMA_") and name.upper() not in known)


def describe_errors(error: ValidationError) -> str:
    """One line per bad setting, named as it is set (CINEMA_...), without the value given: pydantic's
    own rendering repeats each input, and some are secrets."""
    lines = []
    for item in error.errors(include_url=False, include_input=False, include_context=False):
        field = str(item["loc"][0]) if item["loc"] else ""
        alias = Settings.model_fields[field].validation_alias if field in Settings.model_fields else None
        if isinstance(alias, AliasChoices):
            name = str(alias.choices[0])
        elif field in Settings.model_fields:
            name = f"CINEMA_{field.upper()}"
        else:
            name = field or "settings"
        lines.append(f"{name}: {item['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CINEMA_", extra="ignore")

    # "production" turns development conveniences that would be unsafe there into startup
    # errors: the embedded PostgreSQL, the local Stripe test server (any test card pays),
    # Stripe test-mode keys, and token, ticket-code and audit keys generated per data dir
    # (each replica its own).
    env: str = Field(default="development", pattern="^(development|production)$")

    # PostgreSQL 15+ URL (postgresql://user:pass@host:5432/db). Empty: an embedded PostgreSQL
    # is started in data_dir/pgdata.
    database_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "CINEMA_DATABASE_URL")
    )
    data_dir: Path = Path(".cinema-data")
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    # TLS for the gRPC port: PEM certificate (chain) and unencrypted PEM private key, both or
    # neither. Unset: plaintext, meant for loopback development or behind a balancer that
    # terminates TLS on a private network.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # TLS for the REST gateway's port (serve --gateway), both or neither. Unset: plain HTTP.
    gateway_tls_cert_file: Path | None = None
    gateway_tls_key_file: Path | None = None
    # Seconds in-flight RPCs get to finish after SIGTERM before they are cancelled.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_max_overflow: int = Field(default=10, ge=0, le=200)
    # Connections of the plain hold's own pool (HoldSeats in one statement), per process.
    db_hold_pool_size: int = Field(default=8, ge=1, le=200)
    # Most plain holds one of those connections writes in one transaction when holds queue for
    # a connection (1: every hold its own transaction).
    db_hold_batch_size: int = Field(default=16, ge=1, le=100)
    # Longest wait for a free database connection before a request is refused as CONTENTION.
    db_pool_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    # Server-side cap on one statement and on waiting for a row lock, in milliseconds.
    db_statement_timeout_ms: int = Field(default=15000, ge=100)
    db_lock_timeout_ms: int = Field(default=3000, ge=10)
    # Largest request or response message the server accepts, in bytes.
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # Longest any unary RPC may run on the server, whatever deadline the client sent (or none):
    # then it ends with DEADLINE_EXCEEDED / SERVER_TIMEOUT.
    rpc_timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    # Longest life of a seat-availability stream; then it ends with UNAVAILABLE /
    # STREAM_LIFETIME_REACHED and the client reconnects with since_version.
    stream_max_seconds: float = Field(default=3600.0, gt=0)
    # Unary RPCs one replica runs at once; more are refused with RESOURCE_EXHAUSTED / SERVER_BUSY.
    # Streams do not count here: they have the budgets below, so they never crowd out unary
    # calls. grpc.health.v1 Health/Check is never refused.
    max_concurrent_rpcs: int = Field(default=1000, ge=1)
    # Streams (seat availability, health Watch, reflection) one replica keeps open at once, from
    # one client address, and for one signed-in caller; more are refused with
    # RESOURCE_EXHAUSTED / STREAM_LIMIT_REACHED (scope server, address or caller) and RetryInfo.
    max_streams: int = Field(default=4000, ge=1)
    max_streams_per_address: int = Field(default=100, ge=1)
    max_streams_per_caller: int = Field(default=20, ge=1)
    # A client connection with no RPC for this long is closed (it reconnects when needed).
    connection_idle_seconds: float = Field(default=900.0, gt=0)
    # Key that signs access and refresh tokens (HS256, at least 32 characters). Every replica
    # needs the same one. Empty: a development key is generated once in data_dir.
    token_signing_key: SecretStr | None = None
    # Ed25519 key that signs ticket codes: base64 of the 32-byte private key (`cinema-grpc
    # ticket-key new` makes one). Every replica needs the same one. Empty: a key is generated
    # once in data_dir/ticket-signing-key (mode 0600).
    ticket_signing_key: SecretStr | None = None
    # Public keys (base64, comma-separated) of earlier signing keys: the codes they signed
    # still admit after a rotation. `cinema-grpc ticket-key show` prints the current one.
    ticket_retired_public_keys: str = ""
    # Doors of a showtime open this many minutes before its start; earlier scans are TOO_EARLY.
    admission_window_minutes: int = Field(default=60, ge=0, le=24 * 60)
    # Key of the audit chain (HMAC-SHA256, at least 32 characters), held outside the database;
    # every replica and `audit verify` need the same one. Empty: one is generated once in
    # data_dir/audit-chain-key (mode 0600).
    audit_key: SecretStr | None = None
    # How often the audit trail's head is signed into data_dir/audit-checkpoint.json and the log.
    audit_checkpoint_seconds: float = Field(default=60.0, gt=0, le=86_400)
    # Seconds a replica trusts its cached check that a session is still signed in.
    session_cache_seconds: float = Field(default=5.0, ge=0, le=300)
    # Seconds a replica answers GetShowtime from memory (0: always from the database).
    showtime_cache_seconds: float = Field(default=1.0, ge=0, le=300)
    # Proxies (comma-separated addresses or CIDRs, e.g. "10.0.0.0/8, 127.0.0.1") whose
    # X-Forwarded-For names the client for throttling. Others' X-Forwarded-For is ignored.
    trusted_proxies: str = ""
    # Sign-in throttle: failed sign-ins of one account from one address before each further
    # attempt waits (first_delay, doubling up to max_delay); and from one address over all
    # accounts before accounts never signed in from there wait too. Only failures count.
    login_free_failures: int = Field(default=5, ge=1, le=1000)
    login_address_free_failures: int = Field(default=50, ge=1, le=100_000)
    login_first_delay_seconds: float = Field(default=30.0, gt=0, le=3600)
    login_max_delay_seconds: float = Field(default=900.0, gt=0, le=86_400)
    login_failure_memory_hours: float = Field(default=24.0, gt=0, le=24 * 365)
    # Sign-in records untouched this long are deleted by an hourly job.
    login_record_retention_days: float = Field(default=30.0, gt=0, le=3650)
    # Accounts one address may register per window.
    registrations_per_address: int = Field(default=20, ge=1, le=1_000_000)
    registration_window_minutes: float = Field(default=60.0, gt=0, le=7 * 24 * 60)
    # Threads that hash passwords (Argon2id, 64 MiB each), and how many hashes may run or wait at
    # once before more are refused with RESOURCE_EXHAUSTED / PASSWORD_HASHING_BUSY.
    password_hash_threads: int = Field(default=2, ge=1, le=64)
    # Argon2id cost of new password hashes (existing hashes keep theirs): memory in KiB, passes.
    password_hash_memory_kib: int = Field(default=65536, ge=1024, le=4 * 1024 * 1024)
    password_hash_iterations: int = Field(default=3, ge=1, le=100)
    password_hash_max_pending: int = Field(default=64, ge=1, le=10_000)
    # Threads that make calls to Stripe (kept apart from password hashing).
    stripe_threads: int = Field(default=8, ge=1, le=256)
    # Redis URL (redis://host:6379/0). Set: seat availability events cross replicas through
    # Redis pub/sub. Empty: they cross the processes and replicas sharing the database through
    # PostgreSQL LISTEN/NOTIFY, the changes read from the event log.
    redis_url: SecretStr | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL", "CINEMA_REDIS_URL"))
    hold_ttl_seconds: int = Field(default=600, ge=10, le=3600)
    max_hold_extensions: int = Field(default=2, ge=0, le=10)
    max_seats_per_hold: int = Field(default=10, ge=1, le=100)
    max_active_holds_per_customer: int = Field(default=3, ge=1, le=100)
    customer_cancel_cutoff_minutes: int = Field(default=120, ge=0)
    # Online sales (customers' holds, extensions, card payments) close this many minutes before
    # a showtime starts; the box office sells until the start.
    online_sales_close_minutes: int = Field(default=0, ge=0, le=7 * 24 * 60)
    # A customer may not hold a seat again for this long after their hold of it ended.
    rehold_cooldown_seconds: int = Field(default=300, ge=0, le=24 * 3600)
    # Holds one customer may start per window (across showtimes).
    max_holds_per_customer_per_window: int = Field(default=20, ge=1, le=10_000)
    hold_rate_window_seconds: int = Field(default=3600, ge=1, le=7 * 24 * 3600)
    # Seats one customer may have held and bought together for one showtime.
    max_seats_per_customer_per_showtime: int = Field(default=10, ge=1, le=1000)
    # Retention: ended holds (released or expired, with no payment) and their seat claims, and
    # idempotency records of requests, are deleted once this old (hourly job).
    ended_hold_retention_days: int = Field(default=30, ge=1, le=3650)
    request_log_retention_days: int = Field(default=7, ge=1, le=3650)
    # How often the background job releases expired holds (every replica runs it; one at a time sweeps).
    sweep_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    # Seat events a watcher may have waiting before it is sent a fresh seat map instead.
    watcher_buffer: int = Field(default=256, ge=1, le=100_000)
    # How long seat events are kept for watchers that reconnect with a version.
    event_retention_minutes: int = Field(default=60, ge=1)
    # Stripe secret key (sk_live_... / sk_test_...). Empty: a local Stripe-compatible test
    # server (localstripe) is started next to the server, so payments work offline.
    stripe_secret_key: SecretStr | None = None
    # Signing secret of the webhook endpoint (whsec_...); required with a Stripe key.
    stripe_webhook_secret: SecretStr | None = None
    # Stripe API base URL; empty means Stripe's own.
    stripe_api_base: str = ""
    stripe_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    # Where Stripe delivers webhook events: http://HOST:PORT/stripe/webhook. Port 0: any free one.
    webhook_host: str = "127.0.0.1"
    webhook_port: int = Field(default=8081, ge=0, le=65535)
    # A hold whose payment is in flight is kept at most this long after the payment started.
    payment_deadline_minutes: int = Field(default=30, ge=1, le=24 * 60)
    # How often unsettled payments and pending refunds are reconciled with Stripe.
    reconcile_interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Payments still INITIALIZED this long after they started are asked about at Stripe.
    reconcile_after_seconds: float = Field(default=60.0, ge=0)
    # After Stripe failed for a passing reason (no answer, 409, 429, 5xx), a refund or a
    # payment check is tried again after this long, doubling each time up to the maximum.
    stripe_retry_base_seconds: float = Field(default=30.0, gt=0, le=3600)
    stripe_retry_max_seconds: float = Field(default=3600.0, gt=0, le=86400)
    # A refund that failed this many times in a row is given up (FAILED) for staff to settle.
    refund_max_attempts: int = Field(default=8, ge=1, le=100)
    # SyncPayment calls one caller may make per minute (refilled evenly; more: RESOURCE_EXHAUSTED
    # / SYNC_RATE_LIMITED with RetryInfo), and how long one Stripe retrieve of a payment is reused.
    sync_payment_per_minute: int = Field(default=30, ge=1, le=10_000)
    sync_payment_cache_seconds: float = Field(default=3.0, ge=0, le=300)
    # Prometheus metrics at http://HOST:PORT/metrics. Port 0: any free one (the log says which).
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    # How often the database is probed; while it does not answer, health reports NOT_SERVING.
    health_probe_interval_seconds: float = Field(default=2.0, gt=0, le=300)
    # How often the gauges of active holds and payments by state are refreshed.
    gauge_interval_seconds: float = Field(default=15.0, gt=0, le=3600)
    log_level: str = "INFO"
    # "json" for one JSON object per line (production), "console" for people.
    log_format: str = Field(default="json", pattern="^(json|console)$")

    @field_validator(
        "database_url",
        "redis_url",
        "token_signing_key",
        "ticket_signing_key",
        "audit_key",
        "stripe_secret_key",
        "stripe_webhook_secret",
        "tls_cert_file",
        "tls_key_file",
        "gateway_tls_cert_file",
        "gateway_tls_key_file",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("token_signing_key", "audit_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("the key must be at least 32 characters")
        return value

    @model_validator(mode="after")
    def _tls_files_in_pairs(self) -> Settings:
        for cert, key, name in (
            (self.tls_cert_file, self.tls_key_file, "CINEMA_TLS"),
            (self.gateway_tls_cert_file, self.gateway_tls_key_file, "CINEMA_GATEWAY_TLS"),
        ):
            if (cert is None) != (key is None):
                raise ValueError(f"{name}_CERT_FILE and {name}_KEY_FILE go together: set both or neither")
        return self

    @property
    def test_payments(self) -> bool:
        """Whether payments are not real money: no Stripe key (the local test server) or a
        Stripe test-mode key, with which test cards pay."""
        key = self.stripe_secret_key
        return key is None or not key.get_secret_value().startswith(LIVE_STRIPE_KEY_PREFIXES)

    def check_production(self) -> None:
        """With CINEMA_ENV=production, raises ConfigurationError naming every setting that is
        missing or only fit for development."""
        if self.env != "production":
            return
        problems = []
        if self.database_url is None:
            problems.append(
                "DATABASE_URL is unset: the embedded PostgreSQL in the data dir is for development only, and "
                "replicas that each start their own would each sell every seat"
            )
        if self.stripe_secret_key is None:
            problems.append(
                "CINEMA_STRIPE_SECRET_KEY is unset: the local Stripe test server, which accepts any test card, "
                "is for development only; set a live key (sk_live_... or rk_live_...)"
            )
        elif self.test_payments:
            problems.append(
                "CINEMA_STRIPE_SECRET_KEY is not a live key (sk_live_... or rk_live_...): with a test-mode key "
                "test cards pay for real tickets"
            )
        if self.stripe_webhook_secret is None:
            problems.append("CINEMA_STRIPE_WEBHOOK_SECRET is unset: set the signing secret of the Stripe webhook")
        if self.stripe_api_base and not self.stripe_api_base.lower().startswith("https://"):
            problems.append(
                "CINEMA_STRIPE_API_BASE is not an https:// URL: the live Stripe key would cross the network in clear "
                "(unset it to call Stripe itself)"
            )
        # A key generated in one replica's data dir is known to that replica only: the others
        # reject its tokens, doors checked by another replica answer its tickets FORGED, and
        # the audit chain they all append to is keyed by several keys, so it never verifies.
        if self.token_signing_key is None:
            problems.append(
                "CINEMA_TOKEN_SIGNING_KEY is unset: every replica must sign and check tokens with the same key "
                "(32+ random characters, e.g. from `openssl rand -base64 48`), not one generated in its data dir"
            )
        if self.ticket_signing_key is None:
            problems.append(
                "CINEMA_TICKET_SIGNING_KEY is unset: every replica must sign ticket codes with the same key "
                "(`cinema-grpc ticket-key new`), not one generated in its data dir"
            )
        if self.audit_key is None:
            problems.append(
                "CINEMA_AUDIT_KEY is unset: every replica and `audit verify` must key the one audit chain with the "
                "same key (32+ random characters), not one generated in its data dir"
            )
        if problems:
            raise ConfigurationError("CINEMA_ENV=production, but " + "; ".join(problems))

    def call_budgets(self) -> Budgets:
        return Budgets(
            unary_calls=self.max_concurrent_rpcs,
            streams=self.max_streams,
            streams_per_address=self.max_streams_per_address,
            streams_per_caller=self.max_streams_per_caller,
        )

    # Public keys, so a bad one may be shown in the error; the private key is checked when the
    # server starts, without showing it.
    @field_validator("ticket_retired_public_keys")
    @classmethod
    def _retired_ticket_keys(cls, value: str) -> str:
        for item in value.split(","):
            if not item.strip():
                continue
            try:
                raw = base64.b64decode(item.strip(), validate=True)
            except ValueError as exc:
                raise ValueError(f"a retired ticket public key is not base64: {item.strip()!r}") from exc
            if len(raw) != 32:
                raise ValueError(f"a retired ticket public key must be 32 bytes (Ed25519): {item.strip()!r}")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: str) -> str:
        for item in value.split(","):
            if item.strip():
                try:
                    ipaddress.ip_network(item.strip(), strict=False)
                except ValueError as exc:
                    raise ValueError(f"not an address or CIDR: {item.strip()!r}") from exc
        return value

    def trusted_proxy_networks(self) -> tuple[IPNetwork, ...]:
        items = [item.strip() for item in self.trusted_proxies.split(",")]
        return tuple(ipaddress.ip_network(item, strict=False) for item in items if item)

    def throttle_rules(self) -> ThrottleRules:
        return ThrottleRules(
            free_failures=self.login_free_failures,
            address_free_failures=self.login_address_free_failures,
            first_delay=timedelta(seconds=self.login_first_delay_seconds),
            max_delay=timedelta(seconds=self.login_max_delay_seconds),
            failure_memory=timedelta(hours=self.login_failure_memory_hours),
            retention=timedelta(days=self.login_record_retention_days),
            registrations_per_address=self.registrations_per_address,
            registration_window=timedelta(minutes=self.registration_window_minutes),
        )

    def booking_rules(self) -> BookingRules:
        return BookingRules(
            hold_ttl=timedelta(seconds=self.hold_ttl_seconds),
            max_extensions=self.max_hold_extensions,
            max_seats_per_hold=self.max_seats_per_hold,
            max_active_holds=self.max_active_holds_per_customer,
            customer_cancel_cutoff=timedelta(minutes=self.customer_cancel_cutoff_minutes),
            online_sales_close=timedelta(minutes=self.online_sales_close_minutes),
            rehold_cooldown=timedelta(seconds=self.rehold_cooldown_seconds),
            max_holds_per_window=self.max_holds_per_customer_per_window,
            hold_rate_window=timedelta(seconds=self.hold_rate_window_seconds),
            max_seats_per_showtime=self.max_seats_per_customer_per_showtime,
        )

    def admission_rules(self) -> AdmissionRules:
        return AdmissionRules(admission_window=timedelta(minutes=self.admission_window_minutes))

    def retention_rules(self) -> RetentionRules:
        return RetentionRules(
            ended_holds=timedelta(days=self.ended_hold_retention_days),
            request_log=timedelta(days=self.request_log_retention_days),
        )

    def payment_rules(self) -> PaymentRules:
        return PaymentRules(
            payment_deadline=timedelta(minutes=self.payment_deadline_minutes),
            reconcile_after=timedelta(seconds=self.reconcile_after_seconds),
            retry_base_delay=timedelta(seconds=self.stripe_retry_base_seconds),
            retry_max_delay=timedelta(seconds=max(self.stripe_retry_max_seconds, self.stripe_retry_base_seconds)),
            refund_max_attempts=self.refund_max_attempts,
            online_sales_close=timedelta(minutes=self.online_sales_close_minutes),
        )
