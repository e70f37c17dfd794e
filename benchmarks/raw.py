"""The raw-driver baseline: sqlite3 / psycopg doing the same SQL as chronik, nothing else.

Same tables (chronik's own migrations create them, untimed), the same statements (taken from
the backends, so they cannot drift apart), one transaction per append, the same durability,
the same payload bytes (msgspec JSON of the same dataclasses, a correlation id in the
metadata) and, on reads, msgspec decoding straight into the same typed classes and the same
``evolve``. What it leaves out is everything chronik adds around the SQL: validation, the
event loop and its worker threads or pool, ``RecordedEvent`` objects, the registry.

W5S reads the newest row of chronik's ``snapshots`` table (written here, untimed, with the
msgspec JSON of the state) and the events after it. W6P pages the log with chronik's
``read_all`` SELECT (pages of 500) and applies each page in one transaction: one
``executemany`` of the read model's upsert (one row per event) and the update of its own
checkpoint row, guarded by the position it expects.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec

import chronik
from benchmarks.common import Sizes, Target, timer
from benchmarks.model import (
    Account,
    Deposited,
    Opened,
    account_events,
    balance_change,
    balances_ddl,
    balances_upsert,
    deposited,
    evolve,
    expected_balances,
    initial_state,
    stream_name,
)
from chronik.snapshots import state_version_of

__all__ = ["chain", "w2"]

Metrics = dict[str, float]
Row = tuple[Any, ...]
BIG_STREAM = "account-big"
PAGE = 500
NEWER_EVENTS = 100
CHECKPOINT = "raw_balances"
STATE_VERSION = state_version_of(Account)
decode_account = msgspec.json.Decoder(Account).decode

TYPE_NAMES: dict[type[Any], str] = {Opened: "Opened", Deposited: "Deposited"}
DECODERS: dict[str, Callable[[bytes], Any]] = {
    name: msgspec.json.Decoder(cls).decode for cls, name in TYPE_NAMES.items()
}
_encode = msgspec.json.encode


def _column_index(columns: str) -> dict[str, int]:
    """Where each column of a backend's SELECT list is (``CAST(data AS BLOB)`` is ``data``)."""
    out = {}
    for i, item in enumerate(columns.split(",")):
        name = item.strip()
        if name.upper().startswith("CAST("):
            name = name[5:].split()[0]
        out[name] = i
    return out


def _metadata() -> bytes:
    return _encode({"correlation_id": str(uuid.uuid4())})


async def _create_schema(target: Target) -> None:
    store = await chronik.connect(target.chronik_url())
    await store.close()


class _Sqlite:
    """chronik's SQLite statements on one plain sqlite3 connection."""

    def __init__(self, path: str) -> None:
        from chronik.store import sqlite as backend

        self.insert = backend._INSERT
        columns = backend._COLUMNS
        self.at = _column_index(columns)
        self.read_stream = (
            f"SELECT {columns} FROM events WHERE stream_id = ? AND version >= ? "
            "ORDER BY version LIMIT ?"
        )
        self.read_all = f"SELECT {columns} FROM events WHERE position > ? ORDER BY position LIMIT ?"
        self.balances = "balances"
        self.checkpoints = "raw_checkpoints"
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")

    def append(self, stream_id: str, expected: int, events: Iterable[object]) -> None:
        category = stream_id.partition("-")[0]
        meta = _metadata()
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT max(version), max(position) FROM events WHERE stream_id = ?",
                (stream_id,),
            ).fetchone()
            current = -1 if row[0] is None else row[0]
            if current != expected:
                raise AssertionError(f"{stream_id} is at {current}, not {expected}")
            now = time.time_ns() // 1000
            conn.executemany(
                self.insert,
                [
                    (
                        stream_id,
                        category,
                        current + offset,
                        str(uuid.uuid4()),
                        TYPE_NAMES[type(ev)],
                        1,
                        _encode(ev),
                        meta,
                        now,
                    )
                    for offset, ev in enumerate(events, start=1)
                ],
            )
            conn.execute("SELECT last_insert_rowid()").fetchone()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def stream_pages(self, stream_id: str, version: int = 0) -> Iterator[list[Row]]:
        while True:
            rows = self.conn.execute(self.read_stream, (stream_id, version, PAGE)).fetchall()
            yield rows
            if len(rows) < PAGE:
                return
            version = rows[-1][self.at["version"]] + 1

    def log_pages(self, after: int = 0) -> Iterator[list[Row]]:
        while True:
            rows = self.conn.execute(self.read_all, (after, PAGE)).fetchall()
            yield rows
            if len(rows) < PAGE:
                return
            after = rows[-1][self.at["position"]]

    def save_snapshot(self, stream_id: str, version: int, state: bytes) -> None:
        self.conn.execute(
            "INSERT INTO snapshots (stream_id, state_version, version, category, state, "
            "created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (
                stream_id,
                STATE_VERSION,
                version,
                stream_id.partition("-")[0],
                state,
                time.time_ns() // 1000,
            ),
        )

    def newest_snapshot(self, stream_id: str) -> tuple[int, bytes] | None:
        row = self.conn.execute(
            "SELECT version, state FROM snapshots WHERE stream_id = ? AND state_version = ? "
            "ORDER BY version DESC LIMIT 1",
            (stream_id, STATE_VERSION),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def projection_setup(self) -> int:
        """Create the read model and the checkpoint row; the checkpoint position."""
        conn = self.conn
        conn.execute(balances_ddl(self.balances))
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.checkpoints} "
            "(name TEXT PRIMARY KEY, position INTEGER NOT NULL)"
        )
        conn.execute(
            f"INSERT INTO {self.checkpoints} VALUES (?, 0) ON CONFLICT (name) DO NOTHING",
            (CHECKPOINT,),
        )
        row = conn.execute(
            f"SELECT position FROM {self.checkpoints} WHERE name = ?", (CHECKPOINT,)
        ).fetchone()
        return int(row[0])

    def apply_page(self, upserts: list[dict[str, Any]], expected: int, position: int) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(balances_upsert(self.balances), upserts)
            moved = conn.execute(
                f"UPDATE {self.checkpoints} SET position = ? WHERE name = ? AND position = ?",
                (position, CHECKPOINT, expected),
            ).rowcount
            if moved != 1:
                raise AssertionError("the checkpoint moved under the projection")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def read_balances(self) -> dict[str, tuple[int, int]]:
        rows = self.conn.execute(
            f"SELECT account, balance_cents, deposits FROM {self.balances}"
        ).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def close(self) -> None:
        self.conn.close()


