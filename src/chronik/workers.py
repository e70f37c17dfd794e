"""The shape every long-running part shares (DESIGN decision 8): start, stop, run until told,
and, for the parts that read the log, one way to follow it.

:class:`Worker` is the life cycle: :meth:`~Worker.start` (returns once its task runs),
:meth:`~Worker.stop` (graceful: the page in progress commits or rolls back whole),
:meth:`~Worker.run` (until stopped) and ``async with``.

:class:`Follower` is the one loop that follows the log, for every worker that reads events
(projections, the snapshotter, sagas, the outbox relay). It owns the checkpoint (load,
commit), catch-up then live following through :meth:`chronik.Subscription.pages` (paging by
``Page.more``, the wake-up armed before each read), retry with :class:`Backoff` when the
store is lost (it resumes from the stored checkpoint), a checkpoint moved by another runner,
dead letters for events that cannot be upcast, and :meth:`~Follower.catch_up`. A subclass
gives its checkpoint name, its filter and :meth:`~Follower.handle_page`; nothing else.

Example::

    class Mailer(Follower):
        def __init__(self, store):
            super().__init__(store, checkpoint_name="mailer", categories=["order"])

        async def handle_page(self, page):
            for event in page.events:
                await send_mail(event)          # at-least-once: the checkpoint follows
            return len(page.events)

    async with Mailer(store):                   # start ... stop gracefully
        ...
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal, Self

from chronik.errors import CheckpointMoved, FollowerFailed, StoreUnavailable
from chronik.subscriptions import Backoff, Page, Poison, Subscription, describe

if TYPE_CHECKING:
    from chronik.codec import EventRegistry
    from chronik.store.protocol import EventStore

__all__ = ["Backoff", "Follower", "FollowerFailed", "Poller", "Worker", "WorkerState"]

logger = logging.getLogger("chronik.workers")

WorkerState = Literal[
    "idle", "running", "retrying", "paused", "stopped", "failed", "rebuilding", "retired"
]


class Worker:
    """Base of chronik's workers: one task, ``start``/``stop`` and the helpers built on them.

    A subclass gives :meth:`_main` (the task's body: run until :attr:`_stopping` is set) and
    may give :meth:`_starting` (set-up before the task) and :meth:`_stopped` (after it).
    """

    name = "worker"

    def __init__(self) -> None:
        self.state: WorkerState = "idle"
        self.last_error: str | None = None
        self.resumed = 0
        """Times the worker resumed after losing the store (or broker)."""
        self._task: asyncio.Task[None] | None = None
        self._stop_in_progress: asyncio.Future[None] | None = None
        self._stopping = asyncio.Event()

    async def _main(self) -> None:
        raise NotImplementedError

    async def _starting(self) -> None:
        """Set-up before the task starts (may raise: then nothing starts)."""

    async def _stopped(self) -> None:
        """Clean-up after the task ended (close connections)."""

    async def _set_state(self, state: WorkerState) -> None:
        self.state = state

    async def start(self) -> None:
        """Set up and start the worker's task (returns at once; a no-op when running;
        after a stop in progress has ended)."""
        if self._stop_in_progress is not None and not self._stop_in_progress.done():
            await asyncio.shield(self._stop_in_progress)
        if self._task is not None and not self._task.done():
            return
        self._stopping.clear()
        await self._starting()
        await self._set_state("running")
        self._task = asyncio.create_task(self._guarded(), name=f"{type(self).__name__}-{self.name}")

    async def _guarded(self) -> None:
        try:
            await self._main()
        except Exception as exc:  # a bug or an error no retry fixes: say so, then end
            self.last_error = describe(exc)
            logger.exception("%s failed", self.name)
            await self._set_state("failed")
            raise

    def _request_stop(self) -> None:
        self._stopping.set()

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop after the work in progress (a page, a round: it commits or rolls back
        whole); after ``grace`` seconds the task is cancelled, which rolls back its open
        transaction. Callers stopping at the same time all wait for the one stop."""
        if self._stop_in_progress is None or self._stop_in_progress.done():
            self._stop_in_progress = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._stop_in_progress)

    async def _stop(self, grace: float) -> None:
        self._request_stop()
        task, self._task = self._task, None
        if task is not None:
            _, late = await asyncio.wait({task}, timeout=grace)
            for t in late:
                t.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.state in ("running", "retrying", "paused"):
            await self._set_state("stopped")
        await self._stopped()

    def failure(self) -> str | None:
        """Why the worker stopped for good (``None``: it did not)."""
        return (self.last_error or "failed") if self.state == "failed" else None

    async def wait(self) -> None:
        """Until the worker's task ends (it failed, or retired); at once if none runs."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def run(self) -> None:
        """Start and run until :meth:`stop` is called (from another task) or the worker
        ends by itself; stops gracefully when cancelled."""
        await self.start()
        try:
            await self.wait()
        finally:
            await self.stop()

    async def run_until_stopped(self, stop: asyncio.Event) -> None:
        """Start, wait for ``stop`` to be set (a signal handler, say) or for the worker to
        end by itself (it failed, or retired), then stop gracefully."""
        await self.start()
        stopper = asyncio.ensure_future(stop.wait())
        ended = asyncio.ensure_future(self.wait())
        try:
            await asyncio.wait({stopper, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopper, ended):
                task.cancel()
            await asyncio.gather(stopper, ended, return_exceptions=True)
            await self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class Follower(Worker):
    """Catch up, then follow the log: the loop of every worker that reads events.

    Args:
        store: the event store.
        checkpoint_name: where the position handled is kept (``projection:v1``,
            ``snapshotter:NAME``, ``saga:NAME``, ``relay:NAME``).
        categories, types: the events read (``None``: all).
        batch_size: events per page.
        poll_interval: longest wait for a change the store cannot signal (another process
            on SQLite).
        registry, tolerant: upcast events on read (see :class:`~chronik.Subscription`);
            an event that cannot be upcast is dead-lettered under ``checkpoint_name``.
    """

    kind = "follower"

    def __init__(
        self,
        store: EventStore,
        *,
        checkpoint_name: str,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        batch_size: int = 500,
        poll_interval: float = 0.5,
        registry: EventRegistry | None = None,
        tolerant: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        super().__init__()
        self.name = checkpoint_name
        self.store = store
        self.checkpoint_name = checkpoint_name
        self.categories = list(categories) if categories is not None else None
        self.types = list(types) if types is not None else None
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.registry = registry
        self.tolerant = tolerant
        self.checkpoint = 0
        """The last position handled and committed (or loaded)."""
        self.caught_up_to = 0
        """Every wanted event at or below it has been handled."""
        self.handled = 0
        """What :meth:`handle_page` counted, since this object was made."""
        self.dead_lettered = 0
        """Events recorded as dead letters by this object."""
        self.subscription: Subscription | None = None
        self.progress = asyncio.Condition()
        """Notified whenever :attr:`caught_up_to` moves or the state changes."""
        self._prepared = False
        self._stepper: Subscription | None = None

    # -- what a subclass gives ---------------------------------------------------------------

    async def handle_page(self, page: Page) -> int:
        """Handle one page's events; return how many count as handled.

        It may commit the checkpoint itself (an in-database projection does, with its
        writes, through :meth:`advance`); whatever it does not commit, :meth:`commit` saves
        after it returns. Raise :class:`FollowerFailed` to stop for good; a
        :class:`~chronik.StoreUnavailable` is retried from the stored checkpoint.
        """
        raise NotImplementedError

    async def prepare(self) -> None:
        """Set up before the first page (tables, say). Runs once per object."""

    async def retired(self) -> bool:
        """Whether this worker should end by itself (checked before each idle wait)."""
        return False

    async def commit(self, position: int) -> None:
        """Save ``position`` as the checkpoint (when it moved); its own transaction."""
        if position > self.checkpoint:
            async with self.store.transaction() as tx:
                await tx.set_checkpoint(self.checkpoint_name, position)
            await self.advance(position)

    async def dead_letter(self, poison: Poison) -> None:
        """Record an event that could not be handed over (its upcast failed)."""
        async with self.store.transaction() as tx:
            await tx.add_dead_letter(self.checkpoint_name, poison.event, poison.error, 1)

    # -- the loop ---------------------------------------------------------------------------

    async def load_checkpoint(self) -> int:
        """Read the stored checkpoint into :attr:`checkpoint` (0: never saved)."""
        stored = await self.store.get_checkpoint(self.checkpoint_name) or 0
        self.checkpoint = stored
        if stored > self.caught_up_to:  # moved by another runner: progress too
            await self.advance(stored)
        return stored

    async def advance(self, position: int) -> None:
        """Note that everything up to ``position`` is handled and committed."""
        self.checkpoint = max(self.checkpoint, position)
        self.caught_up_to = max(self.caught_up_to, position)
        async with self.progress:
            self.progress.notify_all()

    def _subscribe(self) -> Subscription:
        return Subscription(
            self.store,
            name=self.checkpoint_name,
            on_unavailable=self._store_lost,
            after=self.checkpoint,
            categories=self.categories,
            types=self.types,
            batch_size=self.batch_size,
            poll_interval=self.poll_interval,
            registry=self.registry,
            tolerant=self.tolerant,
        )

    async def _ready(self) -> None:
        if not self._prepared:
            await self.prepare()
            self._prepared = True
        await self.load_checkpoint()

    async def _take(self, page: Page) -> int:
        for poison in page.poison:
            logger.warning(
                "%s: dead letter %s@%d (position %d): %s",
                self.checkpoint_name, poison.event.stream_id, poison.event.version,
                poison.event.position, poison.error,
            )  # fmt: skip
            await self.dead_letter(poison)
            self.dead_lettered += 1
        handled = await self.handle_page(page) if page.events or page.poison else 0
        if type(handled) is not int:
            raise TypeError(
                f"{type(self).__name__}.handle_page must return an int (how many it "
                f"handled), not {handled!r}"
            )
        self.handled += handled
        newest = page.events[-1].position if page.events else 0
        await self.commit(max(page.caught_up_to, newest, self.checkpoint))
        return handled

    async def catch_up(self, progress: Callable[[int], None] | None = None) -> int:
        """Handle everything there is now, then return what :meth:`handle_page` counted.

        Returns once every event up to the head as of the call is handled (or a page says
        nothing more is there), however the filter thins the pages out and however fast
        new events arrive meanwhile. ``progress`` is called after each page with the count
        so far. A lost store raises :class:`~chronik.StoreUnavailable` (nothing is lost:
        call it again).
        """
        head = await self.store.head_position()
        if self._task is not None and not self._task.done():
            return await self._caught_up_by_task(head)  # no second reader racing the first
        await self._ready()
        done = 0
        while True:
            try:
                async for page in self._subscribe().pages(follow=False, until=head):
                    done += await self._take(page)
                    if progress is not None:
                        progress(done)
                return done
            except CheckpointMoved:
                # another runner (another process, say) committed first: go on from its
                # checkpoint; what it applied is not counted here
                await self.load_checkpoint()

    async def _caught_up_by_task(self, head: int) -> int:
        """Wait until the running task has handled everything up to ``head``."""
        before = self.handled
        async with self.progress:
            while self.caught_up_to < head and self.state in ("running", "retrying"):
                await self.progress.wait()
        if self.state == "failed":
            raise FollowerFailed(self.last_error or "failed")
        return self.handled - before

    async def run_once(self) -> int:
        """Handle the next page that has something to handle; returns what
        :meth:`handle_page` counted, 0 only once nothing more is there (so
        ``while await worker.run_once(): ...`` catches up, however the filter thins the
        pages out)."""
        if self._stepper is None:
            await self._ready()
            self._stepper = self._subscribe()
        while True:
            before = self._stepper.position
            page = await self._stepper.read_page()
            handled = await self._take(page)
            self._stepper.advance(self.checkpoint)
            if handled or not page.more or page.caught_up_to <= before:
                return handled  # (no progress: more is committed but not readable yet)

    async def _starting(self) -> None:
        await self._ready()

    async def _store_lost(self, error: BaseException | None) -> None:
        """The subscription lost the store (``error``) or reads again (``None``)."""
        if error is not None:
            self.last_error = describe(error)
            if self.state == "running":
                await self._set_state("retrying")
        elif self.state == "retrying":
            self.resumed += 1
            logger.info("%s: store back; resumed", self.checkpoint_name)
            await self._set_state("running")

    def _request_stop(self) -> None:
        super()._request_stop()
        if self.subscription is not None:
            self.subscription.stop()

    async def _set_state(self, state: WorkerState) -> None:
        self.state = state
        async with self.progress:
            self.progress.notify_all()

    async def _main(self) -> None:
        backoff = Backoff(first=0.1)
        while not self._stopping.is_set():
            try:
                if backoff.failures:
                    await self.load_checkpoint()  # a commit may have landed before the loss
                    logger.info("%s: store back; resuming", self.checkpoint_name)
                    self.resumed += 1
                    backoff.reset()
                    await self._set_state("running")
                self.subscription = sub = self._subscribe()
                if self._stopping.is_set():
                    break
                async for page in sub.pages(before_wait=self.retired):
                    await self._take(page)
                if not self._stopping.is_set():  # the pages ended: retired
                    await self._set_state("retired")
                    return
            except asyncio.CancelledError:
                raise
            except CheckpointMoved:
                # another runner got there first: go on from its checkpoint
                await self.load_checkpoint()
            except StoreUnavailable as exc:
                self.last_error = describe(exc)
                logger.warning(
                    "%s: store unavailable (%s); retrying in %.2fs",
                    self.checkpoint_name, exc, backoff.delay,
                )  # fmt: skip
                if self.state == "running":
                    await self._set_state("retrying")
                await backoff.sleep(self._stopping)
            except FollowerFailed as exc:
                self.last_error = exc.reason
                logger.error("%s stopped: %s", self.checkpoint_name, exc.reason)
                await self._set_state("failed")
                return


class Poller(Worker):
    """A worker that polls something other than the log (a table of pending commands, due
    deadlines, a broker): :meth:`run_once` until stopped, idling ``poll_interval`` when a
    round found nothing, and retrying with :class:`Backoff` when the store (or whatever
    :attr:`retry_on` names) is lost. A subclass gives :meth:`run_once`."""

    retry_on: tuple[type[BaseException], ...] = (StoreUnavailable,)
    """Errors that mean "lost for now": retried, never the end of the worker."""

    def __init__(self, *, name: str, poll_interval: float) -> None:
        super().__init__()
        self.name = name
        self.poll_interval = poll_interval

    async def run_once(self) -> int:
        """One round; returns how much it did (0: nothing to do now)."""
        raise NotImplementedError

    async def lost(self, exc: BaseException) -> None:
        """Called when a round failed with one of :attr:`retry_on` (close a connection)."""

    async def _main(self) -> None:
        backoff = Backoff(first=0.1)
        while not self._stopping.is_set():
            try:
                done = await self.run_once()
            except asyncio.CancelledError:
                raise
            except self.retry_on as exc:
                self.last_error = describe(exc)
                await self._set_state("retrying")
                logger.warning(
                    "%s: %s; retrying in %.2fs", self.name, self.last_error, backoff.delay
                )
                await self.lost(exc)
                await backoff.sleep(self._stopping)
                continue
            if backoff.failures:
                logger.info("%s: back; resumed", self.name)
                self.resumed += 1
                await self._set_state("running")
                backoff.reset()
            if not done:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.poll_interval)
