"""What the console shows, gathered from the library: the dashboard's numbers, projection
rows with lag and ETA, stream and event searches. No HTML here (see ``pages``); the saga
tables are read in ``sagas``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from chronik.app import App
from chronik.events import RecordedEvent
from chronik.projections.control import PausedProjection, paused_projections
from chronik.projections.kinds import AnyProjection
from chronik.projections.runner import Progress
from chronik.projections.status import projection_status
from chronik.server.console.sagas import SagaCounts, saga_counts
from chronik.store.horizon import Horizon, read_horizon
from chronik.store.port import StoreStats, StreamInfo
from chronik.store.protocol import EventStore

__all__ = [
    "Dashboard",
    "EventsFound",
    "Monitor",
    "ProjectionRow",
    "RebuildJob",
    "StreamsFound",
    "find_events",
    "find_streams",
    "position_at",
]

RECENT = 10
"""The latest events shown on the dashboard."""
STATS_EVERY = 30.0
"""Seconds between two ``store.stats()`` (a full count on PostgreSQL)."""
SCAN_CAP = 100_000
"""Streams looked at, at most, for one prefix search."""
PAGES_CAP = 40
"""Pages of the log read, at most, for one filtered event search."""


@dataclass
class RebuildJob:
    """A rebuild started from the console, running in this server process."""

    projection: str
    started: float = field(default_factory=time.time)
    done: int = 0
    total: int = 0
    rate: float = 0.0
    eta_seconds: float | None = None
    finished: float | None = None
    applied: int | None = None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.finished is None

    @property
    def percent(self) -> int:
        if not self.total:
            return 100 if self.finished is not None else 0
        return min(100, int(self.done * 100 / self.total))

    def report(self, p: Progress) -> None:
        self.done, self.total, self.rate, self.eta_seconds = p.done, p.total, p.rate, p.eta_seconds


@dataclass(frozen=True)
class ProjectionRow:
    """One projection (with ``--app``) or one stored checkpoint (without)."""

    name: str
    checkpoint_name: str
    version: int | None
    kind: str | None
    active: bool | None
    """This version is the one readers use (``None``: not known)."""
    checkpoint: int
    head: int
    lag_events: int
    lag_seconds: float
    eta: str
    eta_seconds: float | None
    dead_letters: int
    exact: bool
    """The lag counts the projection's own events (else every event after the checkpoint)."""
    job: RebuildJob | None = None
    paused: PausedProjection | None = None
    """Set while an operator has paused it (its runners, in any process, hold)."""


@dataclass(frozen=True)
class Dashboard:
    head: int
    stats: StoreStats | None
    appended_last_minute: int
    recent: list[RecordedEvent]
    projections: list[ProjectionRow]
    dead_letters: dict[str, int]
    sagas: SagaCounts | None
    measured_at: datetime
    horizon: Horizon | None = None
    """PostgreSQL's read horizon, shown when a transaction holds it back (``held``)."""


