"""The tamper-evident log (migration 0017, ``chronik verify``) on both SQL backends.

Random tampering done directly in SQL, around chronik's guards (the immutability and chain
triggers dropped on SQLite, ``session_replication_role = replica`` on PostgreSQL), each in a
transaction that is rolled back: every trial is detected and the first broken position is
the one tampered with (or, for what only a signed checkpoint sees, the checkpoint's range
holds it). Negative controls: the same store untampered verifies green, and without signed
checkpoints a deleted tail goes unseen (so the checkpoint trials can fail).
"""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import chronik
from chronik import NewEvent
from chronik.ops.chain import ChainKey, VerifyReport, sign_checkpoint, verify, verify_in
from chronik.store.chain import event_hash

KEY = ChainKey.hmac(b"chronik test chain key, 32 bytes or more")
TRIALS = int(os.environ.get("CHRONIK_CHAIN_TRIALS", "1000"))


class _Undo(Exception):
    """Raised inside a transaction to roll the tampering back."""


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/chain.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(url: str) -> AsyncIterator[Any]:
    async with await chronik.connect(url) as s:
        yield s


@dataclass(frozen=True)
class Row:
    position: int
    stream_id: str
    version: int


async def seed(store: Any, rng: random.Random, *, streams: int = 16, sign_every: int = 3) -> None:
    """Streams of varied length, appended in varied batches, with a signed checkpoint after
    every few appends and one at the head."""
    heads = dict.fromkeys(range(streams), -1)
    for n in range(60):
        s = rng.randrange(streams)
        batch = [
            NewEvent("Deposited", {"n": n, "i": i, "nonce": uuid.uuid4().hex, "text": "ü€"},
                     metadata={"by": f"writer-{s}"})
            for i in range(rng.randint(1, 6))
        ]  # fmt: skip
        await store.append(f"acct-{s}", batch, expected_version=heads[s])
        heads[s] += len(batch)
        if n % sign_every == sign_every - 1:
            await sign_checkpoint(store, KEY)
    await sign_checkpoint(store, KEY)


async def stored(store: Any) -> list[Row]:
    return [Row(e.position, e.stream_id, e.version) async for e in store.read_all()]


def is_pg(store: Any) -> bool:
    return bool(store.dialect == "postgresql")


async def bypass_guards(tx: Any, pg: bool) -> None:
    if pg:
        await tx.execute("SET LOCAL session_replication_role = replica")
    else:
        await tx.execute("DROP TRIGGER events_no_update")
        await tx.execute("DROP TRIGGER events_chained")


@dataclass(frozen=True)
class Expect:
    kind: str
    position: int
    exact: bool
    """True: the first break is at ``position``; False: a checkpoint range holds it."""


Tamper = Callable[[Any, list[Row], random.Random, bool], Awaitable[Expect]]


async def _update(tx: Any, row: Row, assignment: str, params: dict[str, Any]) -> None:
    await tx.execute(f"UPDATE events SET {assignment} WHERE position = :p",
                     {"p": row.position, **params})  # fmt: skip


def _pick(rows: list[Row], rng: random.Random) -> Row:
    return rows[rng.randrange(len(rows))]


def _successor(rows: list[Row], row: Row) -> Row | None:
    return next((r for r in rows if r.stream_id == row.stream_id and r.version == row.version + 1),
                None)  # fmt: skip


async def change_data(tx: Any, rows: list[Row], rng: random.Random, pg: bool) -> Expect:
    row = _pick(rows, rng)
    await _update(tx, row, "data = :d", {"d": json.dumps({"n": rng.randrange(10**9)})})
    return Expect("data", row.position, True)


async def change_metadata(tx: Any, rows: list[Row], rng: random.Random, pg: bool) -> Expect:
    row = _pick(rows, rng)
    await _update(tx, row, "metadata = :m", {"m": json.dumps({"by": "mallory"})})
    return Expect("metadata", row.position, True)


async def change_type(tx: Any, rows: list[Row], rng: random.Random, pg: bool) -> Expect:
    row = _pick(rows, rng)
    await _update(tx, row, "type = :t", {"t": "Withdrawn"})
    return Expect("type", row.position, True)


async def change_recorded_at(tx: Any, rows: list[Row], rng: random.Random, pg: bool) -> Expect:
    row = _pick(rows, rng)
    when: Any = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(10**6))
    await _update(tx, row, "recorded_at = :w",
                  {"w": when if pg else int(when.timestamp() * 1_000_000)})  # fmt: skip
    return Expect("recorded_at", row.position, True)


async def change_version(tx: Any, rows: list[Row], rng: random.Random, pg: bool) -> Expect:
    row = _pick(rows, rng)
    await _update(tx, row, "version = version + 1000", {})
    return Expect("version", row.position, True)


