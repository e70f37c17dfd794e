"""Subscriptions: catch up from a position, then follow the store live.

A :class:`Subscription` pages ``read_all`` (so it inherits each backend's no-hole rule: on
PostgreSQL it never passes a transaction that is still running) and, once caught up, waits
for the store to signal a change (PostgreSQL LISTEN/NOTIFY; SQLite and memory wake readers
in the same process at once) or for ``poll_interval`` to pass (other processes).

It pulls one page at a time: a slow consumer simply reads later, memory stays bounded by
``batch_size`` events.

With ``registry=``, events come upcast to the shapes the code knows today (see
:meth:`chronik.EventRegistry.upcast`); ``types`` then name current types, and the stored
types renamed into them are read too. ``tolerant=True`` passes events of unknown types or
newer schema versions through raw instead of raising.

:meth:`Subscription.pages` is the one loop that follows the log in chronik: every worker
(projections, snapshotter, sagas, outbox relay) reads through it, via
:class:`chronik.workers.Follower`. It takes the store's change marker *before* each read, so
an append that commits while the caller handles a page wakes it at once; it decides "caught
up" only from :attr:`Page.more`, never from the length of a page (a filtered page on
PostgreSQL can be short or empty while more follows).

An event that cannot be upcast does not stop the subscription: it comes in
:attr:`Page.poison` (the good events of the page are delivered), and a named subscription
iterated event by event records it as a dead letter.

Example::

    sub = Subscription(store, name="mailer", categories=["order"])
    async for event in sub:
        await send_mail(event)
        await sub.save_checkpoint(event.position)   # at-least-once
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chronik.errors import StoreUnavailable
from chronik.events import RecordedEvent
from chronik.store.protocol import EventStore

if TYPE_CHECKING:
    from chronik.codec import EventRegistry

__all__ = ["Backoff", "Page", "Poison", "Subscription", "wait_for_checkpoint"]

logger = logging.getLogger("chronik.subscriptions")


class Backoff:
    """Exponential backoff for retrying a lost store or broker: ``first`` doubling to ``most``.

    The one retry policy of chronik's workers; :meth:`sleep` returns early when ``stop`` is
    set, so a stopping worker never waits out its backoff.
    """

    def __init__(self, first: float = 0.05, most: float = 5.0) -> None:
        self.first = first
        self.most = most
        self.delay = first
        self.failures = 0
        """Consecutive failures since the last :meth:`reset`."""

    def reset(self) -> None:
        self.delay = self.first
        self.failures = 0

    def step(self) -> float:
        """The current delay, doubling the next one (for waits that are not failures)."""
        delay, self.delay = self.delay, min(self.delay * 2, self.most)
        return delay

    async def sleep(self, stop: asyncio.Event | None = None) -> None:
        """Wait the current delay (or until ``stop`` is set), then double it."""
        self.failures += 1
        delay, self.delay = self.delay, min(self.delay * 2, self.most)
        if stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


def describe(exc: BaseException) -> str:
    """One line naming an exception and its message (for logs, statuses, dead letters)."""
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


@dataclass(frozen=True, slots=True)
class Poison:
    """An event a subscription read but could not hand over (its upcast failed)."""

    event: RecordedEvent
    error: str


@dataclass(frozen=True, slots=True)
class Page:
    """One read of a subscription.

    ``caught_up_to`` is a position such that every matching event at or below it is in this
    page or an earlier one: a reader waiting for a position that does not match the filter
    can stop waiting once ``caught_up_to`` reaches it. ``more`` says more may be there now
    (read again at once rather than wait for a change); a page can be short or even empty
    and still have ``more``: a filtered read on PostgreSQL walks the log a window at a time.
    ``poison`` holds the events of this page that could not be upcast (with the reason).
    """

    events: list[RecordedEvent]
    caught_up_to: int
    more: bool = False
    poison: tuple[Poison, ...] = ()


class Subscription:
    """Events after a position (or a named checkpoint), catch-up then live."""

    def __init__(
        self,
        store: EventStore,
        *,
        after: int | None = None,
        name: str | None = None,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        registry: EventRegistry | None = None,
        tolerant: bool = False,
        on_unavailable: Callable[[BaseException | None], Awaitable[None]] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not poll_interval > 0:
            raise ValueError("poll_interval must be > 0 seconds")
        self.store = store
        self.name = name
        self.on_unavailable = on_unavailable
        """Called with the error when following loses the store, with ``None`` once it
        reads again (a worker's state and log)."""
        self.categories = list(categories) if categories is not None else None
        self.types = list(types) if types is not None else None
        self.registry = registry
        self.tolerant = tolerant
        self._read_types = self.types
        if registry is not None and self.types is not None:
            self._read_types = registry.stored_types(self.types)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self._after = after
        self._stopped = asyncio.Event()
        self.waits = 0
        """Times :meth:`pages` went idle waiting for a change."""
        self.poll_expiries = 0
        """Of those, the waits that ended by ``poll_interval`` passing, not by a change."""

    @property
    def position(self) -> int:
        """The position this subscription has read up to."""
        return self._after or 0

    async def start_position(self) -> int:
        """``after`` if given, else the named checkpoint, else 0."""
        if self._after is None:
            stored = await self.store.get_checkpoint(self.name) if self.name else None
            self._after = stored or 0
        return self._after

    async def save_checkpoint(self, position: int) -> None:
        """Store ``position`` as this (named) subscription's checkpoint, in its own transaction."""
        if not self.name:
            raise ValueError("only a named subscription has a checkpoint")
        async with self.store.transaction() as tx:
            await tx.set_checkpoint(self.name, position)

    def stop(self) -> None:
        """End iteration after the current page."""
        self._stopped.set()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    async def read_page(self) -> Page:
        """Read the next page without waiting (empty when caught up)."""
        after = await self.start_position()
        events, caught_up_to, more = await self.store.read_page(
            after=after, limit=self.batch_size, categories=self.categories, types=self._read_types
        )
        if self.registry is None:
            return Page(events, caught_up_to, more)
        return self._upcast(events, caught_up_to, more)

    def _upcast(self, events: list[RecordedEvent], caught_up_to: int, more: bool) -> Page:
        assert self.registry is not None
        upcast = self.registry.upcast
        wanted = None if self.types is None else set(self.types)
        good: list[RecordedEvent] = []
        poison: list[Poison] = []
        for event in events:
            try:
                current = upcast(event, tolerant=self.tolerant)
            except Exception as exc:  # one bad event must not hold up the page
                poison.append(Poison(event, describe(exc)))
                continue
            good.extend(u for u in current if wanted is None or u.type in wanted)
        return Page(good, caught_up_to, more, tuple(poison))

    def advance(self, position: int) -> None:
        """Move the read cursor (done by :meth:`pages` for what it yields)."""
        if position > (self._after or 0):
            self._after = position

    async def pages(
        self,
        *,
        follow: bool = True,
        until: int | None = None,
        before_wait: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[Page]:
        """Pages until :meth:`stop`: catch-up pages, then (``follow``) one per change.

        With ``follow=False`` it ends once caught up (a page without ``more``), as of the
        moment it is called; a lost store then raises. Following, a lost database
        connection is not the end: it is logged and retried with :class:`Backoff`, and
        reading resumes after the last position yielded. The change marker is taken
        before each read, so a change during the caller's handling of a page is not lost.
        ``before_wait`` runs each time it is about to go idle; ``True`` ends the pages.
        ``until`` ends them once every matching event up to that position was handed out
        (``catch_up`` passes the head as of its call, so it returns under a steady stream
        of new events too).
        """
        backoff = Backoff()
        held = Backoff(first=0.001, most=self.poll_interval)
        while not self._stopped.is_set():
            marker = None
            try:
                if follow:
                    marker = self.store.change_marker()
                page = await self.read_page()
            except StoreUnavailable as exc:
                if not follow:
                    raise
                logger.warning(
                    "subscription %s: %s; retrying in %.2fs", self.name, exc, backoff.delay
                )
                if self.on_unavailable is not None:
                    await self.on_unavailable(exc)
                await backoff.sleep(self._stopped)
                continue
            if backoff.failures and self.on_unavailable is not None:
                await self.on_unavailable(None)
            backoff.reset()
            progressed = bool(page.events or page.poison or page.caught_up_to > self.position)
            if progressed:
                held.reset()
                yield page
                self.advance(page.caught_up_to)
            if until is not None and page.caught_up_to >= until:
                return
            if page.more and progressed:
                continue
            if page.more and marker is not None:
                # more is committed but not readable yet (PostgreSQL: an older transaction
                # is still open); its end is not signalled, so look again soon, then less
                # often: 1 ms doubling up to the poll interval, or at the next change
                await self._wait(marker, held.step())
                continue
            if page.more:
                return  # catching up only: nothing more is readable now
            if marker is None or (before_wait is not None and await before_wait()):
                return
            await self._wait(marker)

    async def _wait(self, marker: asyncio.Event, timeout: float | None = None) -> None:
        """Until ``marker`` is set (a change), :meth:`stop`, or ``timeout`` (default
        ``poll_interval``) passes."""
        if timeout is None:
            self.waits += 1
        if marker.is_set() or self._stopped.is_set():
            return
        waiter = asyncio.ensure_future(marker.wait())
        stopper = asyncio.ensure_future(self._stopped.wait())
        try:
            done, _ = await asyncio.wait(
                {waiter, stopper},
                timeout=self.poll_interval if timeout is None else timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if not done and timeout is None:
                self.poll_expiries += 1
        finally:
            for task in (waiter, stopper):
                if not task.done():
                    task.cancel()
            await asyncio.gather(waiter, stopper, return_exceptions=True)

    async def __aiter__(self) -> AsyncIterator[RecordedEvent]:
        async for page in self.pages():
            for poison in page.poison:
                await self._skip(poison)
            for event in page.events:
                yield event

    async def _skip(self, poison: Poison) -> None:
        event = poison.event
        logger.warning(
            "subscription %s: skipped %s@%d (position %d): %s",
            self.name, event.stream_id, event.version, event.position, poison.error,
        )  # fmt: skip
        if self.name:
            async with self.store.transaction() as tx:
                await tx.add_dead_letter(self.name, event, poison.error, 1)


async def wait_for_checkpoint(
    store: EventStore, name: str, position: int, *, timeout: float, poll_interval: float = 0.02
) -> int:
    """Wait until checkpoint ``name`` reaches ``position``; returns the checkpoint.

    For a process that does not run the worker itself (a web process waiting for a
    projection that runs elsewhere): it reads the stored checkpoint when the store signals
    a change and at least every ``poll_interval`` seconds (a checkpoint commit is not a
    change a store signals across processes), so it sees the checkpoint pass ``position``
    within about ``poll_interval``.

    Raises:
        TimeoutError: not reached within ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        marker = store.change_marker()
        reached = await store.get_checkpoint(name) or 0
        if reached >= position:
            return reached
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"checkpoint {name!r} is at {reached}, not {position}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(marker.wait(), min(poll_interval, remaining))
