"""The debugging toolkit on every backend: replay, trace, check (library and CLI).

- replay: the JSON of each step equals the state folded step by step; ``as_of`` picks the
  last event at or before the time;
- trace: a generated multi-stream causal graph (commands, events, handler reactions) gives
  back exactly the events of each correlation id with the right parents; orphans (missing
  cause, a causation cycle) are shown; the lookup uses the correlation index (EXPLAIN);
- check: a clean store passes; each seeded corruption (version gap, duplicate version and
  event id, positions out of order, unknown type, bad payload, failing upcast, newer schema,
  missing correlation id, snapshot ahead, checkpoint ahead) is reported, and nothing is
  written.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

import chronik
from chronik import CommandHandler, Decider, NewEvent, RecordedEvent
from chronik.cli.main import main
from chronik.debugging import Trace, diff, load_at, replay, to_plain, trace
from chronik.events import category_of
from chronik.integrity import CHECKS, check
from chronik.projections import ExternalProjection, ProjectionRunner
from chronik.snapshots import Snapshot, snapshot_store
from chronik.store.protocol import EventStore

registry = chronik.EventRegistry()


@registry.event("ItemAdded")
@dataclass(frozen=True)
class ItemAdded:
    sku: str
    qty: int


@registry.event("ItemRemoved")
@dataclass(frozen=True)
class ItemRemoved:
    sku: str


@registry.event("CheckedOut")
@dataclass(frozen=True)
class CheckedOut:
    note: str


@registry.event("Priced", version=2)
@dataclass(frozen=True)
class Priced:
    price_cents: int


@registry.upcaster("Priced", from_version=1)
def _priced_v1(data: dict[str, Any]) -> dict[str, Any]:
    return {"price_cents": round(data["price"] * 100)}


@registry.event("Step")
@dataclass(frozen=True)
class Step:
    node: str


@dataclass(frozen=True)
class Cart:
    items: dict[str, int] = field(default_factory=dict)
    status: str = "open"
    price_cents: int = 0
    history: tuple[str, ...] = ()


def evolve_cart(cart: Cart, event: Any) -> Cart:
    match event:
        case ItemAdded(sku, qty):
            items = {**cart.items, sku: cart.items.get(sku, 0) + qty}
            return replace(cart, items=items, history=(*cart.history, f"+{sku}"))
        case ItemRemoved(sku):
            items = {k: v for k, v in cart.items.items() if k != sku}
            return replace(cart, items=items, history=(*cart.history, f"-{sku}"))
        case CheckedOut():
            return replace(cart, status="checked_out")
        case Priced(price):
            return replace(cart, price_cents=price)
    return cart


cart_decider: Decider[Any, Any, Cart] = Decider(lambda c, s: list(c), evolve_cart, Cart)


@dataclass(frozen=True)
class Emit:
    nodes: tuple[str, ...]


step_decider: Decider[Emit, Step, int] = Decider(
    lambda c, n: [Step(node) for node in c.nodes], lambda n, e: n + 1, lambda: 0
)

app = chronik.App(
    registry=registry,
    deciders={"cart": cart_decider, **{c: step_decider for c in ("a", "b", "c", "d")}},
)
"""For ``--app tests.integration.test_debugging:app``."""

CART = [
    ItemAdded("kettle", 1),
    ItemAdded("cup", 2),
    ItemRemoved("kettle"),
    ItemAdded("cup", 1),
    Priced(1250),
    CheckedOut("thanks"),
]


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[EventStore]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/debug.db"
    else:
        url = str(request.getfixturevalue("pg_url"))
    async with await chronik.connect(url) as s:
        yield s


async def append_cart(store: EventStore, stream_id: str = "cart-1") -> list[RecordedEvent]:
    """One append per event, a few milliseconds apart (distinct recorded_at)."""
    with chronik.context(correlation_id=f"checkout-{stream_id}"):
        for ev in CART:
            await store.append(stream_id, [registry.to_new_event(ev)])
            await asyncio.sleep(0.003)
    return [e async for e in store.read_stream(stream_id)]


def _roundtrip(value: Any) -> Any:
    return json.loads(msgspec.json.encode(value))


# -- replay ---------------------------------------------------------------------------------


async def test_replay_json_matches_the_states_folded_step_by_step(store: EventStore) -> None:
    await append_cart(store)
    result = _roundtrip((await replay(store, "cart-1", cart_decider, registry=registry)).to_dict())
    assert result["version"] == result["stream_version"] == len(CART) - 1
    assert result["initial_state"] == _roundtrip(to_plain(Cart()))
    assert [s["version"] for s in result["steps"]] == list(range(len(CART)))
    for index, step in enumerate(result["steps"]):
        assert step["state"] == _roundtrip(to_plain(cart_decider.fold(CART[: index + 1])))
        assert step["type"] == registry.type_of(CART[index]).name
        assert step["correlation_id"] == "checkout-cart-1"
    assert result["final_state"] == result["steps"][-1]["state"]
    by_type = {s["type"] + str(s["version"]): s["changes"] for s in result["steps"]}
    assert {"path": "items.kettle", "kind": "removed", "before": 1, "after": None} in by_type[
        "ItemRemoved2"
    ]
    assert {"path": "items.cup", "kind": "changed", "before": 2, "after": 3} in by_type[
        "ItemAdded3"
    ]
    assert {"path": "history[3]", "kind": "added", "before": None, "after": "+cup"} in by_type[
        "ItemAdded3"
    ]
    assert by_type["CheckedOut5"] == [
        {"path": "status", "kind": "changed", "before": "open", "after": "checked_out"}
    ]


async def test_replay_stops_at_a_version_and_at_a_time(store: EventStore) -> None:
    events = await append_cart(store)
    stopped = await replay(store, "cart-1", cart_decider, registry=registry, to_version=2)
    assert stopped.version == 2 and stopped.stream_version == len(CART) - 1
    assert stopped.steps[-1].state == to_plain(cart_decider.fold(CART[:3]))
    for k, ev in enumerate(events):
        at = await replay(store, "cart-1", cart_decider, registry=registry, as_of=ev.recorded_at)
        assert at.version == k, "as_of picks the last event at or before the time"
        just_before = ev.recorded_at - timedelta(microseconds=1)
        before = await replay(store, "cart-1", cart_decider, registry=registry, as_of=just_before)
        assert before.version == k - 1
        loaded = await load_at(store, "cart-1", cart_decider, registry=registry, as_of=just_before)
        assert loaded.version == k - 1 and loaded.state == cart_decider.fold(CART[:k])
    naive = events[3].recorded_at.astimezone(UTC).replace(tzinfo=None)
    assert (
        await replay(store, "cart-1", cart_decider, registry=registry, as_of=naive)
    ).version == 3
    empty = await replay(
        store, "cart-1", cart_decider, registry=registry, as_of=events[0].recorded_at - timedelta(1)
    )
    assert (
        empty.steps == []
        and empty.version == -1
        and empty.to_dict()["final_state"] == (to_plain(Cart()))
    )
    loaded = await load_at(store, "cart-1", cart_decider, registry=registry, version=4)
    assert loaded.state == cart_decider.fold(CART[:5]) and loaded.version == 4
    with pytest.raises(chronik.StreamNotFound):
        await replay(store, "cart-404", cart_decider, registry=registry)


async def test_replay_copies_states_changed_in_place() -> None:
    """An Aggregate-style evolve mutates one object: each step still keeps its own state."""

    def evolve(state: dict[str, int], event: Any) -> dict[str, int]:
        state[event.sku] = state.get(event.sku, 0) + event.qty
        return state

    mutating: Decider[Any, Any, dict[str, int]] = Decider(lambda c, s: [], evolve, dict)
    async with chronik.store.memory.MemoryEventStore() as store:
        await store.append("cart-1", registry.to_new_events(CART[:2]))
        result = await replay(store, "cart-1", mutating, registry=registry)
    assert [s.state for s in result.steps] == [{"kettle": 1}, {"kettle": 1, "cup": 2}]
    assert result.steps[1].changes[0].describe() == "+ cup: 2"


def test_diff_and_plain_values() -> None:
    before = {"a": 1, "b": {"c": [1, 2]}, "d": True}
    after = {"a": 1, "b": {"c": [1, 3, 4]}, "d": 1, "e": None}
    assert [(c.path, c.kind) for c in diff(before, after)] == [
        ("b.c[1]", "changed"),
        ("b.c[2]", "added"),
        ("d", "changed"),
        ("e", "added"),
    ]
    assert diff(3, 4)[0].describe() == "(state): 3 → 4"
    assert to_plain({"s": {3, 1}, "t": (1, "x"), "u": uuid.UUID(int=1)}) == {
        "s": [1, 3],
        "t": [1, "x"],
        "u": "00000000-0000-0000-0000-000000000001",
    }


def test_replay_cli_json_and_as_of(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"

    async def fill() -> tuple[list[RecordedEvent], dict[str, Any]]:
        async with await chronik.connect(url) as store:
            events = await append_cart(store)
            result = await replay(store, "cart-1", cart_decider, registry=registry)
            return events, _roundtrip(result.to_dict())

    events, expected = asyncio.run(fill())
    app_spec = "tests.integration.test_debugging:app"
    assert main(["--store", url, "replay", "cart-1", "--app", app_spec, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == expected
    when = events[2].recorded_at.isoformat().replace("+00:00", "Z")
    argv = ["--store", url, "replay", "cart-1", "--app", app_spec, "--as-of", when, "--json"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2
    assert main(["--store", url, "replay", "cart-1", "--app", app_spec, "--diff"]) == 0
    out = capsys.readouterr().out
    assert "status: 'open' → 'checked_out'" in out and "ItemRemoved" in out
    assert main(["--store", url, "replay", "cart-1", "--app", app_spec, "--to-version", "1"]) == 0
    assert "up to version 1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--store", url, "replay", "cart-1", "--app", app_spec, "--as-of", "yesterday"])


# -- trace ----------------------------------------------------------------------------------


@dataclass
class Plan:
    """A random causal graph: which appends each event's handler makes."""

    reactions: dict[str, list[tuple[str, tuple[str, ...]]]] = field(default_factory=dict)
    parent: dict[str, str | None] = field(default_factory=dict)
    correlation: dict[str, str] = field(default_factory=dict)
    roots: list[tuple[str, str, tuple[str, ...]]] = field(default_factory=list)


