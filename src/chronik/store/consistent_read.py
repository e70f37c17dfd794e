"""One consistent read of a whole store, from outside any running chronik (backups).

A read-only snapshot of the events after a position: on SQLite one read transaction on a
read-only connection; on PostgreSQL one ``REPEATABLE READ READ ONLY`` transaction that reads
only below the read horizon of its snapshot (so an incremental read from that horizon later
has no gaps). Rows come in pages of :data:`PAGE`. Backend-specific, so it lives in the store
layer (``chronik.ops.backup`` uses it).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from chronik.errors import BackupError, StoreNotFound
from chronik.store.urls import parse_store_url

__all__ = ["PAGE", "Row", "Snapshot", "Truncated", "open_snapshot"]

PAGE = 5_000
"""Rows per page."""


Row = tuple[int, str, str, int, str, int, int, str, str]


Truncated = tuple[str, int, int, int]
"""What retention removed from one stream: ``(stream_id, through_version, events,
last_position)`` (migration 0014)."""


@dataclass
class Snapshot:
    backend: str
    horizon: int | None
    since_event_id: str | None
    rows: Iterator[list[Row]]
    truncated: list[Truncated] = field(default_factory=list)
    """read in the same snapshot as the rows"""


_TRUNCATED = (
    "SELECT stream_id, max(through_version), sum(events), max(last_position) "
    "FROM {truncations} GROUP BY stream_id ORDER BY stream_id"
)


def _truncated(rows: list[tuple[object, ...]]) -> list[Truncated]:
    return [(str(s), int(str(v)), int(str(n)), int(str(p))) for s, v, n, p in rows]


_SQLITE_ROWS = (
    "SELECT position, event_id, stream_id, version, type, schema_version, recorded_at, "
    "data, metadata FROM events WHERE position > ? ORDER BY position"
)


@contextlib.contextmanager
def _sqlite_snapshot(path: str, since: int) -> Iterator[Snapshot]:
    if not Path(path).is_file():
        raise StoreNotFound(str(Path(path).resolve()), "no such file")
    uri = Path(path).resolve().as_uri() + "?mode=ro"  # as_uri: '?', '#' and '%' escaped
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("BEGIN")  # one read transaction: one snapshot for every statement
        try:
            found = conn.execute(
                "SELECT event_id FROM events WHERE position <= ? ORDER BY position DESC LIMIT 1",
                (since,),
            ).fetchone()
        except sqlite3.OperationalError as exc:
            raise StoreNotFound(str(Path(path).resolve()), f"no events table ({exc})") from exc

        def pages() -> Iterator[list[Row]]:
            cur = conn.execute(_SQLITE_ROWS, (since,))
            while rows := cur.fetchmany(PAGE):
                yield [
                    (p, e, s, v, t, sv, at, _text(d), _text(m))
                    for p, e, s, v, t, sv, at, d, m in rows
                ]

        truncated = _truncated(
            conn.execute(_TRUNCATED.format(truncations="truncations")).fetchall()
        )
        since_id = found[0] if found and since else None
        yield Snapshot("sqlite", None, since_id, pages(), truncated)
        conn.execute("COMMIT")
    finally:
        conn.close()


def _text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8")


@contextlib.contextmanager
def _postgres_snapshot(conninfo: str, schema: str, since: int) -> Iterator[Snapshot]:
    import psycopg
    from psycopg import sql

    from chronik.store.pg_support import _unavailable

    s = sql.Identifier(schema)
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.OperationalError as exc:
        raise _unavailable(exc) from exc
    try:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            row = conn.execute(
                sql.SQL(
                    "SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint "
                    "+ xid_offset) << 20 FROM {}.position_base"
                ).format(s)
            ).fetchone()
        except psycopg.errors.UndefinedTable as exc:
            raise StoreNotFound(f"schema {schema!r}", "no chronik tables") from exc
        assert row is not None
        horizon = int(row[0])
        found = conn.execute(
            sql.SQL(
                "SELECT event_id::text FROM {}.events WHERE position <= %s "
                "ORDER BY position DESC LIMIT 1"
            ).format(s),
            (since,),
        ).fetchone()

        def pages() -> Iterator[list[Row]]:
            with conn.cursor(name="chronik_backup") as cur:
                cur.itersize = PAGE
                cur.execute(
                    sql.SQL(
                        "SELECT position, event_id::text, stream_id, version, type, "
                        "schema_version, (extract(epoch FROM recorded_at) * 1000000)::bigint, "
                        "data::text, metadata::text FROM {}.events "
                        "WHERE position > %s AND position < %s ORDER BY position"
                    ).format(s),
                    (since, horizon),
                )
                while rows := cur.fetchmany(PAGE):
                    yield rows

        truncated = _truncated(
            conn.execute(
                sql.SQL(_TRUNCATED.format(truncations="{}.truncations")).format(s)
            ).fetchall()
        )
        since_id = found[0] if found and since else None
        yield Snapshot("postgresql", horizon, since_id, pages(), truncated)
        conn.execute("COMMIT")
    except psycopg.OperationalError as exc:
        raise _unavailable(exc) from exc
    finally:
        conn.close()


@contextlib.contextmanager
def open_snapshot(url: str, since: int) -> Iterator[Snapshot]:
    parsed = parse_store_url(url)
    if parsed.scheme == "sqlite":
        with _sqlite_snapshot(parsed.target, since) as snap:
            yield snap
    elif parsed.scheme == "postgresql":
        schema = str(parsed.options.get("schema", "chronik"))
        with _postgres_snapshot(parsed.target, schema, since) as snap:
            yield snap
    else:
        raise BackupError(
            f"{parsed.scheme}:// stores live in one process and cannot be backed up from "
            "outside it; back up a sqlite:// or postgresql:// store"
        )
