"""`cinema-grpc serve --console` and `cinema-grpc console --target` as separate processes: the
console answers over HTTP and reaches the server through gRPC; both stop cleanly on SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_command_line import BIN, embedded_server_env, wait_until_serving
from tests.ports import free_port

pytestmark = pytest.mark.e2e


def wait_for_console(url: str, process: subprocess.Popen[str], timeout: float = 30) -> httpx.Client:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, "the process exited before its console answered"
        client = httpx.Client(base_url=url, timeout=10)
        try:
            client.get("/login").raise_for_status()
            return client
        except httpx.TransportError:
            client.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def refused_sign_in(client: httpx.Client) -> str:
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text)
    assert token
    data = {"email": "nobody@example.com", "password": "not a password", "csrf_token": token.group(1)}
    return client.post("/login", data=data).text


def test_serve_with_console_and_a_separate_console_reach_the_server_through_grpc(tmp_path: Path) -> None:
    env = embedded_server_env(tmp_path)
    grpc_port, console_port, other_port = int(env["CINEMA_GRPC_PORT"]), free_port(), free_port()
    server = subprocess.Popen(
        [str(BIN / "cinema-grpc"), "serve", "--console", "--console-port", str(console_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_serving(grpc_port, server)
        client = wait_for_console(f"http://127.0.0.1:{console_port}", server)
        assert "INVALID_CREDENTIALS" in refused_sign_in(client)  # the Identity service answered
        client.close()
        console = subprocess.Popen(
            [str(BIN / "cinema-grpc"), "console", "--target", f"127.0.0.1:{grpc_port}", "--port", str(other_port)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            client = wait_for_console(f"http://127.0.0.1:{other_port}", console)
            assert "INVALID_CREDENTIALS" in refused_sign_in(client)
            client.close()
            console.send_signal(signal.SIGTERM)
            assert console.wait(20) == 0
        finally:
            if console.poll() is None:
                console.kill()
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == 0
        assert "Traceback" not in (server.stderr.read() if server.stderr else "")
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
