"""The seed's loyalty and transfer scenarios show their pending state in a real browser.

``examples/pending_web.py`` runs as users run it (its own process, ``--no-workers``); the
projection and the saga run in two other processes started by the test only after the page
shows "pending", so the pending state is seen for sure and then ends by itself, pushed to
the page with no reload.

``CHRONIK_UPDATE_SCREENSHOTS=1`` also writes the pending page to docs/images/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import GuardedPage
from tests.server.serving import free_port

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).parent.parent.parent
SCREENSHOT = ROOT / "docs" / "images" / "pending-demo.png"


def _start(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is None:
        return ""
    with proc.stdout:
        return proc.stdout.read().decode(errors="replace")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The example's server on a fresh SQLite file: (base URL, store URL)."""
    url = f"sqlite:///{tmp_path}/pending.db"
    port = free_port()
    proc = _start(
        [sys.executable, "examples/pending_web.py", "--store", url, "--port", str(port),
         "--no-workers"]
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{base}/demo", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"examples/pending_web.py did not start:\n{_stop(proc)}")
        time.sleep(0.1)
    try:
        yield base, url
    finally:
        _stop(proc)


def _worker(url: str, *args: str) -> subprocess.Popen[bytes]:
    return _start([sys.executable, "-m", "chronik", "--store", url, *args])


def test_points_and_transfer_pending_then_pushed(
    demo: tuple[str, str], loopback_page: GuardedPage, tmp_path: Path
) -> None:
    base, url = demo
    page = loopback_page.page
    page.goto(f"{base}/demo")
    points = page.locator("#points")
    assert points.inner_text() == "0"

    # loyalty: the order is written, no projection runs anywhere: "points updating…"
    page.click("#order")
    page.wait_for_selector("#points[data-chronik-state='pending']")
    assert points.inner_text() == "points updating…"
    # transfer: requested, no saga runs: "pending"
    status = page.locator("#transfer-status")
    page.click("#transfer-bob")
    page.wait_for_selector("#transfer-status[data-state='pending']")
    assert "pending" in status.inner_text()
    page.screenshot(path=str(tmp_path / "pending.png"), full_page=True)
    if os.environ.get("CHRONIK_UPDATE_SCREENSHOTS") == "1":
        page.screenshot(path=str(SCREENSHOT), full_page=True)
    time.sleep(0.5)  # nothing applies it: still pending (a page that flips early fails here)
    assert points.get_attribute("data-chronik-state") == "pending"
    assert status.get_attribute("data-state") == "pending"

    # the workers start in two other processes; the page learns it over SSE, no reload
    page.evaluate("window.__same_page = true")
    workers = [
        _worker(url, "projections", "run", "examples.loyalty:projections"),
        _worker(url, "sagas", "run", "examples.funds_transfer:workers"),
    ]
    try:
        page.wait_for_selector("#points[data-chronik-state='applied']", timeout=30_000)
        assert points.inner_text() == "425"  # €42.50 at 10 points a euro
        page.wait_for_selector("#transfer-status[data-state='completed']", timeout=30_000)
        assert page.locator("#balances").inner_text() == "alice €70, bob €30, carol €0"

        # a transfer to the closed account: pending, then refunded by compensation
        page.click("#transfer-carol")
        page.wait_for_selector("#transfer-status[data-state='refunded']", timeout=30_000)
        assert page.locator("#balances").inner_text() == "alice €70, bob €30, carol €0"
        assert page.evaluate("window.__same_page") is True  # never reloaded
    finally:
        logs = [_stop(w) for w in workers]
    page.screenshot(path=str(tmp_path / "applied.png"), full_page=True)
    assert all("Traceback" not in log for log in logs), "\n".join(logs)
