"""Prometheus metrics: per-RPC counts and latencies, and the selling state of the system."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

RPC_REQUESTS = Counter(
    "cinema_rpc_requests",
    "RPCs served, by method, status code and error reason",
    ["method", "code", "reason"],
    registry=REGISTRY,
)
RPC_REFUSED = Counter(
    "cinema_rpc_refused",
    "Calls refused before they ran because a budget was used up, by kind (unary, stream), "
    "reason (SERVER_BUSY, STREAM_LIMIT_REACHED) and scope (server, address, caller)",
    ["kind", "reason", "scope"],
    registry=REGISTRY,
)
RPC_DURATION = Histogram(
    "cinema_rpc_duration_seconds",
    "Time to serve an RPC (streams: until they end)",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
    registry=REGISTRY,
)
ACTIVE_HOLDS = Gauge("cinema_active_holds", "Holds that are active and not expired", registry=REGISTRY)
PAYMENTS = Gauge("cinema_payments", "Payments by state", ["state"], registry=REGISTRY)
REFUNDS_OPEN = Gauge(
    "cinema_refunds_open",
    "Refunds not yet done: PENDING (Stripe is being asked) and FAILED (Stripe refused or retries ran out: "
    "staff must settle them; alert on any)",
    ["state"],
    registry=REGISTRY,
)
SEATS_RELEASED_BY_EXPIRY = Counter(
    "cinema_seats_released_by_expiry", "Seats of expired holds released by the sweeper", registry=REGISTRY
)
SWEEPER_RUNS = Counter(
    "cinema_sweeper_runs",
    "Runs of the expired-hold sweeper by outcome (swept, skipped, failed)",
    ["outcome"],
    registry=REGISTRY,
)
RECONCILER_RUNS = Counter(
    "cinema_reconciler_runs", "Runs of the payment reconciliation by outcome", ["outcome"], registry=REGISTRY
)
DOOR_SCANS = Counter(
    "cinema_door_scans",
    "Scans recorded at the doors by verdict (ADMITTED, ALREADY_USED, FORGED, ...) and whether they were "
    "made offline and uploaded; a rise of FORGED or offline ALREADY_USED (tickets used twice) is worth a look",
    ["verdict", "offline"],
    registry=REGISTRY,
)
STREAM_WATCHERS = Gauge("cinema_stream_watchers", "Open seat availability streams on this replica", registry=REGISTRY)
TEST_PAYMENT_MODE = Gauge(
    "cinema_test_payment_mode",
    "1 while payments are not real money (the local Stripe test server or a Stripe test-mode key)",
    registry=REGISTRY,
)
DB_POOL_CONNECTIONS = Gauge(
    "cinema_db_pool_connections",
    "Open database connections of this replica by pool (requests: the unit of work's; holds: the plain "
    "holds') and state (in_use, idle); in_use at the pool's size for long means calls queue for a connection",
    ["pool", "state"],
    registry=REGISTRY,
)
DB_POOL_SIZE = Gauge(
    "cinema_db_pool_size", "Connections each pool may open (its size, overflow included)", ["pool"], registry=REGISTRY
)
DB_POOL_WAITING = Gauge(
    "cinema_db_pool_waiting",
    "Plain holds waiting for a connection of the holds' pool (a wait longer than CINEMA_DB_POOL_TIMEOUT_SECONDS "
    "is refused with CONTENTION, to be retried)",
    ["pool"],
    registry=REGISTRY,
)
HOLD_BATCHES = Histogram(
    "cinema_db_hold_batch_size",
    "Plain holds written in one transaction by a connection of the holds' pool (1: a hold alone); "
    "under load several holds that queued for a connection go together (CINEMA_DB_HOLD_BATCH_SIZE)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 100),
    registry=REGISTRY,
)
HOLD_BATCHES_REFUSED = Counter(
    "cinema_db_hold_batches_refused",
    "Batches of plain holds the database refused as a whole (a lock or statement timeout, a deadlock, an "
    "error in one hold): nothing was written and each hold was placed again alone",
    registry=REGISTRY,
)
DATABASE_UP = Gauge("cinema_database_up", "1 while the database answers the health probe", registry=REGISTRY)


def serve_metrics(host: str, port: int) -> int:
    """Starts the /metrics HTTP endpoint in a background thread; returns the bound port."""
    server, _ = start_http_server(port, addr=host, registry=REGISTRY)
    return int(server.server_address[1])
