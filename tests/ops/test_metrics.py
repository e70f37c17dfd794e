"""Prometheus metrics: scraped under load, every documented name present, lag equals head
minus checkpoint; /metrics on ``chronik serve`` and ``--metrics-port`` on workers."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import chronik
from chronik import NewEvent
from chronik.ops.metrics import METRIC_NAMES, StoreMetrics, serve_metrics
from chronik.store.horizon import events_after
from tests.integration.conftest import free_port

DOCS = Path(__file__).parents[2] / "docs" / "operations.md"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def names(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


def exported(name: str) -> str:
    """The name a family is parsed back as (counters lose ``_total``)."""
    return name.removesuffix("_total")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_scraped_under_load_with_every_documented_name(
    tmp_path: Path, pg_url: str, backend: str
) -> None:
    url = f"sqlite:///{tmp_path}/m.db" if backend == "sqlite" else pg_url
    async with await chronik.connect(url) as store:
        metrics = StoreMetrics(store, stats_interval=0)
        metrics.instrument()
        port = free_port()
        server = await serve_metrics(metrics, port, "127.0.0.1")
        stop = asyncio.Event()
        appended = 0

        async def load() -> None:
            nonlocal appended
            while not stop.is_set():
                await store.append(f"load-{appended % 7}", [NewEvent("Loaded", {"n": appended})])
                appended += 1
                async with store.transaction() as tx:
                    await tx.set_checkpoint("follower", await store.head_position())
                    if appended == 5:
                        first = [e async for e in store.read_all(limit=1)]
                        await tx.add_dead_letter("follower", first[0], "boom", 3)

        writer = asyncio.ensure_future(load())
        try:
            texts = []
            for _ in range(8):
                await asyncio.sleep(0.05)
                texts.append(await scrape(port))
        finally:
            stop.set()
            await writer
            server.close()
            await server.wait_closed()
        assert appended > 10
        for text in texts[2:]:
            missing = {exported(n) for n in METRIC_NAMES} - names(text)
            assert not missing, missing
        last = samples(texts[-1])
        assert last[("chronik_appended_events_total", (("category", "load"),))] > 0
        assert last[("chronik_append_seconds_count", ())] > 0
        assert last[("chronik_dead_letters", (("subscription", "follower"),))] == 1
        # every documented name is in the operator's guide
        guide = DOCS.read_text()
        for name in METRIC_NAMES:
            assert f"`{name}`" in guide, name


async def test_lag_equals_head_minus_checkpoint(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/lag.db"
    async with await chronik.connect(url) as store:
        for start in range(0, 25_000, 5_000):
            await store.append(
                f"bulk-{start}", [NewEvent("Bulk", {"n": start + i}) for i in range(5_000)]
            )
        head = await store.head_position()
        async with store.transaction() as tx:
            await tx.set_checkpoint("slow", 1_234)
            await tx.set_checkpoint("near", head - 17)
            await tx.set_checkpoint("done", head)
        text = (await StoreMetrics(store).exposition()).decode()
        got = samples(text)
        for name, checkpoint in (("slow", 1_234), ("near", head - 17), ("done", head)):
            lag = got[("chronik_checkpoint_lag_events", (("checkpoint", name),))]
            assert lag == head - checkpoint  # 23,766 is past the exact count: from positions
            assert got[("chronik_checkpoint_position", (("checkpoint", name),))] == checkpoint
        assert got[("chronik_checkpoint_lag_seconds", (("checkpoint", "done"),))] == 0
        assert got[("chronik_checkpoint_age_seconds", (("checkpoint", "slow"),))] >= 0


async def test_lag_on_postgresql_counts_exactly_then_estimates(pg_url: str) -> None:
    async with await chronik.connect(pg_url) as store:
        for batch in range(30):
            await store.append(f"p-{batch}", [NewEvent("E", {"n": i}) for i in range(100)])
        # every committed event (count_events sees only those below the read horizon, which
        # another test's transaction on this shared server may be holding back right now)
        ((counted,),) = await store.query("SELECT count(*) FROM events")  # type: ignore[attr-defined]
        exact = await events_after(store, 0, cap=10_000)
        assert (exact.events, exact.estimated) == (counted, False)
        rough = await events_after(store, 0, cap=500)
        assert rough.estimated and rough.events >= 500
        # positions of one transaction are dense: the estimate is close on this log
        assert abs(rough.events - counted) / counted < 0.5, (rough, counted)
        only = await events_after(store, 0, categories=["p"], types=["E"], cap=10_000)
        assert only.events == counted
        none = await events_after(store, 0, categories=["nothing"])
        assert none.events == 0 and none.seconds == 0


async def test_chronik_serve_has_metrics(tmp_path: Path) -> None:
    import httpx

    from chronik.server import create_app

    async with await chronik.connect(f"sqlite:///{tmp_path}/s.db") as store:
        web = create_app(store)
        transport = httpx.ASGITransport(app=web)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await store.append("via-1", [NewEvent("X", {})])
            r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert {exported(n) for n in METRIC_NAMES} <= names(r.text)
    assert samples(r.text)[("chronik_appended_events_total", (("category", "via"),))] == 1


_WORKER = """
from chronik.projections import Projection


class Counted(Projection):
    name = "counted"

    async def handle(self, event, tx):
        pass


projections = [Counted()]
"""


async def test_worker_metrics_port(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/w.db"
    async with await chronik.connect(url) as store:
        await store.append("w-1", [NewEvent("X", {})] * 1)
    (tmp_path / "workerapp.py").write_text(_WORKER)
    port = free_port()
    log = tmp_path / "worker.log"
    with open(log, "wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "chronik", "projections", "run", "workerapp:projections"),
            *("--store", url, "--metrics-port", str(port)),
            cwd=tmp_path,
            stderr=stderr,
        )
    try:
        text = ""
        for _ in range(100):
            try:
                text = await scrape(port)
                if re.search(r'chronik_projection_checkpoint\{projection="counted"', text):
                    break
            except OSError:
                pass
            await asyncio.sleep(0.1)
        assert 'chronik_projection_lag_events{projection="counted",version="1"}' in text, (
            text or log.read_text()
        )
        assert "chronik_checkpoint_lag_events" in text
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0


def test_metrics_are_absent_without_the_extra_only_by_import(monkeypatch: Any) -> None:
    """``--metrics-port`` without prometheus-client says which extra to install."""
    from chronik.cli.ops import serving_metrics
    from chronik.errors import MissingDependency

    monkeypatch.setitem(sys.modules, "prometheus_client", None)

    async def run() -> None:
        async with serving_metrics(object(), 9):  # type: ignore[arg-type]
            pass

    with pytest.raises(MissingDependency, match="ops"):
        asyncio.run(run())
