"""The operators' endpoints over a real store: projections and lag, dead letters (list,
retry after a fix, skip), sagas, snapshots and check."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import chronik
from chronik.events import RecordedEvent
from chronik.projections import ProjectionRunner
from chronik.server import create_app
from chronik.store.port import Fencing, Tx


class Totals(chronik.Projection):
    name = "totals"
    max_attempts = 1
    retry_backoff = 0.0
    broken = True

    async def setup(self, tx: Tx) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS totals_v1 (stream_id TEXT PRIMARY KEY)")

    async def handle(self, event: RecordedEvent, tx: Tx) -> None:
        if self.broken and event.data.get("bad"):
            raise ValueError("cannot total this one")
        await tx.execute(
            "INSERT INTO totals_v1 (stream_id) VALUES (?) ON CONFLICT DO NOTHING",
            (event.stream_id,),
        )


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[chronik.EventStore]:
    async with await chronik.connect(f"sqlite:///{tmp_path}/ops.db") as s:
        yield s


async def test_dead_letters_listed_retried_after_a_fix_and_skipped(
    store: chronik.EventStore,
) -> None:
    projection = Totals()
    await store.append("order-1", [chronik.NewEvent("Placed", {"bad": True})])
    await store.append("order-2", [chronik.NewEvent("Placed", {})])
    await store.append("order-3", [chronik.NewEvent("Placed", {"bad": True})])
    runner = ProjectionRunner(store, [projection])
    await runner.catch_up()
    web = create_app(store, app=chronik.App(projections=[projection]))
    transport = httpx.ASGITransport(app=web)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        (row,) = (await http.get("/projections")).json()["projections"]
        assert row["name"] == "totals" and row["dead_letters"] == 2 and row["lag_events"] == 0
        assert row["checkpoint"] == str(await store.head_position())

        letters = (await http.get("/dead-letters")).json()
        assert letters["total"] == 2
        assert {d["stream_id"] for d in letters["dead_letters"]} == {"order-1", "order-3"}
        assert "cannot total" in letters["dead_letters"][0]["error"]

        first = letters["dead_letters"][0]["id"]
        assert (await http.delete(f"/dead-letters/{first}")).status_code == 204
        assert (await http.delete(f"/dead-letters/{first}")).status_code == 404

        projection.broken = False  # the fix is deployed
        retried = await http.post("/projections/totals/dead-letters/retry")
        assert retried.json() == {"fixed": 1, "still_failing": 0}
        assert (await http.get("/dead-letters")).json()["total"] == 0
        missing = await http.post("/projections/nope/dead-letters/retry")
        assert missing.status_code == 404
    rows = await store.query("SELECT stream_id FROM totals_v1 ORDER BY stream_id")  # type: ignore[attr-defined]
    assert [r[0] for r in rows] == ["order-2", "order-3"]  # the skipped one was not applied


async def test_without_app_projections_show_their_checkpoints(store: chronik.EventStore) -> None:
    await store.append("order-1", [chronik.NewEvent("Placed", {})])
    await ProjectionRunner(store, [Totals()]).catch_up()
    web = create_app(store)
    transport = httpx.ASGITransport(app=web)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        (row,) = (await http.get("/projections")).json()["projections"]
        assert row["checkpoint_name"] == "totals:v1" and row["version"] == 1
        assert row["lag_events"] is None  # unknown without the projection's filters
        retry = await http.post("/projections/totals/dead-letters/retry")
        assert retry.status_code == 422 and retry.json()["error"]["type"] == "NoApp"
        assert (await http.get("/check")).json()["ok"] is True
        sagas = (await http.get("/sagas")).json()
        assert sagas == {"instances": [], "commands": [], "deadlines": {}}
        assert (await http.get("/snapshots")).json() == {"categories": []}


async def test_sql_only_endpoints_on_memory_say_which_backends_have_it() -> None:
    async with await chronik.connect("memory://") as store:
        transport = httpx.ASGITransport(app=create_app(store))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            answer = await http.get("/sagas")
    assert answer.status_code == 501
    assert answer.json()["error"]["type"] == "MissingCapability"
    assert "sqlite" in answer.json()["error"]["message"]


async def test_pause_and_resume_over_http(store: chronik.EventStore) -> None:
    projection = Totals()
    projection.broken = False
    await store.append("order-1", [chronik.NewEvent("Placed", {})])
    runner = ProjectionRunner(store, [projection])
    await runner.catch_up()
    web = create_app(store)  # no --app needed: the projection is known to the store
    transport = httpx.ASGITransport(app=web)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        r = await http.post("/projections/totals/pause", params={"by": "ops"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["name"] == "totals" and body["paused"] is True and body["paused_by"] == "ops"
        (row,) = (await http.get("/projections")).json()["projections"]
        assert row["paused_at"] == body["paused_at"] and row["paused_by"] == "ops"

        r = await http.post("/projections/nope/pause")
        assert r.status_code == 404 and r.json()["error"]["type"] == "UnknownProjection"
        r = await http.post("/projections/totals/pause", params={"by": "x" * 501})
        assert r.status_code == 400
        r = await http.post("/projections/totals/pause", params={"whom": "x"})
        assert r.status_code == 400  # unknown parameter

        r = await http.post("/projections/totals/resume")
        assert r.json() == {"name": "totals", "paused": False, "paused_at": None,
                            "paused_by": None, "was_paused": True}  # fmt: skip
        (row,) = (await http.get("/projections")).json()["projections"]
        assert row["paused_at"] is None
        r = await http.post("/projections/nope/resume")
        assert r.status_code == 404


async def test_health_says_fenced_and_where_writes_went(store: chronik.EventStore) -> None:
    await store.append("order-1", [chronik.NewEvent("Placed", {})])
    web = create_app(store)
    transport = httpx.ASGITransport(app=web)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/health")).json() == {
            "status": "ok", "head_position": "1", "moved_to": None
        }  # fmt: skip
        fencing = chronik.store.require(store, Fencing)
        await fencing.fence("postgresql://app:secret@db.example/new")
        health = (await http.get("/health")).json()
        assert health["status"] == "fenced"
        assert (
            health["moved_to"].startswith("postgresql://app:")
            and "secret" not in health["moved_to"]
        )
        refused = await http.post("/streams/order-2", json={"events": [{"type": "Placed"}]})
        assert refused.status_code == 503
        assert "db.example/new" in refused.json()["error"]["message"]
        await fencing.unfence()
        assert (await http.get("/health")).json()["status"] == "ok"
