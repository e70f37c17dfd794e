"""The read horizon and what holds it back; lag in events without counting the whole tail.

On PostgreSQL, readers see only events below the oldest transaction still running in the
**cluster** (docs/ordering.md). One transaction left open anywhere (another database, an
idle session, a forgotten ``PREPARE TRANSACTION``) makes every newer event invisible to
``read_all``, subscriptions and projections while it lasts. :func:`read_horizon` says
whether that is the case, since when, whose transaction it is, and how many committed
events readers cannot see yet. SQLite has no such horizon (one writer; commit order is
position order): :func:`read_horizon` returns ``None`` there.

:func:`events_after` counts events after a position cheaply: exactly up to ``cap``, and
beyond it an estimate from positions (exact on SQLite, whose positions have no gaps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chronik.store.capabilities import supports
from chronik.store.port import SqlStore
from chronik.store.protocol import EventStore

__all__ = [
    "LAG_CAP",
    "Horizon",
    "HorizonHolder",
    "Lag",
    "events_after",
    "horizon_transactions",
    "read_horizon",
]

LAG_CAP = 10_000
"""Events counted exactly by :func:`events_after`; beyond, the count is estimated."""

HORIZON_SQL = (
    "(SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint + xid_offset) << 20 "
    "FROM position_base)"
)
"""The read horizon, as ``read_all`` computes it (search_path is the store's schema)."""

_HOLDERS = """
SELECT * FROM (
  SELECT 'transaction' AS kind, pid, datname::text, usename::text, state,
         application_name, xact_start, backend_xid::text AS xid, age(backend_xid) AS age,
         NULL::text AS gid
  FROM pg_stat_activity
  WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()
  UNION ALL
  SELECT 'prepared', NULL, database::text, owner::text, 'prepared', NULL, prepared,
         transaction::text, age(transaction), gid
  FROM pg_prepared_xacts
) AS t ORDER BY age DESC, xact_start LIMIT %s
"""

_STALL = f"""
SELECT h.horizon,
       (SELECT count(*) FROM (SELECT 1 FROM events WHERE position >= h.horizon
                              LIMIT {LAG_CAP}) AS t),
       (SELECT coalesce(max(position), 0) FROM events),
       (SELECT coalesce(max(position), 0) FROM events WHERE position < h.horizon),
       now()
FROM (SELECT {HORIZON_SQL} AS horizon) AS h
"""


@dataclass(frozen=True, slots=True)
class HorizonHolder:
    """A transaction that holds the read horizon back: a session's (``pid``) or a prepared
    one (``gid``)."""

    kind: str
    pid: int | None
    xid: str
    database: str | None
    user: str | None
    state: str | None
    application: str | None
    since: datetime | None
    age_seconds: float
    gid: str | None = None

    def describe(self) -> str:
        who = (
            f"PID {self.pid}/xid {self.xid}"
            if self.pid
            else f"prepared {self.gid!r}/xid {self.xid}"
        )
        since = self.since.strftime("%Y-%m-%d %H:%M:%S UTC") if self.since else "?"
        where = ", ".join(
            f"{k} {v}"
            for k, v in (("user", self.user), ("database", self.database), ("state", self.state))
            if v
        )
        return f"since {since} by {who} ({where}; {self.age_seconds:,.0f} s)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "pid": self.pid,
            "xid": self.xid,
            "database": self.database,
            "user": self.user,
            "state": self.state,
            "application": self.application,
            "since": self.since.isoformat() if self.since else None,
            "age_seconds": round(self.age_seconds, 3),
            "gid": self.gid,
        }


@dataclass(frozen=True, slots=True)
class Horizon:
    """The store's read horizon now. ``held`` when committed events are invisible to
    readers (``invisible_events`` of them, counted up to :data:`LAG_CAP`) because of
    ``holder``'s transaction."""

    position: int
    visible_head: int
    stored_head: int
    invisible_events: int
    holder: HorizonHolder | None

    @property
    def held(self) -> bool:
        return self.invisible_events > 0 and self.holder is not None

    @property
    def age_seconds(self) -> float:
        """How long the oldest running transaction has held the horizon (0: none)."""
        return self.holder.age_seconds if self.holder is not None else 0.0

    def describe(self) -> str:
        """``read horizon held back since T by PID/xid ...`` (empty when not held)."""
        if not self.held or self.holder is None:
            return ""
        more = "+" if self.invisible_events >= LAG_CAP else ""
        return (
            f"read horizon held back {self.holder.describe()}: "
            f"{self.invisible_events:,}{more} committed events not yet visible"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "held": self.held,
            "position": self.position,
            "visible_head": self.visible_head,
            "stored_head": self.stored_head,
            "invisible_events": self.invisible_events,
            "age_seconds": round(self.age_seconds, 3),
            "holder": self.holder.to_dict() if self.holder else None,
            "message": self.describe() or None,
        }