async def change_hash(tx: Any, rows: list[Row], rng: random.Random, pg: bool) -> Expect:
    row = _pick(rows, rng)
    await _update(tx, row, "hash = :h", {"h": rng.randbytes(32)})
    return Expect("hash", row.position, True)


async def swap_data(tx: Any, rows: list[Row], rng: random.Random, pg: bool) -> Expect:
    a, b = rng.sample(rows, 2)
    (da,) = await tx.fetchone("SELECT CAST(data AS TEXT) FROM events WHERE position = :p",
                              {"p": a.position})  # fmt: skip
    (db,) = await tx.fetchone("SELECT CAST(data AS TEXT) FROM events WHERE position = :p",
                              {"p": b.position})  # fmt: skip
    await _update(tx, a, "data = :d", {"d": db})
    await _update(tx, b, "data = :d", {"d": da})
    return Expect("swap data", min(a.position, b.position), True)


async def swap_versions(tx: Any, rows: list[Row], rng: random.Random, pg: bool) -> Expect:
    long = [r for r in rows if any(o.stream_id == r.stream_id and o != r for o in rows)]
    a = _pick(long, rng)
    b = _pick([r for r in long if r.stream_id == a.stream_id and r != a], rng)
    await _update(tx, a, "version = version + 100000", {})  # out of the way of the index
    await _update(tx, b, "version = :v", {"v": a.version})
    await _update(tx, a, "version = :v", {"v": b.version})
    return Expect("swap versions", min(a.position, b.position), True)


async def delete_row(tx: Any, rows: list[Row], rng: random.Random, pg: bool) -> Expect:
    row = _pick(rows, rng)
    await tx.execute("DELETE FROM events WHERE position = :p", {"p": row.position})
    after = _successor(rows, row)
    if after is not None:
        return Expect("delete", after.position, True)
    return Expect("delete tail", row.position, False)  # only a checkpoint sees it


async def delete_stream(tx: Any, rows: list[Row], rng: random.Random, pg: bool) -> Expect:
    row = _pick(rows, rng)
    await tx.execute("DELETE FROM events WHERE stream_id = :s", {"s": row.stream_id})
    first = min(r.position for r in rows if r.stream_id == row.stream_id)
    return Expect("delete stream", first, False)


async def _forge(tx: Any, rows: list[Row], rng: random.Random, pg: bool, how: str) -> Expect:
    """A forged event at the tail of a stream: without a hash, with a random one, or (on
    PostgreSQL, whose positions have room) chained correctly at a position a checkpoint
    covers, which only the checkpoint can tell."""
    heads = {r.stream_id: r for r in rows}  # rows are in position order: the last wins
    top = rows[-1].position  # the last checkpoint is at the head: it covers up to here
    candidates = [h for h in heads.values() if how != "chained" or h.position + (1 << 19) < top]
    head = _pick(candidates, rng)
    (prev, last_position) = await tx.fetchone(
        "SELECT hash, (SELECT max(position) FROM events) FROM events WHERE position = :p",
        {"p": head.position},
    )
    event_id, data, metadata = str(uuid.uuid4()), '{"amount": 1000000}', "{}"
    micros = 1_700_000_000_000_000 + rng.randrange(10**12)
    when: Any = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    version = head.version + 1
    if how == "chained":
        position = head.position + (1 << 19)  # inside the append's block: free, below the head
        forged: bytes | None = event_hash(bytes(prev), head.stream_id, version, event_id,
                                          "Deposited", 1, micros, data, metadata)  # fmt: skip
    else:
        position = int(last_position) + 1
        forged = None if how == "null" else rng.randbytes(32)
    columns = "position, stream_id, version, event_id, type, schema_version, data, metadata, " \
              "recorded_at, hash"  # fmt: skip
    values = ":p, :s, :v, :e, 'Deposited', 1, :d, :m, :w, :h"
    if not pg:
        columns = "category, " + columns
        values = "'acct', " + values
    await tx.execute(
        f"INSERT INTO events ({columns}) VALUES ({values})",
        {"p": position, "s": head.stream_id, "v": version, "e": event_id, "d": data,
         "m": metadata, "w": when if pg else micros, "h": forged},
    )  # fmt: skip
    return Expect(f"forge {how}", position, how != "chained")


async def forge_null(tx: Any, rows: list[Row], rng: random.Random, pg: bool) -> Expect:
    return await _forge(tx, rows, rng, pg, "null")


async def forge_random(tx: Any, rows: list[Row], rng: random.Random, pg: bool) -> Expect:
    return await _forge(tx, rows, rng, pg, "random")


