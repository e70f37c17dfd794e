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

Example::

    group = ConsumerGroup(store, "mailer", categories=["order"], strategy="pinned")
    await group.create()
    for message in await group.receive("member-1", limit=50):
        await send(message)
        await group.ack(message)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from chronik.errors import InvalidArgument
from chronik.store import SqlStore, require
from chronik.store.protocol import EventStore, Tx

__all__ = ["ConsumerGroup", "GroupMessage", "Strategy"]

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


def _now(tx: Tx) -> str:
    return f"CAST(({tx.clock_sql}) * 1000000 AS BIGINT)"


class ConsumerGroup:
    """A named consumer group (see the module docstring).

    Args:
        store: a SQL store (SQLite or PostgreSQL).
        name: the group's name.
        categories: the stream categories it receives (``None``: all).
        strategy: ``"round_robin"`` or ``"pinned"`` (per-stream order).
        max_retries: deliveries before a message is parked.
        message_timeout: seconds a member has to ack or nack before redelivery.
        buffer: how many messages are kept taken from the log ahead of the members.
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
    ) -> None:
        if not isinstance(name, str) or not name or "\x00" in name:
            raise InvalidArgument("name", f"must be a non-empty str without NUL, got {name!r}")
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
        self.strategy: Strategy = strategy
        self.max_retries = max_retries
        self.timeout_us = int(message_timeout * 1_000_000)
        self.buffer = buffer

    async def create(self) -> None:
        """Create the group (starting at the beginning of the log), or update its settings."""
        cats = json.dumps(self.categories) if self.categories is not None else None
        async with self.sql.transaction() as tx:
            await tx.execute(
                "INSERT INTO consumer_groups (name, categories, strategy, max_retries, "
                "message_timeout_us) VALUES (:g, :c, :s, :r, :t) ON CONFLICT (name) DO UPDATE "
                "SET categories = excluded.categories, strategy = excluded.strategy, "
                "max_retries = excluded.max_retries, "
                "message_timeout_us = excluded.message_timeout_us",
                {"g": self.name, "c": cats, "s": self.strategy, "r": self.max_retries,
                 "t": self.timeout_us},
            )  # fmt: skip

    async def delete(self) -> None:
        """Delete the group and its buffered and parked messages."""
        async with self.sql.transaction() as tx:
            await tx.execute("DELETE FROM consumer_group_messages WHERE group_name = :g",
                             {"g": self.name})  # fmt: skip
            await tx.execute("DELETE FROM consumer_groups WHERE name = :g", {"g": self.name})

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
            raise InvalidArgument("name", f"no consumer group {self.name!r} (create() it)")
        position, buffered = int(rows[0][0]), int(rows[0][1])
        room = self.buffer - buffered
        if room <= 0:
            return
        events, caught_up_to, _more = await self.store.read_page(
            after=position, limit=room, categories=self.categories
        )
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
            for e in events:
                await tx.execute(
                    "INSERT INTO consumer_group_messages (group_name, position, stream_id, "
                    "version, event_id, type, data, state) VALUES (:g, :p, :s, :v, :id, :t, "
                    ":d, 'pending') ON CONFLICT DO NOTHING",
                    {"g": self.name, "p": e.position, "s": e.stream_id, "v": e.version,
                     "id": str(e.event_id), "t": e.type, "d": json.dumps(dict(e.data))},
                )  # fmt: skip

    async def receive(self, member: str, *, limit: int = 10) -> list[GroupMessage]:
        """Up to ``limit`` messages for ``member`` (fewer, or none, when nothing is due)."""
        if not isinstance(member, str) or not member or "\x00" in member:
            raise InvalidArgument("member", f"must be a non-empty str without NUL, got {member!r}")
        if type(limit) is not int or limit < 1:
            raise InvalidArgument("limit", f"must be an int >= 1, got {limit!r}")
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
                "RETURNING position, stream_id, version, event_id, type, data, attempts",
                {**p, **marks},
            )
        return sorted(
            (GroupMessage(self.name, int(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]),
                          json.loads(r[5]), int(r[6]), member) for r in rows),
            key=lambda m: m.position,
        )  # fmt: skip

    async def ack(self, *messages: GroupMessage, tx: Tx | None = None) -> None:
        """Done: the messages are removed (in ``tx`` with the member's own writes, if
        given: then the effect and the ack commit together)."""
        if tx is not None:
            await self._ack(tx, messages)
            return
        async with self.sql.transaction() as own:
            await self._ack(own, messages)

    async def _ack(self, tx: Tx, messages: Sequence[GroupMessage]) -> None:
        for m in messages:
            await tx.execute(
                "DELETE FROM consumer_group_messages WHERE group_name = :g AND position = :p",
                {"g": self.name, "p": m.position},
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

    async def parked(self) -> list[GroupMessage]:
        """The parked messages (the group's dead-letter list), oldest first."""
        rows = await self.sql.query(
            "SELECT position, stream_id, version, event_id, type, data, attempts, error "
            "FROM consumer_group_messages WHERE group_name = :g AND state = 'parked' "
            "ORDER BY position",
            {"g": self.name},
        )
        return [GroupMessage(self.name, int(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]),
                             json.loads(r[5]), int(r[6]), None, r[7]) for r in rows]  # fmt: skip

    async def replay_parked(self) -> int:
        """Hand the parked messages out again (their delivery count starts over)."""
        async with self.sql.transaction() as tx:
            rows = await tx.fetchall(
                "UPDATE consumer_group_messages SET state = 'pending', attempts = 0, "
                "error = NULL WHERE group_name = :g AND state = 'parked' RETURNING position",
                {"g": self.name},
            )
        return len(rows)

    async def info(self) -> dict[str, Any]:
        """Settings and counts: position, pending, in flight, parked."""
        rows = await self.sql.query(
            "SELECT state, count(*) FROM consumer_group_messages WHERE group_name = :g "
            "GROUP BY state",
            {"g": self.name},
        )
        counts = {str(s): int(n) for s, n in rows}
        pos = await self.sql.query(
            "SELECT position FROM consumer_groups WHERE name = :g", {"g": self.name}
        )
        return {
            "name": self.name, "strategy": self.strategy, "categories": self.categories,
            "max_retries": self.max_retries, "position": int(pos[0][0]) if pos else None,
            "pending": counts.get("pending", 0), "in_flight": counts.get("inflight", 0),
            "parked": counts.get("parked", 0),
        }  # fmt: skip
