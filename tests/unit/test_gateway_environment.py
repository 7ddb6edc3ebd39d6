"""The gateway faces the internet: it is started without the server's secrets in its environment."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cinema_grpc.gateway import PROXY_KEY_VARIABLE, GatewayError, GatewayProcess

SECRETS = {
    "DATABASE_URL": "postgresql://cinema:db-password@db/cinema",
    "REDIS_URL": "redis://:redis-password@cache:6379/0",
    "CINEMA_STRIPE_SECRET_KEY": "sk_live_stripe",
    "CINEMA_STRIPE_WEBHOOK_SECRET": "whsec_webhook",
    "CINEMA_TOKEN_SIGNING_KEY": "t" * 40,
    "CINEMA_TICKET_SIGNING_KEY": "ticket-key",
    "CINEMA_AUDIT_KEY": "a" * 40,
}


def test_the_gateway_process_gets_the_proxy_key_but_none_of_the_servers_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dump = tmp_path / "environment"
    binary = tmp_path / "gateway"
    binary.write_text(f"#!/bin/sh\nenv > {dump}\nexit 3\n")
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LANG", "C.UTF-8")
    with pytest.raises(GatewayError, match="exited with status 3"):
        GatewayProcess(binary).start("127.0.0.1:1", "127.0.0.1", 0, None, proxy_key="per-process-key")
    seen = dict(line.split("=", 1) for line in dump.read_text().splitlines() if "=" in line)
    assert seen[PROXY_KEY_VARIABLE] == "per-process-key"
    assert seen["LANG"] == "C.UTF-8"
    assert not set(SECRETS) & set(seen)
    assert not any(value in dump.read_text() for value in SECRETS.values())