def make_plan(seed: int, correlations: int = 4) -> Plan:
    rng = random.Random(seed)
    plan = Plan()
    counter = 0

    def nodes(corr: str, parent: str | None) -> tuple[str, ...]:
        nonlocal counter
        made = []
        for _ in range(rng.choice([1, 1, 2])):
            counter += 1
            node = f"{corr}/n{counter}"
            plan.parent[node] = parent
            plan.correlation[node] = corr
            made.append(node)
        return tuple(made)

    def grow(corr: str, node: str, depth: int) -> None:
        reactions = []
        for _ in range(rng.choice([0, 1, 1, 2, 3]) if depth < 4 else 0):
            stream = f"{rng.choice('abcd')}-{rng.randint(1, 3)}"
            children = nodes(corr, node)
            reactions.append((stream, children))
            for child in children:
                grow(corr, child, depth + 1)
        plan.reactions[node] = reactions

    for k in range(correlations):
        corr = f"corr-{seed}-{k}"
        first = nodes(corr, None)
        plan.roots.append((corr, f"{rng.choice('abcd')}-{k}", first))
        for node in first:
            grow(corr, node, 1)
    return plan


class Reactor(ExternalProjection):
    """A handler reaction: each event of the plan makes its planned commands."""

    name = "reactor"
    event_types = ["Step"]

    def __init__(self, store: EventStore, plan: Plan) -> None:
        self.handler = CommandHandler(store, step_decider, registry=registry)
        self.plan = plan

    async def handle(self, event: RecordedEvent) -> None:
        for stream, children in self.plan.reactions[registry.decode(event).node]:
            await self.handler.handle(stream, Emit(children))


