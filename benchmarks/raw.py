"""The raw-driver baselines: sqlite3 / psycopg doing the same work, nothing else.

Two baselines, both one transaction per append, the same durability, the same payload bytes
(msgspec JSON of the same dataclasses, a correlation id in the metadata) and, on reads,
msgspec decoding straight into the same typed classes and the same ``evolve``:

``raw`` (the plain baseline, :class:`_PlainSqlite` / :class:`_PlainPostgres`): the simplest
driver code for the same work. A plain table ``events (stream_id, version, type, data,
metadata, recorded_at, PRIMARY KEY (stream_id, version))`` with no other index (SQLite: a
rowid table, the rowid is the position; PostgreSQL: an identity column as the position with
the one index the log read needs), a plain ``INSERT`` whose version check is the primary key
(a taken version fails the insert), a plain ``SELECT ... WHERE stream_id = ? ORDER BY
version`` to load a stream and ``SELECT ... WHERE position > ? ORDER BY position LIMIT 500``
pages to read the log. No event ids, no categories, no global-order protection: what
chronik's schema and guarantees cost is the distance to this column.

``raw-chronik-sql`` (:class:`_ChronikSqlite` / :class:`_ChronikPostgres`, the baseline of the
runs before issue 13): chronik's own tables (its migrations create them, untimed) and
statements (taken from the backends, so they cannot drift apart). What it leaves out is
everything chronik adds around the SQL: validation, the event loop and its worker threads or
pool, ``RecordedEvent`` objects, the registry.

W5S reads the newest snapshot row (written here, untimed, with the msgspec JSON of the state;
the plain baseline has its own ``snapshots (stream_id, version, state)`` table, the other
chronik's) and the events after it. W6P pages the log (pages of 500) and applies each page in
one transaction: one ``executemany`` of the read model's upsert (one row per event) and the
update of its own checkpoint row, guarded by the position it expects. W8 (plain baseline
only): 64 threads, each with its own sqlite3 connection (``timeout`` = busy_timeout) or
sharing a psycopg ``ConnectionPool`` of 10 (chronik's default pool size), each appending
single events to its own stream with the plain ``INSERT``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec

import chronik
from benchmarks.common import Sizes, Target, run_threads, timer
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

__all__ = ["W8_POOL", "chain", "create_plain_schema", "plain_insert", "w2", "w8"]

Metrics = dict[str, float]
Row = tuple[Any, ...]
BIG_STREAM = "account-big"
PAGE = 500
NEWER_EVENTS = 100
CHECKPOINT = "raw_balances"
STATE_VERSION = state_version_of(Account)
W8_POOL = 10
"""W8 on PostgreSQL: the plain baseline's pool size (chronik's default ``pool_max``)."""
W8_BUSY_TIMEOUT = 60.0
"""W8 on SQLite: each thread's busy timeout in seconds (sqlite3's ``timeout``)."""
W8_WARM_UP = 900_000
"""W8: the warm-up streams' first account index (one untimed event each)."""
decode_account = msgspec.json.Decoder(Account).decode

TYPE_NAMES: dict[type[Any], str] = {Opened: "Opened", Deposited: "Deposited"}
DECODERS: dict[str, Callable[[bytes | str], Any]] = {
    name: msgspec.json.Decoder(cls).decode for cls, name in TYPE_NAMES.items()
}
_encode = msgspec.json.encode

PLAIN_SQLITE_DDL = (
    """CREATE TABLE IF NOT EXISTS events (
    stream_id   TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    type        TEXT    NOT NULL,
    data        TEXT    NOT NULL,
    metadata    TEXT    NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (stream_id, version)
)""",
    """CREATE TABLE IF NOT EXISTS snapshots (
    stream_id TEXT    NOT NULL,
    version   INTEGER NOT NULL,
    state     BLOB    NOT NULL,
    PRIMARY KEY (stream_id, version)
)""",
)
"""The plain baseline's SQLite tables: a rowid table (the rowid is the log position) and the
primary key's index; nothing else."""