def _is_postgres(store: EventStore) -> bool:
    return supports(store, SqlStore) and getattr(store, "dialect", "") == "postgresql"


def _holder(row: Sequence[Any], now: datetime) -> HorizonHolder:
    kind, pid, db, user, state, app, since, xid, _age, gid = row
    age = (now - since).total_seconds() if since is not None else 0.0
    return HorizonHolder(
        str(kind), pid, str(xid), db, user, state, app or None, since, max(age, 0.0), gid
    )


async def horizon_transactions(store: EventStore, limit: int = 5) -> list[HorizonHolder]:
    """The transactions with an xid in the whole cluster (any database, prepared ones too),
    oldest first: the first one is what the read horizon waits for. Empty on SQLite."""
    if not _is_postgres(store):
        return []
    sql = store  # SqlStore
    rows = await sql.query(_HOLDERS.replace("%s", str(int(limit))))  # type: ignore[attr-defined]
    (now,) = (await sql.query("SELECT now()"))[0]  # type: ignore[attr-defined]
    return [_holder(r, now) for r in rows]


async def read_horizon(store: EventStore) -> Horizon | None:
    """The read horizon of a PostgreSQL store and what holds it back (``None`` elsewhere)."""
    if not _is_postgres(store):
        return None
    rows = await store.query(_STALL)  # type: ignore[attr-defined]
    horizon, invisible, stored, visible, _now = rows[0]
    holders = await horizon_transactions(store, 1)
    return Horizon(
        int(horizon), int(visible), int(stored), int(invisible), holders[0] if holders else None
    )


@dataclass(frozen=True, slots=True)
class Lag:
    """Events after a checkpoint: ``events`` (exact unless ``estimated``) and the age of
    the oldest of them in seconds."""

    events: int
    estimated: bool
    seconds: float


async def events_after(
    store: EventStore,
    after: int,
    *,
    categories: Sequence[str] | None = None,
    types: Sequence[str] | None = None,
    cap: int = LAG_CAP,
) -> Lag:
    """How many committed events follow position ``after`` (visible or not yet), and the
    age of the first. Counts at most ``cap`` rows; beyond, the count is estimated from
    positions: exact on
    SQLite without a filter, approximate on PostgreSQL (the counted events' density in
    positions, carried over the rest up to the head). Never scans the whole tail.
    """
    if not supports(store, SqlStore):
        n = await store.count_events(after=after, categories=categories, types=types)
        seconds = 0.0
        if n:
            async for ev in store.read_all(
                after=after, categories=categories, types=types, limit=1
            ):
                seconds = (datetime.now(UTC) - ev.recorded_at).total_seconds()
        return Lag(n, False, max(seconds, 0.0))
    params: dict[str, Any] = {"after": int(after), "cap": int(cap)}
    where = ""
    for name, column, values in (("c", "category", categories), ("t", "type", types)):
        if values is not None:
            keys = [f"{name}{i}" for i in range(len(values))]
            params.update(zip(keys, values, strict=True))
            where += f" AND {column} IN ({', '.join(':' + k for k in keys) or 'NULL'})"
    dialect = getattr(store, "dialect", "")
    clock = (
        "extract(epoch FROM now())"
        if dialect == "postgresql"
        else "(julianday('now') - 2440587.5) * 86400.0"
    )
    first_at = (
        "extract(epoch FROM min(recorded_at))"
        if dialect == "postgresql"
        else "min(recorded_at) / 1000000.0"
    )
    sql = (
        f"SELECT count(*), coalesce(min(position), 0), coalesce(max(position), 0), "
        f"{first_at}, {clock}, "
        f"(SELECT coalesce(max(position), 0) FROM events) "
        f"FROM (SELECT position, recorded_at FROM events WHERE position > :after{where} "
        f"ORDER BY position LIMIT :cap) AS t"
    )
    rows = await store.query(sql, params)  # type: ignore[attr-defined]
    count, low, last, first, now, head = rows[0]
    seconds = max(float(now) - float(first), 0.0) if first is not None else 0.0
    count, last, head = int(count), int(last), int(head)
    if count < cap or last >= head:
        return Lag(count, False, seconds)
    # the density of the counted stretch (events per position) carried over the rest
    estimate = count + round((head - last) * (count - 1) / max(int(last) - int(low), 1))
    exact = dialect == "sqlite" and categories is None and types is None
    return Lag(head - after if exact else max(estimate, count), not exact, seconds)
