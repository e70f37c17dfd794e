"""Read-your-writes for a UI: wait a little for a projection, else show "pending".

Two ways to wait, depending on where the projection runs:

- in this process: :meth:`ProjectionRunner.wait_for` (woken by the runner itself);
- anywhere (another process, another machine): :func:`wait_for_projection` with the
  projection's name, which reads its stored checkpoint (of the version readers use).

:func:`fresh_or_pending` does either, given a runner or a store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from chronik.errors import ChronikError
from chronik.projections.runner import ProjectionRunner, WaitTimeout
from chronik.store.protocol import EventStore
from chronik.subscriptions import wait_for_checkpoint

__all__ = ["Pending", "fresh_or_pending", "wait_for_projection"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Pending:
    """The read model has not caught up yet: show a pending state, retry after ``position``."""

    position: int
    projection: str | None = None


async def wait_for_projection(
    store: EventStore, name: str, position: int, *, timeout: float, poll_interval: float = 0.02
) -> None:
    """Return once projection ``name`` (the version readers use) has applied ``position``,
    whichever process runs it. The version is looked up again every quarter second, so a
    blue/green switch during the wait is followed.

    Raises:
        WaitTimeout: not reached within ``timeout`` seconds.
        ChronikError: no version of ``name`` was ever set up.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    reached = 0
    while True:
        version = await store.get_active_version(name)
        if version is None:
            raise ChronikError(f"projection {name!r} has no active version: was it ever set up?")
        checkpoint = f"{name}:v{version}"
        remaining = deadline - loop.time()
        try:
            await wait_for_checkpoint(
                store, checkpoint, position, timeout=max(min(remaining, 0.25), 0.0),
                poll_interval=poll_interval,
            )  # fmt: skip
            return
        except TimeoutError:
            reached = await store.get_checkpoint(checkpoint) or 0
        if loop.time() >= deadline:
            raise WaitTimeout(name, position, reached, timeout)


async def fresh_or_pending(
    source: ProjectionRunner | EventStore,
    position: int | None,
    read: Callable[[], Awaitable[T]],
    *,
    projection: str | None = None,
    timeout: float = 0.2,
) -> T | Pending:
    """For a web handler: the fresh read model, or :class:`Pending` if not caught up soon.

    ``position`` is what the caller's own write returned (``None``: nothing to wait for).
    ``source`` is the runner of this process, or the store when the projection runs
    elsewhere (then ``projection`` names it).
    """
    if position is not None:
        try:
            if isinstance(source, ProjectionRunner):
                await source.wait_for(position, projection=projection, timeout=timeout)
            else:
                if projection is None:
                    raise ValueError("waiting through the store needs the projection's name")
                if await source.get_active_version(projection) is None:
                    return Pending(position, projection)  # not set up (yet): not fresh
                await wait_for_projection(source, projection, position, timeout=timeout)
        except WaitTimeout:
            return Pending(position, projection)
    return await read()
