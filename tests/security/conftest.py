"""The browser fixtures of tests/server (Debian's Chromium through Playwright)."""

from tests.server.conftest import browser, loopback_page, serve

__all__ = ["browser", "loopback_page", "serve"]
