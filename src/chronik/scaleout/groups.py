"""Consumer groups: named groups of competing external consumers (KurrentDB's persistent
subscriptions, in the database chronik already has).

A group takes the events of its categories from the log into a buffer table
(``consumer_group_messages``, migration 0013) and hands them to its members:

- ``strategy="round_robin"``: any pending message to whichever member asks; fastest, no
  order between messages.
- ``strategy="pinned"``: per stream one message at a time, in version order: the next
  message of a stream is handed out only once the previous one was acked, skipped or parked.

A member :meth:`~ConsumerGroup.receive` s messages, then :meth:`~ConsumerGroup.ack` s them
(done), or :meth:`~ConsumerGroup.nack` s them with ``retry`` (again later, until
``max_retries`` deliveries, then parked), ``park`` (into the dead-letter list at once) or
``skip`` (dropped). A message not acked within ``message_timeout`` (its member died, say) is
handed out again; past ``max_retries`` deliveries it is parked. :meth:`~ConsumerGroup.parked`
lists the parked messages and :meth:`~ConsumerGroup.replay_parked` hands them out again.
Delivery is at least once: make the handling idempotent by ``event_id``.

A group covers its ``categories`` (``None``: the whole log) or one ``stream_id``; it starts
at the beginning of the log or after a given position (``create(start_after=...)``). Its
settings are stored: :meth:`ConsumerGroup.load` opens a group by name and
:meth:`ConsumerGroup.all` lists them (the CLI, the HTTP face and the KurrentDB face's
persistent subscriptions all work on these same groups).

Example::

    group = ConsumerGroup(store, "mailer", categories=["order"], strategy="pinned")
    await group.create()
    for message in await group.receive("member-1", limit=50):
        await send(message)
        await group.ack(message)
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from chronik.errors import GroupExists, GroupNotFound, InvalidArgument
from chronik.events import RecordedEvent, category_of
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore, Tx

__all__ = ["MAX_NAME_LENGTH", "ConsumerGroup", "GroupMessage", "NackAction", "Strategy"]

MAX_NAME_LENGTH = 200
"""The longest group or member name (characters)."""
_MAX_SETTINGS_BYTES = 16_384
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

Strategy = Literal["round_robin", "pinned"]
NackAction = Literal["retry", "park", "skip"]


_SKIP_LOCKED = {"postgresql": " FOR UPDATE SKIP LOCKED"}  # SQL text by dialect


@dataclass(frozen=True, slots=True)
class GroupMessage:
    """One message handed to a member."""

    group: str
    position: int
    stream_id: str
    version: int
    event_id: str
    type: str
    data: dict[str, Any]
    attempts: int
    """Deliveries so far, this one included."""
    member: str | None = None
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    schema_version: int = 1
    recorded_at: dt.datetime | None = None

    def to_event(self) -> RecordedEvent:
        """The message as the stored event it was taken from."""
        return RecordedEvent(
            event_id=uuid.UUID(self.event_id), stream_id=self.stream_id, version=self.version,
            position=self.position, type=self.type, schema_version=self.schema_version,
            raw_data=json.dumps(self.data).encode(),
            raw_metadata=json.dumps(self.metadata).encode(),
            recorded_at=self.recorded_at or _EPOCH,
        )  # fmt: skip


def _check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not name or "\x00" in name or len(name) > MAX_NAME_LENGTH:
        shown = repr(name)[:80]
        raise InvalidArgument(
            what,
            f"must be a non-empty str without NUL, at most {MAX_NAME_LENGTH} characters, "
            f"got {shown}",
        )
    return name


_COLUMNS = (
    "position, stream_id, version, event_id, type, data, attempts, metadata, schema_version, "
    "recorded_at"
)


def _message(group: str, r: Sequence[Any], member: str | None, error: str | None) -> GroupMessage:
    stamp = None if r[9] is None else _EPOCH + dt.timedelta(microseconds=int(r[9]))
    return GroupMessage(
        group, int(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]), json.loads(r[5]), int(r[6]),
        member, error, json.loads(r[7]) if r[7] else {}, int(r[8] or 1), stamp,
    )  # fmt: skip


def _now(tx: Tx) -> str:
    return f"CAST(({tx.clock_sql}) * 1000000 AS BIGINT)"


class ConsumerGroup:
    """A named consumer group (see the module docstring).

    Args:
        store: a SQL store (SQLite or PostgreSQL).
        name: the group's name.
        categories: the stream categories it receives (``None``: all).
        stream_id: receive only this stream's events (instead of ``categories``).
        strategy: ``"round_robin"`` or ``"pinned"`` (per-stream order).
        max_retries: deliveries before a message is parked.
        message_timeout: seconds a member has to ack or nack before redelivery.
        buffer: how many messages are kept taken from the log ahead of the members.
        settings: a face's extra settings, stored and reported as given (JSON, 16 KiB at
            most; chronik does not act on them).
    """

    def __init__(
        self,
        store: EventStore,
        name: str,
        *,
        categories: Sequence[str] | None = None,
        strategy: Strategy = "round_robin",
        max_retries: int = 10,
        message_timeout: float = 30.0,
        buffer: int = 500,
        stream_id: str | None = None,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        _check_name("name", name)
        if categories is not None and (
            isinstance(categories, str)
            or not all(
                isinstance(c, str) and c and "\x00" not in c and len(c) <= 1000 for c in categories
            )
        ):
            raise InvalidArgument("categories", f"a list of non-empty str, got {categories!r:.80}")
        if stream_id is not None:
            if not isinstance(stream_id, str) or not stream_id or "\x00" in stream_id:
                raise InvalidArgument(
                    "stream_id", f"a non-empty str without NUL, got {stream_id!r:.80}"
                )
            if len(stream_id) > 1000:
                raise InvalidArgument("stream_id", "at most 1000 characters")
            if categories is not None:
                raise InvalidArgument("stream_id", "give categories or stream_id, not both")
        extra = json.dumps(dict(settings), sort_keys=True) if settings is not None else None
        if extra is not None and len(extra) > _MAX_SETTINGS_BYTES:
            raise InvalidArgument("settings", f"at most {_MAX_SETTINGS_BYTES} bytes as JSON")
        if strategy not in ("round_robin", "pinned"):
            raise InvalidArgument("strategy", f"'round_robin' or 'pinned', got {strategy!r}")
        if type(max_retries) is not int or max_retries < 1:
            raise InvalidArgument("max_retries", f"must be an int >= 1, got {max_retries!r}")
        if not isinstance(message_timeout, int | float) or not 0 < message_timeout <= 86400:
            raise InvalidArgument("message_timeout", f"1 s to 1 day, got {message_timeout!r}")
        if type(buffer) is not int or buffer < 1:
            raise InvalidArgument("buffer", f"must be an int >= 1, got {buffer!r}")
        self.store = store
        self.sql = require(store, SqlStore)
        self.name = name
        self.categories = list(categories) if categories is not None else None
        self.stream_id = stream_id
        self.settings: dict[str, Any] = json.loads(extra) if extra is not None else {}
        self.message_timeout = float(message_timeout)
        self.strategy: Strategy = strategy
        self.max_retries = max_retries
        self.timeout_us = int(message_timeout * 1_000_000)
        self.buffer = buffer

    @classmethod
    async def load(cls, store: EventStore, name: str, *, buffer: int = 500) -> ConsumerGroup:
        """The stored group ``name``, with its settings; :class:`GroupNotFound` if none."""
        _check_name("name", name)
        rows = await require(store, SqlStore).query(
            "SELECT name, categories, strategy, max_retries, message_timeout_us, stream_id, "
            "settings FROM consumer_groups WHERE name = :g",
            {"g": name},
        )
        if not rows:
            raise GroupNotFound(name)
        return cls._of_row(store, rows[0], buffer)

    @classmethod
    async def all(cls, store: EventStore) -> list[ConsumerGroup]:
        """Every stored group, by name."""
        rows = await require(store, SqlStore).query(
            "SELECT name, categories, strategy, max_retries, message_timeout_us, stream_id, "
            "settings FROM consumer_groups ORDER BY name"
        )
        return [cls._of_row(store, r, 500) for r in rows]

    @classmethod
    def _of_row(cls, store: EventStore, r: Sequence[Any], buffer: int) -> ConsumerGroup:
        return cls(
            store, str(r[0]), categories=json.loads(r[1]) if r[1] is not None else None,
            strategy=r[2], max_retries=int(r[3]), message_timeout=int(r[4]) / 1_000_000,
            stream_id=r[5], settings=json.loads(r[6]) if r[6] else None, buffer=buffer,
        )  # fmt: skip

    def _row(self) -> dict[str, Any]:
        return {
            "g": self.name,
            "c": json.dumps(self.categories) if self.categories is not None else None,
            "s": self.strategy, "r": self.max_retries, "t": self.timeout_us, "sid": self.stream_id,
            "x": json.dumps(self.settings, sort_keys=True) if self.settings else None,
        }  # fmt: skip

    async def create(self, *, exist_ok: bool = True, start_after: int = 0) -> None:
        """Create the group, taking the events after position ``start_after`` (0: the whole
        log). An existing group gets these settings (its position stays) or, with
        ``exist_ok=False``, :class:`GroupExists`."""
        if type(start_after) is not int or start_after < 0:
            raise InvalidArgument("start_after", f"a position >= 0, got {start_after!r:.40}")
        conflict = (
            "DO UPDATE SET categories = excluded.categories, strategy = excluded.strategy, "
            "max_retries = excluded.max_retries, message_timeout_us = excluded.message_timeout_us, "
            "stream_id = excluded.stream_id, settings = excluded.settings"
            if exist_ok
            else "DO NOTHING"
        )
        async with self.sql.transaction() as tx:
            made = await tx.fetchone(
                "INSERT INTO consumer_groups (name, categories, strategy, max_retries, "
                "message_timeout_us, stream_id, settings, position) VALUES (:g, :c, :s, :r, :t, "
                f":sid, :x, :pos) ON CONFLICT (name) {conflict} RETURNING name",
                {**self._row(), "pos": start_after},
            )
        if made is None:
            raise GroupExists(self.name)

    async def update(self) -> None:
        """Store these settings for the existing group (its position and messages stay);
        :class:`GroupNotFound` if there is none."""
        async with self.sql.transaction() as tx:
            done = await tx.fetchone(
                "UPDATE consumer_groups SET categories = :c, strategy = :s, max_retries = :r, "
                "message_timeout_us = :t, stream_id = :sid, settings = :x WHERE name = :g "
                "RETURNING name",
                self._row(),
            )
        if done is None:
            raise GroupNotFound(self.name)

    async def delete(self) -> bool:
        """Delete the group and its buffered and parked messages (``False``: there was none)."""
        async with self.sql.transaction() as tx:
            await tx.execute("DELETE FROM consumer_group_messages WHERE group_name = :g",
                             {"g": self.name})  # fmt: skip
            gone = await tx.fetchone(
                "DELETE FROM consumer_groups WHERE name = :g RETURNING name", {"g": self.name}
            )
        return gone is not None

    async def _fill(self) -> None:
        """Take the next events of the log into the buffer while it has room (one
        transaction per page; the group's position moves by compare-and-set, so two
        members filling at once take each event once)."""
        rows = await self.sql.query(
            "SELECT position, (SELECT count(*) FROM consumer_group_messages "
            "WHERE group_name = :g AND state <> 'parked') FROM consumer_groups WHERE name = :g",
            {"g": self.name},
        )
        if not rows:
            raise GroupNotFound(self.name)
        position, buffered = int(rows[0][0]), int(rows[0][1])
        room = self.buffer - buffered
        if room <= 0:
            return
        categories = [category_of(self.stream_id)] if self.stream_id else self.categories
        events, caught_up_to, _more = await self.store.read_page(
            after=position, limit=room, categories=categories
        )
        if self.stream_id is not None:
            events = [e for e in events if e.stream_id == self.stream_id]
        newest = max([caught_up_to, position, *(e.position for e in events)])
        if newest == position:
            return
        async with self.sql.transaction() as tx:
            moved = await tx.fetchone(
                "UPDATE consumer_groups SET position = :new WHERE name = :g "
                "AND position = :old RETURNING position",
                {"g": self.name, "new": newest, "old": position},
            )
            if moved is None:
                return  # another member filled first
            for start in range(0, len(events), 100):  # one INSERT per 100 values
                values: list[str] = []
                params: dict[str, Any] = {"g": self.name}
                for i, e in enumerate(events[start : start + 100]):
                    values.append(f"(:g, :p{i}, :s{i}, :v{i}, :id{i}, :t{i}, :d{i}, 'pending', "
                                f":md{i}, :sv{i}, :at{i})")  # fmt: skip
                    params.update({
                        f"p{i}": e.position, f"s{i}": e.stream_id, f"v{i}": e.version,
                        f"id{i}": str(e.event_id), f"t{i}": e.type,
                        f"d{i}": json.dumps(dict(e.data)), f"md{i}": json.dumps(dict(e.metadata)),
                        f"sv{i}": e.schema_version, f"at{i}": _micros(e.recorded_at),
                    })  # fmt: skip
                await tx.execute(
                    "INSERT INTO consumer_group_messages (group_name, position, stream_id, "
                    "version, event_id, type, data, state, metadata, schema_version, "
                    f"recorded_at) VALUES {', '.join(values)} ON CONFLICT DO NOTHING",
                    params,
                )

    async def receive(self, member: str, *, limit: int = 10) -> list[GroupMessage]:
        """Up to ``limit`` messages for ``member`` (fewer, or none, when nothing is due)."""
        _check_name("member", member)
        if type(limit) is not int or not 1 <= limit <= 10_000:
            raise InvalidArgument("limit", f"must be an int 1 to 10000, got {limit!r:.40}")
        await self._fill()
        async with self.sql.transaction() as tx:
            clock = await tx.fetchone(f"SELECT {_now(tx)}")  # once: a volatile clock in the
            assert clock is not None  # subquery would be read (and the subquery run) per row
            p = {"g": self.name, "m": member, "n": limit, "t": self.timeout_us,
                 "max": self.max_retries, "now": int(clock[0])}  # fmt: skip
            # timed out after the last allowed delivery: parked
            await tx.execute(
                "UPDATE consumer_group_messages SET state = 'parked', member = NULL, "
                "error = 'message timeout' WHERE group_name = :g AND state = 'inflight' "
                "AND deadline < :now AND attempts >= :max",
                p,
            )
            due = "(m.state = 'pending' OR (m.state = 'inflight' AND m.deadline < :now))"
            pinned = (
                " AND NOT EXISTS (SELECT 1 FROM consumer_group_messages AS o "
                "WHERE o.group_name = m.group_name AND o.stream_id = m.stream_id "
                "AND o.position < m.position AND o.state <> 'parked')"
                if self.strategy == "pinned"
                else ""
            )
            skip = _SKIP_LOCKED.get(tx.dialect, "")
            picked = await tx.fetchall(
                f"SELECT m.position FROM consumer_group_messages AS m WHERE m.group_name = :g "
                f"AND {due}{pinned} ORDER BY m.position LIMIT :n{skip}",
                p,
            )
            if not picked:
                return []
            marks = {f"p{i}": int(r[0]) for i, r in enumerate(picked)}
            rows = await tx.fetchall(
                "UPDATE consumer_group_messages SET state = 'inflight', member = :m, "
                "deadline = :now + :t, attempts = attempts + 1 WHERE group_name = :g "
                f"AND position IN ({', '.join(':' + k for k in marks)}) "
                f"RETURNING {_COLUMNS}",
                {**p, **marks},
            )
        return sorted(
            (_message(self.name, r, member, None) for r in rows), key=lambda m: m.position
        )

    async def ack(self, *messages: GroupMessage, tx: Tx | None = None) -> None:
        """Done: the messages are removed (in ``tx`` with the member's own writes, if
        given: then the effect and the ack commit together)."""
        if tx is not None:
            await self._ack(tx, messages)
            return
        async with self.sql.transaction() as own:
            await self._ack(own, messages)

    async def _ack(self, tx: Tx, messages: Sequence[GroupMessage]) -> None:
        positions = sorted({m.position for m in messages})
        for start in range(0, len(positions), 500):  # one statement per 500 messages
            marks = {f"p{i}": p for i, p in enumerate(positions[start : start + 500])}
            await tx.execute(
                "DELETE FROM consumer_group_messages WHERE group_name = :g AND position IN "
                f"({', '.join(':' + k for k in marks)})",
                {"g": self.name, **marks},
            )

    async def nack(
        self, message: GroupMessage, action: NackAction = "retry", *, reason: str = ""
    ) -> None:
        """Not done: ``retry`` (hand it out again; parked after ``max_retries``
        deliveries), ``park`` (into the dead-letter list) or ``skip`` (drop it)."""
        if action not in ("retry", "park", "skip"):
            raise InvalidArgument("action", f"'retry', 'park' or 'skip', got {action!r}")
        async with self.sql.transaction() as tx:
            if action == "skip":
                await self._ack(tx, [message])
                return
            state = (
                "'parked'"
                if action == "park"
                else "CASE WHEN attempts >= :max THEN 'parked' ELSE 'pending' END"
            )
            await tx.execute(
                f"UPDATE consumer_group_messages SET state = {state}, member = NULL, "
                "deadline = NULL, error = :e WHERE group_name = :g AND position = :p",
                {"g": self.name, "p": message.position, "e": reason or action,
                 "max": self.max_retries},
            )  # fmt: skip

    async def settle(
        self,
        member: str,
        positions: Sequence[int],
        action: Literal["ack", "retry", "park", "skip"] = "ack",
        *,
        reason: str = "",
    ) -> int:
        """Ack or nack, by position, the messages ``member`` holds now (in flight with it);
        any other position is left alone. For callers that keep no :class:`GroupMessage`
        (the HTTP face). Returns how many were settled."""
        _check_name("member", member)
        if action not in ("ack", "retry", "park", "skip"):
            raise InvalidArgument("action", f"ack, retry, park or skip, got {action!r:.40}")
        if not all(type(p) is int for p in positions) or len(positions) > 10_000:
            raise InvalidArgument("positions", "at most 10000 ints")
        if not positions:
            return 0
        marks = {f"p{i}": p for i, p in enumerate(dict.fromkeys(positions))}
        held = (
            "group_name = :g AND member = :m AND state = 'inflight' "
            f"AND position IN ({', '.join(':' + k for k in marks)})"
        )
        p: dict[str, Any] = {"g": self.name, "m": member, "e": reason or action,
                             "max": self.max_retries, **marks}  # fmt: skip
        async with self.sql.transaction() as tx:
            if action in ("ack", "skip"):
                rows = await tx.fetchall(
                    f"DELETE FROM consumer_group_messages WHERE {held} RETURNING position", p
                )
            else:
                state = (
                    "'parked'"
                    if action == "park"
                    else "CASE WHEN attempts >= :max THEN 'parked' ELSE 'pending' END"
                )
                rows = await tx.fetchall(
                    f"UPDATE consumer_group_messages SET state = {state}, member = NULL, "
                    f"deadline = NULL, error = :e WHERE {held} RETURNING position",
                    p,
                )
        return len(rows)

    async def parked(self) -> list[GroupMessage]:
        """The parked messages (the group's dead-letter list), oldest first."""
        rows = await self.sql.query(
            f"SELECT {_COLUMNS}, error FROM consumer_group_messages WHERE group_name = :g "
            "AND state = 'parked' ORDER BY position",
            {"g": self.name},
        )
        return [_message(self.name, r, None, r[10]) for r in rows]

    async def replay_parked(self, *, limit: int | None = None) -> int:
        """Hand the parked messages out again, the oldest ``limit`` of them (``None``: all);
        their delivery count starts over. Returns how many."""
        if limit is not None and (type(limit) is not int or limit < 0):
            raise InvalidArgument("limit", f"an int >= 0 or None, got {limit!r:.40}")
        oldest = "" if limit is None else " ORDER BY position LIMIT :n"
        async with self.sql.transaction() as tx:
            rows = await tx.fetchall(
                "UPDATE consumer_group_messages SET state = 'pending', attempts = 0, "
                "error = NULL WHERE group_name = :g AND position IN (SELECT position FROM "
                "consumer_group_messages WHERE group_name = :g AND state = 'parked'"
                f"{oldest}) RETURNING position",
                {"g": self.name, "n": limit},
            )
        return len(rows)

    async def info(self) -> dict[str, Any]:
        """Settings and counts: position, pending, in flight, parked (:class:`GroupNotFound`
        if the group is gone)."""
        rows = await self.sql.query(
            "SELECT state, count(*) FROM consumer_group_messages WHERE group_name = :g "
            "GROUP BY state",
            {"g": self.name},
        )
        counts = {str(s): int(n) for s, n in rows}
        pos = await self.sql.query(
            "SELECT position FROM consumer_groups WHERE name = :g", {"g": self.name}
        )
        if not pos:
            raise GroupNotFound(self.name)
        return {
            "name": self.name, "strategy": self.strategy, "categories": self.categories,
            "stream_id": self.stream_id, "max_retries": self.max_retries,
            "message_timeout": self.message_timeout, "position": int(pos[0][0]),
            "pending": counts.get("pending", 0), "in_flight": counts.get("inflight", 0),
            "parked": counts.get("parked", 0), "settings": self.settings,
        }  # fmt: skip


def _micros(stamp: dt.datetime) -> int:
    delta = stamp - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
