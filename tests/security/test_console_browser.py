"""The console's login in a real browser: redirected to the login page, a token typed in,
the HttpOnly cookie set (no script can read it), pages served, sign-out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from chronik import NewEvent
from chronik.security import parse_policy, token_store
from chronik.store import connect
from tests.server.conftest import GuardedPage


def test_console_login_in_a_browser(
    tmp_path: Path, serve: Callable[..., str], loopback_page: GuardedPage
) -> None:
    url = f"sqlite:///{tmp_path / 'console.db'}"

    async def seed() -> str:
        async with await connect(url) as store:
            await store.append("orders-1", [NewEvent("OrderPlaced", {"total": 3})])
            _, token = await token_store(store).create("ops", ["admin"])
            return token

    with ThreadPoolExecutor(1) as pool:  # Playwright's loop holds this thread
        token = pool.submit(asyncio.run, seed()).result()
    base = serve(url, policy=parse_policy({}))
    page = loopback_page.page
    page.goto(base + "/console/streams")
    assert page.url.endswith("/console/login?next=/console/streams")
    page.fill("input[name=token]", "chronik_wrong")
    page.click("button[type=submit]")
    assert "malformed API token" in page.inner_text("p.error")
    page.fill("input[name=token]", token)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/console/streams")
    assert "orders-1" in page.content()
    cookie = next(c for c in page.context.cookies() if c["name"] == "chronik_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # scripts cannot read it
    page.context.clear_cookies()
    page.goto(base + "/console/streams")
    assert "/console/login" in page.url
    # the refused token's page is a 401 (the browser logs it); nothing else may be
    expected = [e for e in loopback_page.errors if "status of 401" in e]
    assert len(expected) == 1, loopback_page.errors
    loopback_page.errors.remove(expected[0])