async def run_plan(store: EventStore, plan: Plan) -> None:
    handler = CommandHandler(store, step_decider, registry=registry)
    for corr, stream, first in plan.roots:
        with chronik.context(correlation_id=corr):
            await handler.handle(stream, Emit(first))
    runner = ProjectionRunner(store, [Reactor(store, plan)], batch_size=7)
    while await runner.catch_up():
        pass


def node_of(event: RecordedEvent) -> str:
    return str(event.data["node"])


async def test_trace_returns_each_correlation_with_the_right_parents(store: EventStore) -> None:
    plan = make_plan(seed=7)
    await run_plan(store, plan)
    assert len(plan.parent) > 20
    for corr, _, _ in plan.roots:
        result = await trace(store, corr)
        expected = {n for n, c in plan.correlation.items() if c == corr}
        assert sorted(node_of(e) for e in result.events) == sorted(expected)
        assert [e.position for e in result.events] == sorted(e.position for e in result.events)
        walked = list(result.walk())
        assert len(walked) == len(expected)
        assert result.orphans == []
        for node, depth in walked:
            want = plan.parent[node_of(node.event)]
            got = None if node.parent is None else node_of(node.parent.event)
            assert got == want, node_of(node.event)
            assert (depth == 0) == (want is None)
            if node.parent is not None:
                assert node.event.causation_id == str(node.parent.event.event_id)
                assert node.since_parent is not None and node.since_parent >= timedelta(0)
        as_json = result.to_dict()
        assert as_json["events"] == len(expected) and as_json["orphans"] == 0
        edges = sum(1 for n, _ in walked if n.parent is not None)
        assert result.to_mermaid().count(" -->|") == edges
        assert result.to_dot().count(" -> ") == edges
    assert (await trace(store, "no-such-correlation")).events == []


