"""One read of the log per process, shared by every partition the process runs.

Before, each partition follower read the whole filtered log and kept its share: with 8
partitions a process read every event 8 times. Now a :class:`SharedLog` keeps a window of
the filtered log, ``(low, high]``, complete for the filter (every matching event in it is
there), and each partition follower reads *its* events from the window:

- ``after`` inside the window: served from memory (no store read).
- ``after`` at the window's end: one read of the store extends the window (under a lock, so
  followers woken by the same change share that read); a read of ``batch_size`` times the
  partitions it serves, so each partition still gets about ``batch_size`` events a page.
- ``after`` below the window (a partition just taken over, or one that lags) or above it:
  a read of its own from the store, as before, kept to its partition; once it reaches the
  window it reads from memory.

Checkpoints, fenced commits and everything a follower does with a page are unchanged: the
window only replaces *where* the page comes from. A page's ``caught_up_to`` keeps its
meaning (every event of the partition at or below it is in this page or an earlier one),
events come in position order (so per stream in version order), and the window is trimmed
below the slowest partition's read and capped at ``window`` events.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable, Sequence

from chronik.events import RecordedEvent
from chronik.scaleout.partitions import stream_hash
from chronik.store.protocol import EventStore
from chronik.subscriptions import Page, Subscription

__all__ = ["SharedLog", "SharedSubscription"]


def _stream_id(event: RecordedEvent) -> str:
    return event.stream_id


class SharedLog:
    """The filtered log as one process reads it for its partitions (module docstring).

    Args:
        store: the event store.
        categories, types: the filter (stored type names), the same for every partition.
        batch_size: events per partition page.
        window: most events kept in memory (the oldest go first).
        key: what decides an event's partition (default: its stream id).
    """

    def __init__(
        self,
        store: EventStore,
        *,
        categories: Sequence[str] | None,
        types: Sequence[str] | None,
        batch_size: int,
        window: int = 20_000,
        key: Callable[[RecordedEvent], str] | None = None,
    ) -> None:
        self.store = store
        self.key: Callable[[RecordedEvent], str] = key or _stream_id
        self.categories = list(categories) if categories is not None else None
        self.types = list(types) if types is not None else None
        self.batch_size = batch_size
        self.window = max(window, batch_size)
        self._lock = asyncio.Lock()
        self._positions: list[int] = []
        self._events: list[RecordedEvent] = []
        self._hashes: list[int] = []
        self._low: int | None = None
        self._high = 0
        self._cursors: dict[int, int] = {}
        self.store_reads = 0
        """Reads of the store that extended the window."""
        self.direct_reads = 0
        """Reads of the store for one partition outside the window."""
        self.served = 0
        """Pages served from memory."""

    @property
    def span(self) -> tuple[int | None, int]:
        """The window ``(low, high]`` (``low`` ``None``: nothing read yet)."""
        return self._low, self._high

    def forget(self, partition: int) -> None:
        """A partition's follower ended here: its reads no longer hold the window."""
        self._cursors.pop(partition, None)

    async def read(
        self, after: int, limit: int, partition: int, partitions: int
    ) -> tuple[list[RecordedEvent], int, bool]:
        """Up to ``limit`` events of ``partition`` after ``after``: ``(events,
        caught_up_to, more)`` as :meth:`EventStore.read_page` gives them."""
        self._cursors[partition] = after
        if self._low is None or after >= self._high:
            async with self._lock:
                if self._low is None:
                    self._low = self._high = after
                if after == self._high:
                    more = await self._extend()
                    if after == self._high:  # nothing new: what the store said, just now
                        return [], after, more
        if self._inside(after):
            self.served += 1
            return self._serve(after, limit, partition, partitions)
        return await self._direct(after, limit, partition, partitions)

    def _inside(self, after: int) -> bool:
        return self._low is not None and self._low <= after < self._high

    async def _extend(self) -> bool:
        """One store read from the window's end (the caller holds the lock)."""
        served = max(len(self._cursors), 1)
        events, caught_up_to, more = await self.store.read_page(
            after=self._high,
            limit=self.batch_size * served,
            categories=self.categories,
            types=self.types,
        )
        self.store_reads += 1
        high = max(caught_up_to, events[-1].position if events else 0, self._high)
        for event in events:
            if event.position > self._high:
                self._positions.append(event.position)
                self._events.append(event)
                self._hashes.append(stream_hash(self.key(event)))
        self._high = high
        self._trim()
        return more

    def _trim(self) -> None:
        assert self._low is not None
        low = max(self._low, min(self._cursors.values(), default=self._low))
        cut = bisect.bisect_right(self._positions, low)
        over = len(self._positions) - cut - self.window
        if over > 0:  # too big: the slowest partitions read on their own for a while
            cut += over
            low = self._positions[cut - 1]
        if cut:
            del self._positions[:cut], self._events[:cut], self._hashes[:cut]
        self._low = low

    def _serve(
        self, after: int, limit: int, partition: int, partitions: int
    ) -> tuple[list[RecordedEvent], int, bool]:
        out: list[RecordedEvent] = []
        start = bisect.bisect_right(self._positions, after)
        hashes, events = self._hashes, self._events
        for i in range(start, len(events)):
            if hashes[i] % partitions == partition:
                out.append(events[i])
                if len(out) == limit:
                    return out, events[i].position, True
        # at the window's end: "more" so the follower reads again at once (from the store,
        # as after == high): the window's own "more" may be older than the caller's change
        # marker, and a False from it could idle the follower past a new event
        return out, self._high, True

    async def _direct(
        self, after: int, limit: int, partition: int, partitions: int
    ) -> tuple[list[RecordedEvent], int, bool]:
        """Outside the window: a read of the store (its other partitions' events dropped)."""
        self.direct_reads += 1
        events, caught_up_to, more = await self.store.read_page(
            after=after, limit=limit, categories=self.categories, types=self.types
        )
        mine = [e for e in events if stream_hash(self.key(e)) % partitions == partition]
        return mine, max(caught_up_to, events[-1].position if events else 0), more


class SharedSubscription(Subscription):
    """A partition follower's subscription whose pages come from a :class:`SharedLog`."""

    def __init__(self, log: SharedLog, partition: int, partitions: int, **kwargs: object) -> None:
        super().__init__(log.store, **kwargs)  # type: ignore[arg-type]
        self.log = log
        self.partition = partition
        self.partitions = partitions

    async def read_page(self) -> Page:
        after = await self.start_position()
        events, caught_up_to, more = await self.log.read(
            after, self.batch_size, self.partition, self.partitions
        )
        if self.registry is None:
            return Page(events, caught_up_to, more)
        return self._upcast(events, caught_up_to, more)
