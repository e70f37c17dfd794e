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

Example::

    async for event in Subscription(store, name="mailer", categories=["order"]):
        await send_mail(event)
        await sub.save_checkpoint(event.position)   # at-least-once
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from chronik.errors import StoreUnavailable
from chronik.events import RecordedEvent
from chronik.store.protocol import EventStore

if TYPE_CHECKING:
    from chronik.codec import EventRegistry

__all__ = ["Page", "Subscription"]

logger = logging.getLogger("chronik.subscriptions")


@dataclass(frozen=True, slots=True)
class Page:
    """One read of a subscription.

    ``caught_up_to`` is a position such that every matching event at or below it is in this
    page or an earlier one: a reader waiting for a position that does not match the filter
    can stop waiting once ``caught_up_to`` reaches it. ``more`` says more may be there now
    (read again at once rather than wait for a change); a page can be short or even empty
    and still have ``more``: a filtered read on PostgreSQL walks the log a window at a time.
    """

    events: list[RecordedEvent]
    caught_up_to: int
    more: bool = False


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
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.store = store
        self.name = name
        self.categories = list(categories) if categories is not None else None
        self.types = list(types) if types is not None else None
        self.registry = registry
        self.tolerant = tolerant
        self._read_types = self.types
        if registry is not None and self.types is not None:
            self._read_types = registry.stored_types(self.types)
        self._full_page = False  # the last read filled a page (before upcasting)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self._after = after
        self._stopped = asyncio.Event()

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

    async def read_page(self) -> Page:
        """Read the next page without waiting (empty when caught up)."""
        after = await self.start_position()
        read_page = getattr(self.store, "read_page", None)
        if read_page is not None:  # the head and the page in one round trip (PostgreSQL)
            events, caught_up_to, self._full_page = await read_page(
                after=after,
                limit=self.batch_size,
                categories=self.categories,
                types=self._read_types,
            )
        else:
            head = await self.store.head_position()
            events = [
                e
                async for e in self.store.read_all(
                    after=after,
                    categories=self.categories,
                    types=self._read_types,
                    limit=self.batch_size,
                )
            ]
            caught_up_to = events[-1].position if events else after
            self._full_page = len(events) >= self.batch_size
            if len(events) < self.batch_size:
                # every matching event up to `head` was visible before this read: all here
                caught_up_to = max(caught_up_to, head)
        if self.registry is not None:
            upcast = self.registry.upcast
            wanted = None if self.types is None else set(self.types)
            events = [
                u
                for e in events
                for u in upcast(e, tolerant=self.tolerant)
                if wanted is None or u.type in wanted
            ]
        return Page(events, caught_up_to, self._full_page)

    def advance(self, position: int) -> None:
        """Move the read cursor (done by :meth:`pages` for what it yields)."""
        if position > (self._after or 0):
            self._after = position

    async def pages(self) -> AsyncIterator[Page]:
        """Pages forever (until :meth:`stop`): catch-up pages, then one per change.

        A lost database connection is not the end: it is logged and retried with backoff
        (up to 5 s apart), and reading resumes after the last position yielded.
        """
        backoff = 0.05
        while not self._stopped.is_set():
            try:
                page = await self.read_page()
            except StoreUnavailable as exc:
                logger.warning("subscription %s: %s; retrying in %.2fs", self.name, exc, backoff)
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.05
            if page.events or page.caught_up_to > self.position:
                yield page
                self.advance(page.caught_up_to)
            if not self._full_page:  # drops and splits change len(page.events)
                await self._wait()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    async def _wait(self) -> None:
        waiter = asyncio.ensure_future(self._wait_for_change())
        stopper = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waiter, stopper):
                if not task.done():
                    task.cancel()
            await asyncio.gather(waiter, stopper, return_exceptions=True)

    async def _wait_for_change(self) -> None:
        try:
            await self.store.wait_for_change(self.poll_interval)
        except StoreUnavailable:
            await asyncio.sleep(self.poll_interval)

    async def __aiter__(self) -> AsyncIterator[RecordedEvent]:
        async for page in self.pages():
            for event in page.events:
                yield event