async def test_trace_shows_orphans_and_cuts_cycles(store: EventStore) -> None:
    plan = make_plan(seed=3, correlations=1)
    await run_plan(store, plan)
    corr = plan.roots[0][0]
    lost = str(uuid.uuid4())
    with chronik.context(correlation_id=corr, causation_id=lost):
        await store.append("a-9", registry.to_new_events([Step("orphan-1"), Step("orphan-2")]))
    first, second = chronik.new_event_id(), chronik.new_event_id()
    with chronik.context(correlation_id=corr):
        await store.append(
            "b-9",
            [
                NewEvent("Step", {"node": "loop-1"}, {"causation_id": str(second)}, first),
                NewEvent("Step", {"node": "loop-2"}, {"causation_id": str(first)}, second),
            ],
        )
    result = await trace(store, corr)
    assert len(result.events) == len(plan.parent) + 4
    orphans = {node_of(n.event): n for n in result.orphans}
    assert set(orphans) == {"orphan-1", "orphan-2", "loop-1"}
    assert orphans["orphan-1"].missing_parent == lost and not orphans["orphan-1"].cycle
    assert orphans["loop-1"].cycle and orphans["loop-1"].missing_parent is None
    assert [node_of(c.event) for c in orphans["loop-1"].children] == ["loop-2"]
    assert len(list(result.walk())) == len(result.events), "nothing dropped"
    as_json = result.to_dict()
    assert as_json["orphans"] == 3
    missing = [n for n in as_json["nodes"] if n["missing_parent"] == lost]
    assert len(missing) == 2 and all(n["depth"] == 0 for n in missing)
    assert result.to_mermaid().count(" -.-> ") == 3
    assert f"missing {lost}" in result.to_dot()


