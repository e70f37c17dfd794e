"""``chronik serve`` as a user runs it: a real process on a free port, stopped by SIGINT."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.server.serving import free_port

CHRONIK = [sys.executable, "-m", "chronik"]


def _get(url: str) -> tuple[int, dict[str, object]]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, json.loads(response.read())


def test_serve_answers_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/served.db"
    subprocess.run([*CHRONIK, "--store", store, "init"], check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen(
        [*CHRONIK, "--store", store, "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    live: http.client.HTTPConnection | None = None
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, body = _get(f"http://127.0.0.1:{port}/health")
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "chronik serve did not answer"
                time.sleep(0.1)
        assert status == 200 and body["status"] == "ok"
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/streams/order-1",
            data=json.dumps({"events": [{"type": "Placed", "data": {"total": 3}}]}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 201
            assert json.loads(response.read())["version"] == 0
        # a live client that never leaves must not keep the server from stopping
        live = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        live.request("GET", "/live/events?after=0")
        assert live.getresponse().status == 200
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        if live is not None:
            live.close()
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    events = subprocess.run(
        [*CHRONIK, "--store", store, "--json", "events", "order-1"],
        check=True,
        capture_output=True,
    )
    assert json.loads(events.stdout)[0]["data"] == {"total": 3}


def test_serve_on_a_missing_store_is_one_line_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"
    done = subprocess.run(
        [*CHRONIK, "--store", f"sqlite:///{path}", "serve", "--port", str(free_port())],
        capture_output=True,
        timeout=30,
    )
    assert done.returncode == 3
    assert done.stderr.decode().count("\n") == 1 and b"StoreNotFound" in done.stderr
    assert not path.exists()


def test_a_taken_or_impossible_port_is_a_clear_error(tmp_path: Path) -> None:
    """Red team: a taken port exited 3 (documented as "not found"); --port 99999 crashed
    with an OverflowError."""
    import socket

    cli = [sys.executable, "-m", "chronik", "--store", f"sqlite:///{tmp_path}/p.db"]
    subprocess.run([*cli, "init"], check=True, capture_output=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*cli, "serve", "--port", str(port)], capture_output=True,
                              text=True, timeout=60)  # fmt: skip
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr
    done = subprocess.run([*cli, "serve", "--port", "99999"], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 2 and "0 to 65535" in done.stderr