def plain_postgres_ddl(schema: str) -> tuple[str, ...]:
    """The plain baseline's PostgreSQL tables in ``schema``: the heap, the primary key's index
    and the position's (the log read pages by position)."""
    s = f'"{schema}"'
    return (
        f"""CREATE TABLE IF NOT EXISTS {s}.events (
    position    bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    stream_id   text        NOT NULL,
    version     integer     NOT NULL,
    type        text        NOT NULL,
    data        json        NOT NULL,
    metadata    json        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream_id, version)
)""",
        f"""CREATE TABLE IF NOT EXISTS {s}.snapshots (
    stream_id text    NOT NULL,
    version   integer NOT NULL,
    state     bytea   NOT NULL,
    PRIMARY KEY (stream_id, version)
)""",
    )


def plain_insert(target: Target) -> str:
    """The plain baseline's one-event ``INSERT`` (its version check is the primary key)."""
    if target.backend == "sqlite":
        return (
            "INSERT INTO events (stream_id, version, type, data, metadata, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?)"
        )
    return (
        f'INSERT INTO "{target.schema}".events (stream_id, version, type, data, metadata) '
        "VALUES (%s, %s, %s, %s, %s)"
    )


def create_plain_schema(target: Target) -> None:
    """Create the plain baseline's tables (untimed)."""
    if target.backend == "sqlite":
        conn = sqlite3.connect(target.sqlite_path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            for ddl in PLAIN_SQLITE_DDL:
                conn.execute(ddl)
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(target.pg_url, autocommit=True) as pg:
        for ddl in plain_postgres_ddl(target.schema):
            pg.execute(ddl)


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


class _PlainReads:
    """The plain baseline's reads, the same on both drivers: one SELECT of a stream, the
    log in pages of ``PAGE`` by position."""

    conn: Any
    read_stream: str
    read_all: str

    def stream_pages(self, stream_id: str, version: int = 0) -> Iterator[list[Row]]:
        yield self.conn.execute(self.read_stream, (stream_id, version)).fetchall()

    def log_pages(self, after: int = 0) -> Iterator[list[Row]]:
        while True:
            rows = self.conn.execute(self.read_all, (after, PAGE)).fetchall()
            yield rows
            if len(rows) < PAGE:
                return
            after = rows[-1][0]


class _SqliteBase:
    """One plain sqlite3 connection in autocommit mode, WAL, ``synchronous=FULL``; the read
    model of W6P."""

    at: dict[str, int]

    def __init__(self, path: str) -> None:
        self.balances = "balances"
        self.checkpoints = "raw_checkpoints"
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")

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


class _PlainSqlite(_PlainReads, _SqliteBase):
    """The plain baseline on SQLite: :data:`PLAIN_SQLITE_DDL`, the simplest statements."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        columns = "rowid, stream_id, version, type, data, metadata, recorded_at"
        self.at = _column_index(columns.replace("rowid", "position"))
        self.insert = plain_insert(Target("sqlite", sqlite_path=path))
        self.read_stream = (
            f"SELECT {columns} FROM events WHERE stream_id = ? AND version >= ? ORDER BY version"
        )
        self.read_all = f"SELECT {columns} FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?"

    def append(self, stream_id: str, expected: int, events: Iterable[object]) -> None:
        meta = _metadata().decode()
        now = time.time_ns() // 1000
        rows = [
            (stream_id, expected + offset, TYPE_NAMES[type(ev)], _encode(ev).decode(), meta, now)
            for offset, ev in enumerate(events, start=1)
        ]
        conn = self.conn
        if len(rows) == 1:  # autocommit: the INSERT is its own transaction
            conn.execute(self.insert, rows[0])
            return
        conn.execute("BEGIN")
        try:
            conn.executemany(self.insert, rows)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def save_snapshot(self, stream_id: str, version: int, state: bytes) -> None:
        self.conn.execute(
            "INSERT INTO snapshots (stream_id, version, state) VALUES (?, ?, ?)",
            (stream_id, version, state),
        )

    def newest_snapshot(self, stream_id: str) -> tuple[int, bytes] | None:
        row = self.conn.execute(
            "SELECT version, state FROM snapshots WHERE stream_id = ? "
            "ORDER BY version DESC LIMIT 1",
            (stream_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1])


class _ChronikSqlite(_SqliteBase):
    """chronik's SQLite statements on chronik's tables (the ``raw-chronik-sql`` baseline)."""

    def __init__(self, path: str) -> None:
        from chronik.store.chain import event_hash
        from chronik.store.sqlite_statements import SqliteStatements

        super().__init__(path)
        # chronik's append computes the hash chain (migration 0016) with this function
        self.conn.create_function("chronik_event_hash", 9, event_hash, deterministic=True)
        statements = SqliteStatements()
        self.insert = statements.append
        self.stream_version = statements.stream_version
        self.at = _column_index(statements.columns)
        self.read_stream = statements.read_forward
        self.read_all = statements.read_all(categories=None, types=None)

    def append(self, stream_id: str, expected: int, events: Iterable[object]) -> None:
        category = stream_id.partition("-")[0]
        meta = _metadata()
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(self.stream_version, (stream_id,)).fetchone()
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


def _raw_json_connection(target: Target) -> Any:
    """A psycopg connection (autocommit) that hands ``json`` columns over as bytes, so they
    are decoded by msgspec like every other system's payloads."""
    import psycopg
    from psycopg.adapt import Buffer, Loader
    from psycopg.pq import Format

    class RawJson(Loader):
        def load(self, data: Buffer) -> bytes:
            return bytes(data)

    class RawJsonBinary(RawJson):
        format = Format.BINARY

    conn = psycopg.connect(target.pg_url, autocommit=True)
    conn.adapters.register_loader("json", RawJson)
    conn.adapters.register_loader("json", RawJsonBinary)
    return conn


class _PostgresBase:
    """One plain psycopg connection (autocommit); the read model of W6P."""

    at: dict[str, int]

    def __init__(self, target: Target) -> None:
        self.schema = f'"{target.schema}"'
        self.balances = f"{self.schema}.balances"
        self.checkpoints = f"{self.schema}.raw_checkpoints"
        self.conn = _raw_json_connection(target)

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


class _ChronikPostgres(_PostgresBase):
    """chronik's PostgreSQL statements on chronik's tables (the ``raw-chronik-sql``
    baseline)."""

    def __init__(self, target: Target) -> None:
        from chronik.store.postgres_statements import PostgresStatements

        super().__init__(target)
        statements = PostgresStatements(target.schema)
        self.at = _column_index(statements.columns)
        self.append_sql = statements.append
        # chronik sends a single event with scalar parameters
        self.append_one_sql: str | None = statements.append_one
        self.read_stream = statements.read_forward
        self.read_all = statements.read_all(categories=None, types=None)
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


class _PlainPostgres(_PlainReads, _PostgresBase):
    """The plain baseline on PostgreSQL: :func:`plain_postgres_ddl`, the simplest
    statements, psycopg's defaults."""

    def __init__(self, target: Target) -> None:
        super().__init__(target)
        columns = "position, stream_id, version, type, data, metadata, recorded_at"
        self.at = _column_index(columns)
        self.insert = plain_insert(target)
        self.read_stream = (
            f"SELECT {columns} FROM {self.schema}.events "
            "WHERE stream_id = %s AND version >= %s ORDER BY version"
        )
        self.read_all = (
            f"SELECT {columns} FROM {self.schema}.events "
            "WHERE position > %s ORDER BY position LIMIT %s"
        )

    def append(self, stream_id: str, expected: int, events: Iterable[object]) -> None:
        meta = _metadata().decode()
        rows = [
            (stream_id, expected + offset, TYPE_NAMES[type(ev)], _encode(ev).decode(), meta)
            for offset, ev in enumerate(events, start=1)
        ]
        if len(rows) == 1:  # autocommit: the INSERT is its own transaction
            self.conn.execute(self.insert, rows[0])
            return
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(self.insert, rows)

    def save_snapshot(self, stream_id: str, version: int, state: bytes) -> None:
        self.conn.execute(
            f"INSERT INTO {self.schema}.snapshots (stream_id, version, state) VALUES (%s, %s, %s)",
            (stream_id, version, state),
        )

    def newest_snapshot(self, stream_id: str) -> tuple[int, bytes] | None:
        row = self.conn.execute(
            f"SELECT version, state FROM {self.schema}.snapshots WHERE stream_id = %s "
            "ORDER BY version DESC LIMIT 1",
            (stream_id,),
        ).fetchone()
        return None if row is None else (row[0], row[1])


_Db = _PlainSqlite | _ChronikSqlite | _PlainPostgres | _ChronikPostgres


def _open(target: Target, chronik_sql: bool) -> tuple[_Db, int, int]:
    """The tables (created untimed), the connection, and the column indexes of ``type`` and
    ``data`` in a read row. ``chronik_sql``: the ``raw-chronik-sql`` baseline."""
    db: _Db
    if chronik_sql:
        asyncio.run(_create_schema(target))
        if target.backend == "sqlite":
            db = _ChronikSqlite(target.sqlite_path)
        else:
            db = _ChronikPostgres(target)
    else:
        create_plain_schema(target)
        db = (
            _PlainSqlite(target.sqlite_path)
            if target.backend == "sqlite"
            else _PlainPostgres(target)
        )
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


def chain(target: Target, sizes: Sizes, *, chronik_sql: bool = False) -> dict[str, Metrics]:
    """W1, then W4, W6 and W6P over what W1 wrote, then W5 and W5S (one database)."""
    db, type_at, data_at = _open(target, chronik_sql)
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


def w2(target: Target, sizes: Sizes, *, chronik_sql: bool = False) -> dict[str, Metrics]:
    db, _type_at, _data_at = _open(target, chronik_sql)
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


# -- W8: 64 threads, one event an INSERT ---------------------------------------------------


def _plain_row(target: Target, stream: str, version: int, event: object) -> tuple[Any, ...]:
    row = (stream, version, TYPE_NAMES[type(event)], _encode(event).decode(), _metadata().decode())
    return (*row, time.time_ns() // 1000) if target.backend == "sqlite" else row


def w8(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    """W8 with the plain baseline: ``w8_tasks`` threads, each appending ``w8_events`` single
    events to its own stream with the plain ``INSERT`` (autocommit: one transaction each).
    SQLite: one connection per thread, busy timeout :data:`W8_BUSY_TIMEOUT`; PostgreSQL: one
    ``psycopg_pool.ConnectionPool`` of :data:`W8_POOL` shared by the threads. Untimed before
    the barrier: connecting and one warm-up event per thread on a stream of its own."""
    create_plain_schema(target)
    insert = plain_insert(target)
    per = sizes.w8_events

    def events(index: int) -> Iterator[tuple[Any, ...]]:
        stream = stream_name(index)
        for version, ev in enumerate(account_events(index, per)):
            yield _plain_row(target, stream, version, ev)

    def warm_up(index: int) -> tuple[Any, ...]:
        return _plain_row(target, stream_name(W8_WARM_UP + index), 0, next(account_events(0, 1)))

    if target.backend == "sqlite":

        def work(index: int, barrier: threading.Barrier) -> None:
            conn = sqlite3.connect(
                target.sqlite_path, isolation_level=None, timeout=W8_BUSY_TIMEOUT
            )
            try:
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute(insert, warm_up(index))
                barrier.wait()
                for row in events(index):
                    conn.execute(insert, row)
            finally:
                conn.close()

        seconds = run_threads(sizes.w8_tasks, work)
        check = sqlite3.connect(target.sqlite_path)
        try:
            stored = check.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            check.close()
    else:
        from psycopg_pool import ConnectionPool

        with ConnectionPool(
            target.pg_url, min_size=W8_POOL, max_size=W8_POOL, kwargs={"autocommit": True}
        ) as pool:
            pool.wait()

            def work(index: int, barrier: threading.Barrier) -> None:
                with pool.connection() as conn:
                    conn.execute(insert, warm_up(index))
                barrier.wait()
                for row in events(index):
                    with pool.connection() as conn:
                        conn.execute(insert, row)

            seconds = run_threads(sizes.w8_tasks, work)
            with pool.connection() as pg:
                found = pg.execute(f'SELECT count(*) FROM "{target.schema}".events').fetchone()
                stored = found[0] if found else 0
    total = sizes.w8_tasks * per
    if stored != total + sizes.w8_tasks:
        raise AssertionError(f"W8: {stored} rows stored, {total + sizes.w8_tasks} appended")
    return {
        "W8": {
            "events": total,
            "tasks": sizes.w8_tasks,
            "seconds": seconds,
            "events_per_s": total / seconds,
        }
    }


def info() -> dict[str, Any]:
    import psycopg

    return {"sqlite": sqlite3.sqlite_version, "psycopg": psycopg.__version__}