def test_trace_cli_tree_json_and_pictures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/trace.db"
    plan = make_plan(seed=11, correlations=2)

    async def fill() -> Trace:
        async with await chronik.connect(url) as store:
            await run_plan(store, plan)
            return await trace(store, plan.roots[0][0])

    expected = asyncio.run(fill())
    corr = plan.roots[0][0]
    assert main(["--store", url, "trace", corr, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == _roundtrip(expected.to_dict())
    assert main(["--store", url, "trace", corr, "--format", "mermaid"]) == 0
    assert capsys.readouterr().out == expected.to_mermaid()
    assert main(["--store", url, "trace", corr, "--format", "dot"]) == 0
    assert capsys.readouterr().out == expected.to_dot()
    assert main(["--store", url, "trace", corr]) == 0
    out = capsys.readouterr().out
    assert f"correlation {corr}: {len(expected.events)} event(s)" in out
    assert main(["--store", url, "trace", "nothing-here"]) == 1


def test_sqlite_trace_uses_the_correlation_index(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/plan.db"
    asyncio.run(_fill_steps(url, 50))
    conn = sqlite3.connect(tmp_path / "plan.db")
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT position FROM events "
        "WHERE json_extract(metadata, '$.correlation_id') = ? ORDER BY position LIMIT ?",
        ("corr-1", -1),
    ).fetchall()
    conn.close()
    assert "USING INDEX events_correlation_id_idx" in str(plan), plan
    assert "TEMP B-TREE" not in str(plan), "rows come in position order from the index"


async def _fill_steps(url: str, n: int) -> None:
    async with await chronik.connect(url) as store:
        for i in range(n):
            with chronik.context(correlation_id=f"corr-{i % 5}"):
                await store.append(f"a-{i}", registry.to_new_events([Step(f"n{i}")]))


@pytest.mark.postgres
def test_postgres_trace_uses_the_correlation_index(pg_url: str) -> None:
    import psycopg

    from chronik.store.pg_support import split_schema

    asyncio.run(_fill_steps(pg_url, 50))
    conninfo, schema = split_schema(pg_url)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{schema}"')
        conn.execute("SET enable_seqscan = off")
        rows = conn.execute(
            "EXPLAIN SELECT position FROM events WHERE (metadata->>'correlation_id') = 'corr-1' "
            "ORDER BY position"
        ).fetchall()
    plan = "\n".join(str(r[0]) for r in rows)
    assert "events_correlation_id_idx" in plan, plan


# -- check ----------------------------------------------------------------------------------


async def build_clean(store: EventStore) -> None:
    """Carts (one with a v1 event upcast on read), a snapshot and a checkpoint."""
    await append_cart(store, "cart-1")
    await append_cart(store, "cart-2")
    with chronik.context(correlation_id="legacy"):
        await store.append("cart-3", [NewEvent("Priced", {"price": 1.5}, schema_version=1)])
    await snapshot_store(store).save(
        Snapshot("cart-1", 3, "sv1", b"{}", datetime.now(UTC)), keep=None
    )
    head = await store.head_position()
    async with store.transaction() as tx:
        await tx.set_checkpoint("carts:v1", head)


async def test_check_passes_a_clean_store(store: EventStore) -> None:
    await build_clean(store)
    report = await check(store, registry=registry)
    assert report.ok, report.problems
    assert report.counts == dict.fromkeys(CHECKS, 0)
    assert report.events == report.decoded == 2 * len(CART) + 1
    assert report.streams == 3 and report.skipped == {}
    bare = await check(store)
    assert bare.ok and set(bare.skipped) == {"unknown_type", "decode_error"}


EXPECTED_COUNTS = {
    "version_gap": 1,
    "duplicate_version": 1,
    "duplicate_event_id": 1,
    "position_order": 1,
    "unknown_type": 1,
    "decode_error": 3,
    "missing_correlation_id": 1,
    "snapshot_ahead": 2,
    "snapshot_invalid": 0,
    "checkpoint_ahead": 1,
}


def _assert_reports_every_corruption(report: Any) -> None:
    assert not report.ok
    assert report.counts == EXPECTED_COUNTS, report.problems
    messages = {c: [p.message for p in report.details(c)] for c in CHECKS}
    assert messages["version_gap"] == ["cart-1: version 6 missing"]
    assert messages["duplicate_version"] == ["cart-2: version 1 stored 2 times"]
    assert "stored 2 times" in messages["duplicate_event_id"][0]
    assert messages["position_order"][0].startswith("late-1: version 0 has position")
    assert messages["position_order"][0].endswith("after version 1 in the global order")
    assert "'Mystery' is not registered" in messages["unknown_type"][0]
    assert report.breakdown["unknown_type"] == {"Mystery v1": 1}
    assert report.breakdown["decode_error"] == {
        "ItemAdded v1": 1,
        "ItemAdded v9": 1,
        "Priced v1": 1,
    }
    assert any("KeyError" in m or "price" in m for m in messages["decode_error"])
    assert "bad-1@0" in messages["missing_correlation_id"][0]
    assert {p.stream_id for p in report.details("snapshot_ahead")} == {"cart-2", "ghost-1"}
    assert "'ahead:v1'" in messages["checkpoint_ahead"][0]


class Seeder:
    """Writes corrupt rows straight into the database, as a bug or a hand edit would."""

    def __init__(self, store: EventStore, first_position: int) -> None:
        self.store = store
        self.position = first_position

    def row(
        self,
        stream_id: str,
        version: int,
        type_: str,
        data: dict[str, Any],
        *,
        meta: dict[str, Any] | None = None,
        event_id: uuid.UUID | None = None,
        schema_version: int = 1,
        position: int | None = None,
    ) -> tuple[Any, ...]:
        if position is None:
            self.position += 1
            position = self.position
        return (
            position,
            stream_id,
            version,
            str(event_id or uuid.uuid4()),
            type_,
            schema_version,
            json.dumps(data),
            json.dumps({"correlation_id": "seeded"} if meta is None else meta),
        )


async def seed_rows(store: EventStore, seeder: Seeder) -> list[tuple[Any, ...]]:
    cart2 = [e async for e in store.read_stream("cart-2")]
    kettle = {"sku": "kettle", "qty": 1}
    p = seeder.position
    return [
        seeder.row("cart-1", len(CART) + 1, "ItemAdded", kettle),  # gap at version 6
        seeder.row("cart-2", 1, "ItemAdded", kettle),  # a second version 1
        seeder.row("cart-4", 0, "ItemAdded", kettle, event_id=cart2[0].event_id),
        seeder.row("late-1", 0, "ItemAdded", kettle, position=p + 20),
        seeder.row("late-1", 1, "ItemAdded", kettle, position=p + 10),  # below version 0
        seeder.row("odd-1", 0, "Mystery", {}),
        seeder.row("odd-2", 0, "ItemAdded", {"sku": 5}),  # bad payload
        seeder.row("odd-3", 0, "ItemAdded", kettle, schema_version=9),  # newer than the code
        seeder.row("odd-4", 0, "Priced", {"amount": 3}),  # the upcaster fails (KeyError)
        seeder.row("bad-1", 0, "ItemAdded", kettle, meta={"actor": "script"}),
    ]


def test_check_reports_each_seeded_corruption_on_sqlite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "corrupt.db"
    url = f"sqlite:///{path}"

    async def fill() -> list[tuple[Any, ...]]:
        async with await chronik.connect(url) as store:
            await build_clean(store)
            return await seed_rows(store, Seeder(store, await store.head_position() + 100))

    async def run_check() -> Any:
        async with await chronik.connect(url) as store:
            return await check(store, registry=registry)

    rows = asyncio.run(fill())
    conn = sqlite3.connect(path)
    # a store whose UNIQUE constraints were lost (an import by hand, a bad restore)
    conn.executescript(
        """
        ALTER TABLE events RENAME TO events_old;
        CREATE TABLE events (position INTEGER PRIMARY KEY, stream_id TEXT NOT NULL,
            category TEXT NOT NULL, version INTEGER NOT NULL, event_id TEXT NOT NULL,
            type TEXT NOT NULL, schema_version INTEGER NOT NULL DEFAULT 1, data TEXT NOT NULL,
            metadata TEXT NOT NULL, recorded_at INTEGER NOT NULL, hash BLOB);
        INSERT INTO events SELECT * FROM events_old;
        DROP TABLE events_old;
        CREATE INDEX events_correlation_id_idx
            ON events (json_extract(metadata, '$.correlation_id'), position);
        """
    )
    conn.executemany(
        "INSERT INTO events (position, stream_id, version, event_id, type, schema_version, "
        "data, metadata, category, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        [(*r, category_of(r[1])) for r in rows],
    )
    conn.execute(
        "INSERT INTO snapshots (stream_id, state_version, version, category, state, created_at) "
        "VALUES ('cart-2', 'sv1', 99, 'cart', X'7B7D', 0), "
        "('ghost-1', 'sv1', 0, 'ghost', X'7B7D', 0)"
    )
    conn.execute(
        "INSERT INTO checkpoints (name, position, updated_at) VALUES ('ahead:v1', ?, 0)",
        (10**12,),
    )
    conn.commit()
    before = list(conn.iterdump())
    conn.close()
    _assert_reports_every_corruption(asyncio.run(run_check()))
    app_spec = "tests.integration.test_debugging:app"
    assert main(["--store", url, "check", "--app", app_spec, "--json"]) == 1
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["summary"] == EXPECTED_COUNTS and as_json["ok"] is False
    assert main(["--store", url, "check", "--app", app_spec]) == 1
    out = capsys.readouterr().out
    assert "problems found" in out and "Mystery v1: 1" in out
    conn = sqlite3.connect(path)
    assert list(conn.iterdump()) == before, "check wrote nothing"
    conn.close()


def test_check_cli_on_a_clean_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/clean.db"

    async def fill() -> None:
        async with await chronik.connect(url) as store:
            await build_clean(store)

    asyncio.run(fill())
    app_spec = "tests.integration.test_debugging:app"
    assert main(["--store", url, "check", "--app", app_spec]) == 0
    assert "no problems found" in capsys.readouterr().out
    assert main(["--store", url, "check", "--json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert as_json["ok"] is True and "decode_error" in as_json["skipped"]


@pytest.mark.postgres
async def test_check_reports_each_seeded_corruption_on_postgres(pg_url: str) -> None:
    import psycopg

    from chronik.store.pg_support import split_schema

    async with await chronik.connect(pg_url) as store:
        await build_clean(store)
        rows = await seed_rows(store, Seeder(store, await store.head_position() + 100))
    conninfo, schema = split_schema(pg_url)
    s = f'"{schema}"'
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {s}.events DROP CONSTRAINT events_stream_version_key")
        conn.execute(f"ALTER TABLE {s}.events DROP CONSTRAINT events_event_id_key")
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {s}.events (position, stream_id, version, event_id, type, "
                f"schema_version, data, metadata) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                rows,
            )
        conn.execute(
            f"INSERT INTO {s}.snapshots (stream_id, state_version, version, category, state) "
            f"VALUES ('cart-2', 'sv1', 99, 'cart', '\\x7b7d'), ('ghost-1', 'sv1', 0, 'ghost', "
            f"'\\x7b7d')"
        )
        conn.execute(
            f"INSERT INTO {s}.checkpoints (name, position) VALUES ('ahead:v1', %s)", (2**62,)
        )
    async with await chronik.connect(pg_url) as store:
        _assert_reports_every_corruption(await check(store, registry=registry))


async def test_check_reports_each_seeded_corruption_on_memory() -> None:
    """The scanning path (stores without SQL): the same corruptions, put in by hand."""
    async with chronik.store.memory.MemoryEventStore() as store:
        await build_clean(store)
        seeder = Seeder(store, await store.head_position() + 100)
        rows = sorted(await seed_rows(store, seeder))
        now = datetime.now(UTC)
        for position, stream_id, version, event_id, type_, sv, data, meta in rows:
            rec = RecordedEvent(
                event_id=uuid.UUID(event_id),
                stream_id=stream_id,
                version=version,
                position=position,
                type=type_,
                schema_version=sv,
                raw_data=data.encode(),
                raw_metadata=meta.encode(),
                recorded_at=now,
            )
            store._log.append(rec)
            store._positions.append(position)
            store._streams.setdefault(stream_id, []).append(rec)
        snaps = snapshot_store(store)
        for stream_id, version in (("cart-2", 99), ("ghost-1", 0)):
            await snaps._write(Snapshot(stream_id, version, "sv1", b"{}", now), None)
        store._checkpoints["ahead:v1"] = 10**12
        _assert_reports_every_corruption(await check(store, registry=registry))
