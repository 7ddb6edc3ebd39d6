"""A local Stripe-compatible test server (the localstripe package) for running without a
Stripe account: the default when no Stripe key is configured outside production, and in tests.

It accepts any key and any test card, so it is a free-ticket machine for whoever can reach it:
it listens on 127.0.0.1 only, keeps its state in a file of its own (mode 0600, in the data dir),
and ends when the process that started it ends, even one killed with SIGKILL (it watches a
pipe from that process, and the process id).

``python -m cinema_grpc.adapters.local_stripe --fd N --state FILE`` is the child process: it
serves on the listening socket N that its parent bound, so the address is known, and taken,
before the child starts.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import pickle
import secrets
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

API_KEY = "sk_test_local"
HOST = "127.0.0.1"
# Where a running server tells other commands of the same data dir (``cinema-grpc dev pay``)
# the address of its local test server.
ADDRESS_FILE = "local-stripe.json"


@dataclass
class LocalStripe:
    """The test server as a child process; ``state_file`` keeps its payments across restarts."""

    state_file: Path
    port: int = 0  # 0: any free port (the actual one once started)
    webhook_secret: str = field(default_factory=lambda: f"whsec_{secrets.token_hex(16)}")
    _process: subprocess.Popen[bytes] | None = None
    _address_file: Path | None = None

    @property
    def api_base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self, log: Path | None = None) -> LocalStripe:
        """Binds the port here, then starts the child on that socket, and waits until it answers.

        Raises RuntimeError if the port is taken or the child does not answer within 20 s.
        """
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                listener.bind((HOST, self.port))
            except OSError as exc:
                raise RuntimeError(f"the local Stripe test server cannot listen on {HOST}:{self.port}: {exc}") from exc
            listener.listen(128)
            self.port = int(listener.getsockname()[1])
            fd = listener.fileno()
            command = [sys.executable, "-m", __name__, "--fd", str(fd), "--state", str(self.state_file)]
            with log.open("ab") if log else open(os.devnull, "wb") as out:
                # The child ends when this pipe reaches end of file: when this process exits,
                # however it exits. Nothing is ever written to it.
                self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=out, stderr=out, pass_fds=(fd,))
        finally:
            listener.close()  # the child has its own copy
        deadline = time.monotonic() + 20
        try:
            while time.monotonic() < deadline and self._process.poll() is None:
                try:
                    urllib.request.urlopen(f"{self.api_base}/v1/balance", timeout=1)
                except urllib.error.HTTPError:
                    return self  # 401 without a key: it is up (nothing else can hold its socket)
                except (OSError, http.client.HTTPException):
                    time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        self.stop()
        raise RuntimeError(f"the local Stripe test server did not start (state file {self.state_file})")

    def deliver_webhooks_to(self, url: str) -> None:
        data = urllib.parse.urlencode({"url": url, "secret": self.webhook_secret}).encode()
        request = urllib.request.Request(f"{self.api_base}/_config/webhooks/cinema", data=data, method="POST")
        urllib.request.urlopen(request, timeout=5)

    def announce(self, data_dir: Path) -> None:
        """Records the address in the data dir for ``cinema-grpc dev pay`` (removed by ``stop``)
        and tells the person at the terminal, whatever the log format."""
        data_dir.mkdir(parents=True, exist_ok=True)
        path = data_dir / ADDRESS_FILE
        path.write_text(json.dumps({"api_base": self.api_base}))
        self._address_file = path
        print(
            f"local Stripe test server: {self.api_base} (pay a card payment with: cinema-grpc dev pay <payment id>)",
            file=sys.stderr,
            flush=True,
        )

    def flush(self) -> None:
        request = urllib.request.Request(f"{self.api_base}/_config/data", method="DELETE")
        urllib.request.urlopen(request, timeout=5)

    def stop(self) -> None:
        if self._address_file is not None:
            self._address_file.unlink(missing_ok=True)
            self._address_file = None
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdin is not None:
            process.stdin.close()


def recorded_api_base(data_dir: Path) -> str | None:
    """The address of the local test server a running ``serve`` of this data dir started."""
    try:
        return str(json.loads((data_dir / ADDRESS_FILE).read_text())["api_base"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class CardConfirmationFailed(RuntimeError):
    """The local test server refused to confirm the PaymentIntent."""


def confirm_intent(api_base: str, intent_id: str, payment_method: str) -> str:
    """Plays the customer's card form, as Stripe.js would: attaches a test card to the
    PaymentIntent and confirms it. Returns the intent's status (a declined card: its error)."""
    auth = "Basic " + base64.b64encode(f"{API_KEY}:".encode()).decode()

    def post(path: str, fields: dict[str, str]) -> dict[str, object]:
        request = urllib.request.Request(
            f"{api_base}{path}",
            data=urllib.parse.urlencode(fields).encode(),
            headers={"Authorization": auth},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            return dict(json.load(answer))

    intent = urllib.parse.quote(intent_id, safe="")
    try:
        post(f"/v1/payment_intents/{intent}", {"payment_method": payment_method})
        return str(post(f"/v1/payment_intents/{intent}/confirm", {})["status"])
    except urllib.error.HTTPError as exc:
        try:
            error = json.load(exc.fp)["error"]
        except (ValueError, KeyError, TypeError):
            raise CardConfirmationFailed(f"the test server answered HTTP {exc.code}") from exc
        if exc.code == 402 or error.get("type") == "card_error":  # 402: the card was declined
            return f"declined: {error.get('message', 'the card was declined')}"
        raise CardConfirmationFailed(str(error.get("message", f"HTTP {exc.code}"))) from exc
    except OSError as exc:
        raise CardConfirmationFailed(f"the local Stripe test server at {api_base} does not answer ({exc})") from exc


def _write_private(path: Path, data: bytes) -> None:
    """Replaces ``path`` with ``data``, readable by this user only."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(data)
    os.replace(temporary, path)


def _use_state_file(path: Path) -> None:
    """Points localstripe's store at ``path`` instead of the /tmp/localstripe.pickle that every
    instance on the host would share."""
    from localstripe import resources  # noqa: PLC0415 - the child process only

    from cinema_grpc.adapters.tokens import check_private_file  # noqa: PLC0415

    def load(store: resources.Store) -> None:
        if path.exists():
            check_private_file(path, "the local Stripe state")
            with path.open("rb") as state:
                saved = pickle.load(state)
            store.clear()
            store.update(saved)

    def dump(store: resources.Store) -> None:
        _write_private(path, pickle.dumps(dict(store), protocol=pickle.HIGHEST_PROTOCOL))

    resources.Store.try_load_from_disk = load
    resources.Store.dump_to_disk = dump


def _exit_with_parent(parent: int) -> None:
    """Ends this process once its parent is gone: stdin (a pipe from the parent) reaches end of
    file, or the parent id changes (the process was re-parented)."""
    while True:
        readable, _, _ = select.select([sys.stdin.buffer], [], [], 1.0)
        if readable and not os.read(sys.stdin.fileno(), 4096):
            os._exit(0)
        if os.getppid() != parent:
            os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cinema_grpc.adapters.local_stripe")
    parser.add_argument("--fd", type=int, required=True, help="a listening socket, inherited")
    parser.add_argument("--state", type=Path, required=True)
    args = parser.parse_args(argv)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    _use_state_file(args.state)
    from aiohttp import web  # noqa: PLC0415
    from localstripe import resources, server  # noqa: PLC0415

    resources.store.try_load_from_disk()
    web.run_app(server.app, sock=socket.socket(fileno=args.fd), print=None)


if __name__ == "__main__":
    main()
