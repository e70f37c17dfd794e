"""Fixtures for the HTTP face: a real server to talk to, and a real browser to drive it.

- ``serve(store_url, app=None, **options)`` starts ``create_app`` on uvicorn, on a free
  127.0.0.1 port in a background thread (the store opens in the server's own event loop),
  and returns its base URL; every server started stops when the test ends.
- ``browser``: Debian's Chromium (``/usr/bin/chromium``, installed by ``make test``) driven
  by Playwright, one per test session. Playwright cannot download a browser of its own
  here. Without Chromium or Playwright the browser tests skip, except with ``CI=true``,
  where they fail.
- ``loopback_page``: a fresh page that refuses, and records, every request to an address
  outside the loopback range (no CDN, no fonts, no telemetry): the test fails on any.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest

from chronik.server import create_app_for_url
from tests.conftest import IN_CI
from tests.server.serving import running

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

CHROMIUM = Path(os.environ.get("CHRONIK_TEST_CHROMIUM", "/usr/bin/chromium"))


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    """``serve(store_url, **create_app_options) -> base URL`` of a running server."""
    with contextlib.ExitStack() as stack:

        def start(store_url: str, **options: Any) -> str:
            return stack.enter_context(running(create_app_for_url(store_url, **options)))

        yield start


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason}; CI=true requires the browser tests (make test installs it)")
    pytest.skip(f"{reason}; run `make test` (it installs Debian's chromium)")


@pytest.fixture(scope="module")  # sync Playwright holds a loop: not past its module
def browser() -> Iterator[Browser]:
    """Headless Chromium for the whole session (launching it costs about a second)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing")
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield launched
        finally:
            launched.close()


def is_loopback(url: str) -> bool:
    """Whether ``url`` names a loopback host (127.0.0.0/8, ::1, localhost)."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GuardedPage:
    """A page whose requests outside loopback are refused and listed in ``escaped``, with
    the browser's own errors (script errors, console errors) in ``errors``."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.escaped: list[str] = []
        self.errors: list[str] = []

        def refuse(route: Route) -> None:
            self.escaped.append(route.request.url)
            route.abort("blockedbyclient")

        page.context.route(lambda url: not is_loopback(url), refuse)
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda msg: (
                self.errors.append(f"console {msg.type}: {msg.text}")
                if msg.type == "error"
                else None
            ),
        )

    def check(self) -> None:
        """Fail on any request that left the machine, or any error the page logged."""
        assert not self.escaped, f"requests outside loopback: {self.escaped}"
        assert not self.errors, "\n".join(self.errors)


@pytest.fixture
def loopback_page(browser: Browser) -> Iterator[GuardedPage]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    guarded = GuardedPage(context.new_page())
    try:
        yield guarded
    finally:
        context.close()
    guarded.check()