class Monitor:
    """The console's memory between requests: recent checkpoint samples (for rates and
    ETAs), the last store stats, the dashboard computed at most once a second (every viewer
    shares it), and the rebuilds started here."""

    def __init__(self, store: EventStore, app: App | None) -> None:
        self.store = store
        self.app = app
        self.jobs: dict[str, RebuildJob] = {}
        self._samples: dict[str, deque[tuple[float, int, int]]] = {}
        self._stats: tuple[float, StoreStats] | None = None
        self._dashboard: tuple[float, Dashboard] | None = None
        self._lock = asyncio.Lock()

    @property
    def projections(self) -> list[AnyProjection]:
        return list(self.app.projections) if self.app is not None else []

    def projection(self, name: str) -> AnyProjection | None:
        return next((p for p in self.projections if p.name == name), None)

    # -- rates and ETAs ---------------------------------------------------------------------

    def eta(
        self, name: str, checkpoint: int, head: int, lag_events: int
    ) -> tuple[str, float | None]:
        """How long until checkpoint ``name`` reaches the head, from its recent progress:
        the checkpoint's speed less the head's (appends keep coming)."""
        now = time.monotonic()
        samples = self._samples.setdefault(name, deque(maxlen=240))
        if samples and checkpoint < samples[-1][1]:
            samples.clear()  # rebuilt: start measuring again
        if not samples or now - samples[-1][0] >= 0.5:
            samples.append((now, checkpoint, head))
        while len(samples) > 2 and now - samples[0][0] > 60.0:
            samples.popleft()
        if lag_events == 0:
            return "caught up", 0.0
        first_at, first_checkpoint, first_head = samples[0]
        elapsed = now - first_at
        if elapsed < 2.0:
            return "measuring…", None
        speed = (checkpoint - first_checkpoint) / elapsed
        if speed <= 0:
            return "not moving", None
        net = speed - (head - first_head) / elapsed
        if net <= 0:
            return "falling behind", None
        seconds = max(head - checkpoint, 0) / net
        return f"~{format_seconds(seconds)}", seconds

    # -- the dashboard ----------------------------------------------------------------------

    async def stats(self) -> StoreStats | None:
        """The store's counts, read again at most every :data:`STATS_EVERY` seconds."""
        now = time.monotonic()
        if self._stats is None or now - self._stats[0] > STATS_EVERY:
            self._stats = (now, await self.store.stats())
        return self._stats[1]

    async def dashboard(self) -> Dashboard:
        async with self._lock:
            now = time.monotonic()
            if self._dashboard is not None and now - self._dashboard[0] < 1.0:
                return self._dashboard[1]
            store = self.store
            head = await store.head_position()
            minute_ago = await position_at(store, datetime.now(UTC) - timedelta(minutes=1))
            appended = await store.count_events(after=minute_ago)
            recent = [e async for e in store.read_all(after=await _tail(store, head), limit=RECENT)]
            letters: dict[str, int] = {}
            for letter in await store.dead_letters():
                letters[letter.subscription] = letters.get(letter.subscription, 0) + 1
            board = Dashboard(
                head=head,
                stats=await self.stats(),
                appended_last_minute=appended,
                recent=recent[::-1],
                projections=await self.projection_rows(head, letters),
                dead_letters=letters,
                sagas=await saga_counts(store),
                measured_at=datetime.now(UTC),
                horizon=await read_horizon(store),
            )
            self._dashboard = (time.monotonic(), board)
            return board

    async def projection_rows(
        self, head: int | None = None, letters: dict[str, int] | None = None
    ) -> list[ProjectionRow]:
        """The app's projections (exact lag), else every stored checkpoint (lag counted over
        every event after it)."""
        store = self.store
        if head is None:
            head = await store.head_position()
        if letters is None:
            letters = {}
            for letter in await store.dead_letters():
                letters[letter.subscription] = letters.get(letter.subscription, 0) + 1
        rows: list[ProjectionRow] = []
        paused = await paused_projections(store)
        if self.projections:
            for p in self.projections:
                s = await projection_status(store, p, None)
                in_use = await store.get_active_version(p.name)
                eta, eta_seconds = self.eta(p.checkpoint_name, s.checkpoint, s.head, s.lag_events)
                rows.append(
                    ProjectionRow(p.name, p.checkpoint_name, p.version, s.kind,
                                  None if in_use is None else in_use == p.version, s.checkpoint,
                                  s.head, s.lag_events, s.lag_seconds, eta, eta_seconds,
                                  letters.get(p.checkpoint_name, 0), True, self.jobs.get(p.name),
                                  paused.get(p.name))
                )  # fmt: skip
            return rows
        for name, checkpoint in sorted((await store.checkpoints()).items()):
            base, _, version_text = name.rpartition(":v")
            version = int(version_text) if base and version_text.isdigit() else None
            active: bool | None = None
            if version is not None:
                current = await store.get_active_version(base)
                active = None if current is None else current == version
            lag = await store.count_events(after=checkpoint)
            lag_seconds = await _oldest_age(store, checkpoint) if lag else 0.0
            eta, eta_seconds = self.eta(name, checkpoint, head, lag)
            rows.append(
                ProjectionRow(base if version is not None else name, name, version, None, active,
                              checkpoint, head, lag, lag_seconds, eta, eta_seconds,
                              letters.get(name, 0), False,
                              paused=paused.get(base if version is not None else name))
            )  # fmt: skip
        return rows