class _Postgres:
    """chronik's PostgreSQL statements on one plain psycopg connection (autocommit)."""

    def __init__(self, target: Target) -> None:
        import psycopg
        from psycopg.adapt import Buffer, Loader
        from psycopg.pq import Format

        from chronik.store import pg_support as backend

        class RawJson(Loader):
            def load(self, data: Buffer) -> bytes:
                return bytes(data)

        class RawJsonBinary(RawJson):
            format = Format.BINARY

        statements = backend._Statements(target.schema)
        self.at = _column_index(statements.columns)
        self.append_sql = statements.append
        # chronik sends a single event with scalar parameters when its backend has that form
        self.append_one_sql: str | None = getattr(statements, "append_one", None)
        self.read_stream = statements.read_forward
        self.read_all = statements.read_all(categories=False, types=False)
        self.schema = f'"{target.schema}"'
        self.balances = f"{self.schema}.balances"
        self.checkpoints = f"{self.schema}.raw_checkpoints"
        self.conn = psycopg.connect(target.pg_url, autocommit=True)
        self.conn.adapters.register_loader("json", RawJson)
        self.conn.adapters.register_loader("json", RawJsonBinary)
        self.conn.execute("SET TIME ZONE 'UTC'; SET plan_cache_mode = force_generic_plan")

    def append(self, stream_id: str, expected: int, events: Iterable[object]) -> None:
        evs = list(events)
        meta = _metadata().decode()
        if len(evs) == 1 and self.append_one_sql is not None:
            (ev,) = evs
            row = self.conn.execute(
                self.append_one_sql,
                {
                    "stream_id": stream_id,
                    "expected": expected,
                    "event_id": uuid.uuid4(),
                    "type": TYPE_NAMES[type(ev)],
                    "schema_version": 1,
                    "data": _encode(ev).decode(),
                    "metadata": meta,
                },
            ).fetchall()
            if len(row) != 1:
                raise AssertionError(f"{stream_id}: the append wrote nothing")
            return
        rows = self.conn.execute(
            self.append_sql,
            {
                "stream_id": stream_id,
                "expected": expected,
                "event_ids": [uuid.uuid4() for _ in evs],
                "types": [TYPE_NAMES[type(ev)] for ev in evs],
                "schema_versions": [1] * len(evs),
                "data": [_encode(ev).decode() for ev in evs],
                "metadata": [meta] * len(evs),
            },
        ).fetchall()
        if len(rows) != len(evs):
            raise AssertionError(f"{stream_id}: wrote {len(rows)} of {len(evs)} events")

    def stream_pages(self, stream_id: str, version: int = 0) -> Iterator[list[Row]]:
        while True:
            rows = self.conn.execute(self.read_stream, (stream_id, version, PAGE)).fetchall()
            yield rows
            if len(rows) < PAGE:
                return
            version = rows[-1][self.at["version"]] + 1

    def log_pages(self, after: int = 0) -> Iterator[list[Row]]:
        params: dict[str, Any] = {"after": after, "page": PAGE}
        while True:
            rows = self.conn.execute(self.read_all, params).fetchall()
            yield rows
            if len(rows) < PAGE:
                return
            params["after"] = rows[-1][self.at["position"]]

    def save_snapshot(self, stream_id: str, version: int, state: bytes) -> None:
        self.conn.execute(
            f"INSERT INTO {self.schema}.snapshots (stream_id, state_version, version, category, "
            "state) VALUES (%s, %s, %s, %s, %s)",
            (stream_id, STATE_VERSION, version, stream_id.partition("-")[0], state),
        )

    def newest_snapshot(self, stream_id: str) -> tuple[int, bytes] | None:
        row = self.conn.execute(
            f"SELECT version, state FROM {self.schema}.snapshots "
            "WHERE stream_id = %s AND state_version = %s ORDER BY version DESC LIMIT 1",
            (stream_id, STATE_VERSION),
        ).fetchone()
        return None if row is None else (row[0], row[1])

    def projection_setup(self) -> int:
        """Create the read model and the checkpoint row; the checkpoint position."""
        conn = self.conn
        conn.execute(balances_ddl(self.balances))
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self.checkpoints} "
            "(name text PRIMARY KEY, position bigint NOT NULL)"
        )
        conn.execute(
            f"INSERT INTO {self.checkpoints} VALUES (%s, 0) ON CONFLICT (name) DO NOTHING",
            (CHECKPOINT,),
        )
        row = conn.execute(
            f"SELECT position FROM {self.checkpoints} WHERE name = %s", (CHECKPOINT,)
        ).fetchone()
        assert row is not None
        return int(row[0])

    def apply_page(self, upserts: list[dict[str, Any]], expected: int, position: int) -> None:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(balances_upsert(self.balances, "pyformat"), upserts)
            cur.execute(
                f"UPDATE {self.checkpoints} SET position = %s WHERE name = %s AND position = %s",
                (position, CHECKPOINT, expected),
            )
            if cur.rowcount != 1:
                raise AssertionError("the checkpoint moved under the projection")

    def read_balances(self) -> dict[str, tuple[int, int]]:
        rows = self.conn.execute(
            f"SELECT account, balance_cents, deposits FROM {self.balances}"
        ).fetchall()
        return {r[0]: (int(r[1]), int(r[2])) for r in rows}

    def close(self) -> None:
        self.conn.close()