async def forge_chained(tx: Any, rows: list[Row], rng: random.Random, pg: bool) -> Expect:
    return await _forge(tx, rows, rng, pg, "chained")


TAMPERING: list[Tamper] = [
    change_data, change_metadata, change_type, change_recorded_at, change_version,
    change_hash, swap_data, swap_versions, delete_row, delete_stream, forge_null,
    forge_random,
]  # fmt: skip
PG_ONLY: list[Tamper] = [forge_chained]


async def tampered(store: Any, tamper: Tamper | None, rows: list[Row], rng: random.Random
                   ) -> tuple[Expect | None, VerifyReport]:  # fmt: skip
    """Tamper in a transaction, verify what it sees, roll back."""
    pg = is_pg(store)
    result: list[Any] = []
    try:
        async with store.transaction() as tx:
            await bypass_guards(tx, pg)
            expect = None if tamper is None else await tamper(tx, rows, rng, pg)
            result = [expect, await verify_in(tx, key=KEY)]
            raise _Undo
    except _Undo:
        pass
    return result[0], result[1]


async def test_random_tampering_is_always_detected_at_its_position(store: Any) -> None:
    await run_trials(store, TRIALS, random.Random(19_3))


@pytest.mark.soak
async def test_soak_random_tampering(store: Any) -> None:
    await run_trials(store, 20 * TRIALS, random.Random(int(os.environ.get("SEED", "1919"))))


async def run_trials(store: Any, trials: int, rng: random.Random) -> None:
    await seed(store, rng)
    rows = await stored(store)
    assert len(rows) > 150
    clean = await verify(store, key=KEY)
    assert clean.ok and clean.events == len(rows) and clean.checkpoints >= 20, clean.to_dict()
    kinds = TAMPERING + (PG_ONLY if is_pg(store) else [])
    detected: dict[str, int] = {}
    for trial in range(trials):
        tamper = kinds[trial % len(kinds)] if trial < len(kinds) else rng.choice(kinds)
        expect, report = await tampered(store, tamper, rows, rng)
        assert expect is not None
        first = report.first_break
        assert not report.ok and first is not None, (trial, expect)
        if expect.exact:
            assert first.position == expect.position, (trial, expect, first)
        else:
            assert first.what == "checkpoint", (trial, expect, first)
            assert first.position is not None and first.through_position is not None
            assert first.position <= expect.position <= first.through_position, (expect, first)
        detected[expect.kind] = detected.get(expect.kind, 0) + 1
    assert sum(detected.values()) == trials
    assert len({k.split()[0] for k in detected}) >= 8, detected
    # negative control: the store the trials rolled back is untouched and verifies green
    _, report = await tampered(store, None, rows, rng)
    assert report.ok, report.to_dict()
    assert (await verify(store, key=KEY)).ok


async def test_without_checkpoints_a_deleted_tail_goes_unseen(store: Any) -> None:
    """The limit of per-stream chains, which signed checkpoints close: this is why the tail
    and whole-stream trials above must be (and are) caught by a checkpoint."""
    await store.append("acct-1", [NewEvent("Deposited", {"n": n}) for n in range(3)])
    await store.append("acct-2", [NewEvent("Deposited", {"n": 1})])
    rows = await stored(store)
    rng = random.Random(7)
    tail = next(r for r in rows if r.stream_id == "acct-1" and r.version == 2)

    async def delete_tail(tx: Any, rows: list[Row], rng: random.Random, pg: bool) -> Expect:
        await tx.execute("DELETE FROM events WHERE position = :p", {"p": tail.position})
        return Expect("delete tail", tail.position, False)

    _, report = await tampered(store, delete_tail, rows, rng)
    assert report.ok  # unseen without a checkpoint
    await sign_checkpoint(store, KEY)
    _, report = await tampered(store, delete_tail, rows, rng)
    assert not report.ok and report.first_break is not None
    assert report.first_break.what == "checkpoint"


async def test_a_signature_made_with_another_key_is_a_break(store: Any) -> None:
    await store.append("acct-1", [NewEvent("Deposited", {"n": 1})])
    await sign_checkpoint(store, KEY)
    assert (await verify(store, key=KEY)).ok
    other = ChainKey.hmac(b"another key of at least thirty-two bytes")
    report = await verify(store, key=other)
    assert not report.ok and report.first_break is not None
    assert "signed by key" in report.first_break.message
    # a forged signature under the right key id
    store_sql: Any = store
    async with store_sql.transaction() as tx:
        await tx.execute("UPDATE chain_checkpoints SET signature = :s", {"s": bytes(32)})
    report = await verify(store, key=KEY)
    assert not report.ok and report.first_break is not None
    assert "bad signature" in report.first_break.message
    assert (await verify(store)).ok  # without a key only the digests are checked
