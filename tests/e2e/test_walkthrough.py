"""The README walk-through as a new user runs it: `seed-demo`, `serve`, then
examples/walkthrough.sh against it; and what the person at the terminal reads meanwhile."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.test_command_line import BIN, embedded_server_env, wait_until_serving

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "examples" / "walkthrough.sh"


@dataclass(frozen=True)
class Session:
    seed: subprocess.CompletedProcess[str]
    walk: subprocess.CompletedProcess[str]
    readme: subprocess.CompletedProcess[str]
    server_stderr: str
    server_exit: int


def readme_block() -> str:
    """The walk-through's calls as the README shows them."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- walkthrough:begin -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    return "\n".join(line for line in block.splitlines() if not line.startswith("```"))


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """A fresh data dir, demo data, a served server (no Stripe key), the script, then SIGTERM."""
    env = embedded_server_env(tmp_path_factory.mktemp("walkthrough"))
    env.pop("XDG_RUNTIME_DIR", None)  # as in services and containers
    env.update(GRPCURL=str(BIN / "grpcurl"), CINEMA_GRPC=str(BIN / "cinema-grpc"))
    port = int(env["CINEMA_GRPC_PORT"])
    seed = subprocess.run(
        [str(BIN / "cinema-grpc"), "seed-demo", "--days", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    server = subprocess.Popen(
        [str(BIN / "cinema-grpc"), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until_serving(port, server)
        walk, readme = (
            subprocess.run(
                ["bash", "-c", program, "walkthrough", f"127.0.0.1:{port}"],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
                check=False,
            )
            # The README's block as pasted into a shell (a second run: what exists is reused).
            for program in (SCRIPT.read_text(), "set -euo pipefail\n" + readme_block())
        )
        server.send_signal(signal.SIGTERM)
        _, stderr = server.communicate(timeout=30)
        yield Session(seed, walk, readme, stderr, server.returncode)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def test_the_walkthrough_script_runs_green_against_a_freshly_served_demo(session: Session) -> None:
    walk = session.walk
    assert walk.returncode == 0, walk.stdout[-3000:] + walk.stderr[-3000:]
    out = walk.stdout
    assert "== walk-through complete" in out
    assert "Demo Cinema" in out and "Hall 1: 120 seats" in out
    assert "version 0, 20 seats" in out  # a new showtime's seat map, zero shown (-emit-defaults)
    assert "SHOWTIME_OVERLAP" in out
    assert '"state": "PAYMENT_STATE_INITIALIZED"' in out
    assert re.search(r"payment PAYMENT_STATE_SUCCESS, booking [0-9a-f-]{36}", out)
    assert '"state": "HOLD_STATE_RELEASED"' in out and '"end_reason": "customer left the queue"' in out
    assert '"state": "BOOKING_STATE_CANCELLED"' in out and '"cancel_reason": "sound failure"' in out
    assert '"refund_state": "REFUND_STATE_REFUNDED"' in out  # the cash paid back over the counter


def test_the_readme_shows_the_walkthrough_calls_as_the_script_runs_them(session: Session) -> None:
    # Every command line (comments may say more than the script's) is a line of the script...
    shown = [line.strip() for line in readme_block().splitlines() if line.strip() and not line.startswith("#")]
    script = {line.strip() for line in SCRIPT.read_text().splitlines()}
    assert len(shown) > 20
    assert [line for line in shown if line not in script] == []
    # ...and pasted into a shell, they run as they are.
    assert session.readme.returncode == 0, session.readme.stdout[-3000:] + session.readme.stderr[-3000:]
    assert '"cancel_reason": "customer changed plans"' in session.readme.stdout


def test_a_served_session_reads_cleanly_no_scheduler_chatter_nor_runtime_dir_or_fork_warnings(
    session: Session,
) -> None:
    assert session.server_exit == 0
    stderr = session.server_stderr
    for noise in ("XDG_RUNTIME_DIR", "RuntimeDirWarning", "fork_posix", "skipping fork() handlers"):
        assert noise not in stderr and noise not in session.seed.stderr
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    # Only our own lines: one per call, and one per job run or webhook that did something;
    # no library chatter (APScheduler's two lines per job run, alembic, Stripe's per request).
    assert {r.get("logger", "") for r in records if not r.get("logger", "").startswith("cinema_grpc")} == set()
    assert len([r for r in records if r["event"] == "rpc"]) > 20
    assert re.search(r"^local Stripe test server: http://127\.0\.0\.1:\d+ \(pay a card payment with", stderr, re.M)
