"""The shape every long-running part shares (DESIGN decision 8): start, stop, run until told.

A worker (projection runner, snapshotter, ...) implements :meth:`Worker.start` (returns once
its tasks run) and :meth:`Worker.stop` (graceful: the batch in progress commits or rolls
back whole); this base adds running until an event is set and ``async with`` support.
"""

from __future__ import annotations

import asyncio
from typing import Self

__all__ = ["Worker"]


class Worker:
    """Base of chronik's workers: ``start``/``stop`` plus the helpers built on them."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self, *, grace: float = 10.0) -> None:
        raise NotImplementedError

    async def run_until_stopped(self, stop: asyncio.Event) -> None:
        """Start, wait for ``stop`` to be set (a signal handler, say), then stop gracefully."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
