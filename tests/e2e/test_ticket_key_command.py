"""`cinema-grpc ticket-key`: a new signing key for a rotation, and the keys a server verifies with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e
BIN = Path(sys.executable).parent


def ticket_key(tmp_path: Path, *args: str, **env: str) -> Any:
    run = subprocess.run(
        [str(BIN / "cinema-grpc"), "ticket-key", *args],
        env={**os.environ, "CINEMA_DATA_DIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(run.stdout)


def test_a_rotation_with_the_command_keeps_the_retired_key_for_verification(tmp_path: Path) -> None:
    old, new = ticket_key(tmp_path, "new"), ticket_key(tmp_path, "new")
    assert old["key_id"] != new["key_id"] and len(new["key_id"]) == 8
    shown = ticket_key(
        tmp_path,
        "show",
        CINEMA_TICKET_SIGNING_KEY=new["private_key"],
        CINEMA_TICKET_RETIRED_PUBLIC_KEYS=old["public_key"],
    )
    assert {(k["key_id"], k["public_key"], k["current"]) for k in shown["keys"]} == {
        (new["key_id"], new["public_key"], True),
        (old["key_id"], old["public_key"], False),
    }
    assert new["private_key"] not in json.dumps(shown)


def test_a_malformed_retired_key_is_a_configuration_error(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(BIN / "cinema-grpc"), "ticket-key", "show"],
        env={**os.environ, "CINEMA_DATA_DIR": str(tmp_path), "CINEMA_TICKET_RETIRED_PUBLIC_KEYS": "not-a-key"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert "bad configuration" in run.stderr and "retired ticket public key" in run.stderr
