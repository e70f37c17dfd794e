"""Every benchmark workload runs on a tiny size and produces sane numbers (no timing checks).

The numbers themselves mean nothing at these sizes; ``make bench`` measures.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pytest

pytest.importorskip("eventsourcing", reason="the benchmarks compare against eventsourcing")

from benchmarks import chronik_side, concurrent, memory, peer, raw
from benchmarks.common import Sizes, System, Target
from benchmarks.run import evaluate, main, medians, table

TINY = Sizes(
    w1_streams=6,
    w1_events=10,
    w2_streams=3,
    w2_events=4,
    w3_writers=2,
    w3_seconds=0.3,
    w5_events=1100,
    w5_loads=1,
    m1_small=1000,
    m1_large=3000,
    repetitions=1,
)
SIDES: dict[str, Any] = {"chronik": chronik_side, "eventsourcing": peer, "raw": raw}
SYSTEMS: list[System] = ["chronik", "eventsourcing", "raw"]


def _sqlite_target(tmp_path: Path, name: str) -> Target:
    folder = tmp_path / name
    folder.mkdir()
    return Target("sqlite", sqlite_path=str(folder / "bench.db"))


def _pg_target(pg_url: str) -> Target:
    import psycopg

    parts = urlsplit(pg_url)
    schema = dict(parse_qsl(parts.query))["schema"]
    base = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    return Target("postgres", pg_url=base, schema=schema)


def _check_chain(out: dict[str, dict[str, float]]) -> None:
    assert set(out) == {"W1", "W4", "W5", "W6"}
    events = TINY.w1_streams * TINY.w1_events
    assert out["W1"]["events"] == events
    assert out["W1"]["events_per_s"] > 0
    assert out["W4"]["events"] == events
    assert out["W4"]["aggregates_per_s"] > 0
    assert out["W4"]["events_per_s"] == pytest.approx(
        out["W4"]["aggregates_per_s"] * TINY.w1_events
    )
    assert out["W6"]["events"] == events
    assert out["W6"]["events_per_s"] > 0
    assert out["W5"]["events"] == TINY.w5_events
    assert out["W5"]["ms"] > 0


def _check_w2(out: dict[str, dict[str, float]]) -> None:
    assert out["W2"]["events"] == TINY.w2_streams * TINY.w2_events
    assert out["W2"]["events_per_s"] > 0


@pytest.mark.parametrize("system", SYSTEMS)
def test_sqlite_workloads(system: str, tmp_path: Path) -> None:
    side = SIDES[system]
    _check_chain(side.chain(_sqlite_target(tmp_path, "chain"), TINY))
    _check_w2(side.w2(_sqlite_target(tmp_path, "w2"), TINY))


def test_sqlite_peer_is_as_durable_as_chronik(tmp_path: Path) -> None:
    app = peer.make_app(_sqlite_target(tmp_path, "durability"))  # raises unless FULL
    app.close()


def test_m1_reads_the_whole_log_and_reports_memory(tmp_path: Path) -> None:
    target = _sqlite_target(tmp_path, "m1")
    assert memory.fill(target, 2500)["events"] == 3000  # whole streams of 1,000 events
    traced = memory.read(target, trace=True)
    assert traced["events"] == 3000
    assert 0 < traced["tracemalloc_peak_mib"] < 100
    plain = memory.read(target, trace=False)
    assert plain["events"] == 3000
    assert plain["rss_growth_mib"] >= 0


def test_summary_table_and_targets() -> None:
    runs: dict[str, Any] = {
        "sqlite": {
            "W1": {
                "chronik": [{"events_per_s": 300.0}, {"events_per_s": 100.0}],
                "eventsourcing": [{"events_per_s": 100.0}],
                "raw": [{"events_per_s": 200.0}],
            },
            "W5": {
                "chronik": [{"ms": 10.0}],
                "eventsourcing": [{"ms": 50.0}],
                "raw": [{"ms": 5.0}],
            },
        }
    }
    med = medians(runs)
    assert med["sqlite"]["W1"]["chronik"]["events_per_s"] == 200.0
    goals = {(g["workload"], g["peer"]): g for g in evaluate(med)}
    assert goals[("W1", "eventsourcing")]["measured"] == pytest.approx(2.0)
    assert goals[("W1", "eventsourcing")]["met"]
    assert goals[("W1", "raw")]["measured"] == pytest.approx(1.0)
    text = table(med, ["sqlite"])
    assert "| 5.00x | 0.50x |" in text  # W5 is a time: the ratio is theirs / ours
    assert "n/a (snapshots: issue 5)" in text


@pytest.mark.slow
def test_runner_end_to_end_on_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("benchmarks.run.SMOKE", TINY)
    out = tmp_path / "latest.json"
    assert main(["--smoke", "--backends", "sqlite", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["mode"] == "smoke"
    assert set(report["medians"]["sqlite"]) == {"W1", "W2", "W4", "W5", "W6"}
    for workload in report["medians"]["sqlite"].values():
        assert set(workload) == {"chronik", "eventsourcing", "raw"}
    assert set(report["m1"]["sqlite"]) == {str(TINY.m1_small), str(TINY.m1_large)}
    printed = capsys.readouterr().out
    assert "| W1 append" in printed
    assert "targets met" in printed


@pytest.mark.postgres
@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize("kind", ["chain", "w2"])
def test_postgres_workloads(system: str, kind: str, pg_url: str) -> None:
    side = SIDES[system]
    target = _pg_target(pg_url)
    if kind == "chain":
        _check_chain(side.chain(target, TINY))
    else:
        _check_w2(side.w2(target, TINY))


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("system", SYSTEMS)
def test_postgres_concurrent_writers(system: System, pg_url: str) -> None:
    out = concurrent.run(system, _pg_target(pg_url), TINY.w3_writers, TINY.w3_seconds)
    assert out["writers"] == TINY.w3_writers
    assert out["events"] > 0
    assert out["events_per_s"] > 0