async def _oldest_age(store: EventStore, after: int) -> float:
    async for oldest in store.read_all(after=after, limit=1):
        return max((datetime.now(UTC) - oldest.recorded_at).total_seconds(), 0.0)
    return 0.0


async def _tail(store: EventStore, head: int) -> int:
    """The position after which the last :data:`RECENT` events are (positions may have
    gaps, wide ones on PostgreSQL: a binary search, one short indexed read each)."""
    low, high = 0, head
    while low < high:  # the highest position with RECENT events after it
        middle = (low + high + 1) // 2
        found = 0
        async for _ in store.read_all(after=middle, limit=RECENT):
            found += 1
        if found == RECENT:
            low = middle
        else:
            high = middle - 1
    return low


def format_seconds(seconds: float) -> str:
    """``850 ms``, ``12 s``, ``3 min 5 s``, ``2 h 10 min``, ``3 d 4 h``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"


# -- searches -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamsFound:
    streams: list[StreamInfo]
    more: bool
    """More streams match than were listed."""
    scanned_all: bool
    """False: the search stopped after :data:`SCAN_CAP` streams without reaching the end."""


async def find_streams(store: EventStore, prefix: str, *, limit: int = 100) -> StreamsFound:
    """Streams whose id starts with ``prefix``, by stream id. A prefix with a ``-`` reads
    its category only; the streams come sorted, so the scan ends after the last match."""
    category = prefix.split("-", 1)[0] if "-" in prefix else None
    found: list[StreamInfo] = []
    scanned = 0
    async for info in store.streams(category=category):
        scanned += 1
        if info.stream_id.startswith(prefix):
            if len(found) == limit:
                return StreamsFound(found, True, True)
            found.append(info)
        elif prefix and info.stream_id > prefix:
            break
        if scanned >= SCAN_CAP:
            return StreamsFound(found, False, False)
    return StreamsFound(found, False, True)


async def position_at(store: EventStore, at: datetime) -> int:
    """The position to read after for the events recorded at or after ``at`` (a binary
    search over positions, one indexed read each: recorded times follow positions)."""
    low, high = 0, await store.head_position()
    while low < high:
        middle = (low + high) // 2
        first = None
        async for event in store.read_all(after=middle, limit=1):
            first = event
        if first is None or first.recorded_at >= at:
            high = middle
        else:
            low = max(middle + 1, min(first.position, high))
    return low


@dataclass(frozen=True)
class EventsFound:
    events: list[RecordedEvent]
    next_after: int | None
    """Read on after this position for more (``None``: no more now)."""
    capped: bool = False
    """The search read :data:`PAGES_CAP` pages without filling the page: ask again."""


async def find_events(
    store: EventStore,
    *,
    after: int = 0,
    prefix: str = "",
    types: Sequence[str] | None = None,
    until: datetime | None = None,
    limit: int = 50,
) -> EventsFound:
    """Events after ``after`` in the global order whose stream id starts with ``prefix``,
    of ``types``, recorded before ``until``."""
    categories = [prefix.split("-", 1)[0]] if "-" in prefix else None
    found: list[RecordedEvent] = []
    for _ in range(PAGES_CAP):
        events, caught_up_to, more = await store.read_page(
            after=after, limit=500, categories=categories, types=types
        )
        for event in events:
            if until is not None and event.recorded_at >= until:
                return EventsFound(found, None)
            if event.stream_id.startswith(prefix):
                found.append(event)
                if len(found) == limit:
                    return EventsFound(found, event.position)
        after = caught_up_to
        if not more:
            return EventsFound(found, None)
    return EventsFound(found, after, capped=True)
