"""A local Stripe-compatible test server (the localstripe package) for running without a
Stripe account: the default when no Stripe key is configured, and in tests."""

from __future__ import annotations

import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

API_KEY = "sk_test_local"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalStripe:
    port: int = field(default_factory=free_port)
    webhook_secret: str = field(default_factory=lambda: f"whsec_{secrets.token_hex(16)}")
    _process: subprocess.Popen[bytes] | None = None

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, log: Path | None = None) -> LocalStripe:
        script = Path(sys.executable).with_name("localstripe")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "localstripe"]
        out = log.open("ab") if log else subprocess.DEVNULL
        self._process = subprocess.Popen([*command, "--port", str(self.port), "--from-scratch"], stdout=out, stderr=out)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.api_base}/v1/balance", timeout=1)
            except urllib.error.HTTPError:
                return self  # 401 without a key: it is up
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the local Stripe test server did not start")

    def deliver_webhooks_to(self, url: str) -> None:
        data = urllib.parse.urlencode({"url": url, "secret": self.webhook_secret}).encode()
        request = urllib.request.Request(f"{self.api_base}/_config/webhooks/cinema", data=data, method="POST")
        urllib.request.urlopen(request, timeout=5)

    def flush(self) -> None:
        request = urllib.request.Request(f"{self.api_base}/_config/data", method="DELETE")
        urllib.request.urlopen(request, timeout=5)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
            self._process = None