_Db = _Sqlite | _Postgres


def _open(target: Target) -> tuple[_Db, int, int]:
    """The connection, and the column indexes of ``type`` and ``data`` in a read row."""
    asyncio.run(_create_schema(target))
    db: _Db = _Sqlite(target.sqlite_path) if target.backend == "sqlite" else _Postgres(target)
    return db, db.at["type"], db.at["data"]


def _load(
    db: _Db, stream_id: str, type_at: int, data_at: int, state: Any = None, version: int = -1
) -> tuple[Any, int]:
    """Fold the events of ``stream_id`` after ``version`` into ``state`` (default: from the
    first event); returns the state and how many events were folded."""
    if state is None:
        state = initial_state()
    count = 0
    decoders = DECODERS
    for rows in db.stream_pages(stream_id, version + 1):
        for row in rows:
            state = evolve(state, decoders[row[type_at]](row[data_at]))
        count += len(rows)
    return state, count


def chain(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    db, type_at, data_at = _open(target)
    try:
        out: dict[str, Metrics] = {}
        per_stream = sizes.w1_events
        with timer() as t:
            for index in range(sizes.w1_streams):
                db.append(stream_name(index), -1, account_events(index, per_stream))
        events = sizes.w1_streams * per_stream
        out["W1"] = {"events": events, "seconds": t.seconds, "events_per_s": events / t.seconds}

        folded = 0
        with timer() as t:
            for index in range(sizes.w1_streams):
                _state, n = _load(db, stream_name(index), type_at, data_at)
                folded += n
        if folded != events:
            raise AssertionError(f"W4 folded {folded} events, expected {events}")
        out["W4"] = {
            "events": folded,
            "seconds": t.seconds,
            "aggregates_per_s": sizes.w1_streams / t.seconds,
            "events_per_s": folded / t.seconds,
        }

        count = 0
        decoders = DECODERS
        with timer() as t:
            for rows in db.log_pages():
                for row in rows:
                    decoders[row[type_at]](row[data_at])
                count += len(rows)
        if count != events:
            raise AssertionError(f"W6 read {count} events, expected {events}")
        out["W6"] = {"events": count, "seconds": t.seconds, "events_per_s": count / t.seconds}
        out["W6P"] = _project(db, sizes, type_at, data_at)

        version = -1
        while version < sizes.w5_events - 1:
            n = min(1000, sizes.w5_events - 1 - version)
            batch: list[object] = (
                list(account_events(999_999, n))
                if version < 0
                else [deposited(999_999, version + 1 + k) for k in range(n)]
            )
            db.append(BIG_STREAM, version, batch)
            version += n
        times = []
        for _ in range(sizes.w5_loads):
            with timer() as t:
                _state, n = _load(db, BIG_STREAM, type_at, data_at)
            if n != sizes.w5_events:
                raise AssertionError(f"W5 loaded {n} events")
            times.append(t.seconds * 1000)
        out["W5"] = {"events": sizes.w5_events, "ms": statistics.median(times)}
        out["W5S"] = _load_from_snapshot(db, sizes, type_at, data_at)
        return out
    finally:
        db.close()


def _project(db: _Db, sizes: Sizes, type_at: int, data_at: int) -> Metrics:
    """W6P: pages of 500 from the start, each decoded and applied in one transaction (the
    upserts and the checkpoint); then the read model is checked against what W1 wrote."""
    decoders = DECODERS
    stream_at, position_at = db.at["stream_id"], db.at["position"]
    count = 0
    with timer() as t:
        checkpoint = db.projection_setup()
        for rows in db.log_pages(checkpoint):
            if not rows:
                continue
            upserts = []
            for row in rows:
                cents, deposits = balance_change(decoders[row[type_at]](row[data_at]))
                upserts.append({"a": row[stream_at], "c": cents, "d": deposits})
            position = rows[-1][position_at]
            db.apply_page(upserts, checkpoint, position)
            checkpoint = position
            count += len(rows)
    expected = sizes.w1_streams * sizes.w1_events
    if count != expected:
        raise AssertionError(f"W6P applied {count} events, expected {expected}")
    balances = db.read_balances()
    want = {
        stream_name(i): v for i, v in expected_balances(sizes.w1_streams, sizes.w1_events).items()
    }
    if balances != want:
        raise AssertionError("W6P: the read model differs from what W1 wrote")
    return {
        "events": count,
        "seconds": t.seconds,
        "events_per_s": count / t.seconds,
        "accounts": len(balances),
        "balance_cents_total": sum(cents for cents, _ in balances.values()),
    }


def _load_from_snapshot(db: _Db, sizes: Sizes, type_at: int, data_at: int) -> Metrics:
    """W5S: the W5 account's state saved as a snapshot row at its last version (untimed),
    100 more events, then the newest snapshot row + the events after it, ``w5_loads`` times."""
    at = sizes.w5_events - 1
    state, _n = _load(db, BIG_STREAM, type_at, data_at)
    db.save_snapshot(BIG_STREAM, at, _encode(state))
    db.append(BIG_STREAM, at, [deposited(999_999, at + 1 + k) for k in range(NEWER_EVENTS)])
    times = []
    for _ in range(sizes.w5_loads):
        with timer() as t:
            found = db.newest_snapshot(BIG_STREAM)
            if found is None:
                raise AssertionError("W5S: no snapshot row")
            version, raw_state = found
            state, n = _load(db, BIG_STREAM, type_at, data_at, decode_account(raw_state), version)
        if version != at or n != NEWER_EVENTS:
            raise AssertionError(f"W5S folded {n} events after a snapshot at {version}")
        times.append(t.seconds * 1000)
    if state.deposits != at + NEWER_EVENTS:
        raise AssertionError(f"W5S: {state.deposits} deposits, expected {at + NEWER_EVENTS}")
    return {"events": NEWER_EVENTS, "events_in_snapshot": at + 1, "ms": statistics.median(times)}


def w2(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    db, _type_at, _data_at = _open(target)
    try:
        with timer() as t:
            for index in range(sizes.w2_streams):
                stream = stream_name(index)
                for version, ev in enumerate(account_events(index, sizes.w2_events)):
                    db.append(stream, version - 1, (ev,))
        events = sizes.w2_streams * sizes.w2_events
        return {"W2": {"events": events, "seconds": t.seconds, "events_per_s": events / t.seconds}}
    finally:
        db.close()


def info() -> dict[str, Any]:
    import psycopg

    return {"sqlite": sqlite3.sqlite_version, "psycopg": psycopg.__version__}
