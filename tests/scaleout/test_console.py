"""The console's workers page (server/console): owner, epoch, lag, last rebalance."""

from __future__ import annotations

import httpx
import pytest
from starlette.applications import Starlette

import chronik
from chronik.scaleout import Leases
from chronik.server.console import console_routes


async def _get(store: object, path: str) -> httpx.Response:
    app = Starlette(routes=console_routes(store))  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        return await client.get(path)


@pytest.mark.postgres
async def test_workers_page_shows_owner_epoch_and_lag_per_partition(pg_url: str) -> None:
    async with await chronik.connect(pg_url) as store:
        leases = Leases(store, "projection:<b>pg</b>:v1", 2, member="<i>m1</i>", ttl=30)
        await leases.join()
        assert await leases.acquire(1) == 1
        await store.append("s-1", [chronik.NewEvent("E", {})])
        page = await _get(store, "/console/workers")
        assert page.status_code == 200
        html = page.text
        assert "&lt;i&gt;m1&lt;/i&gt;" in html and "<i>m1</i>" not in html  # escaped
        assert "projection:&lt;b&gt;pg&lt;/b&gt;:v1" in html
        assert "0 of 2" in html and "1 of 2" in html and "free" in html
        assert "Last rebalance" in html and "never" not in html


async def test_workers_page_on_a_store_without_leases() -> None:
    async with await chronik.connect("memory://") as store:
        page = await _get(store, "/console/workers")
        assert page.status_code == 200
        assert "keeps no worker leases" in page.text
