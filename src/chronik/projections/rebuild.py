"""Rebuilds that keep serving (blue/green), and inline projections."""

from __future__ import annotations

from collections.abc import Callable

from chronik.projections.kinds import Projection
from chronik.projections.runner import Progress, ProjectionRunner
from chronik.store.protocol import EventStore
from chronik.subscriptions import Subscription

__all__ = ["rebuild_blue_green", "register_inline"]


async def register_inline(store: EventStore, projection: Projection) -> None:
    """Update ``projection`` inside every later append's transaction on ``store``."""
    async with store.transaction() as tx:
        await projection.setup(tx)
    store.inline_projections.append(projection)


async def rebuild_blue_green(
    store: EventStore,
    old: Projection,
    new: Projection,
    *,
    batch_size: int = 500,
    progress: Callable[[Progress], None] | None = None,
) -> int:
    """Build ``new`` (same name, higher version) beside ``old``, switch, drop ``old``.

    ``old`` keeps serving while ``new`` catches up. The switch (the final events and the
    active version) is one transaction, so a reader that looks up the active version with
    ``store.get_active_version(name)`` sees either the old complete read model or the new
    complete one. A runner still running ``old`` retires itself when it sees the switch.
    """
    if new.name != old.name or new.version == old.version:
        raise ValueError("blue/green needs the same projection name and a different version")
    runner = ProjectionRunner(store, [new], batch_size=batch_size)
    follower = runner.follower(new.name)
    async with store.transaction() as tx:
        await new.setup(tx)  # the active version stays old's until the switch
    follower._prepared = True
    follower.state = "rebuilding"
    applied = await runner.catch_up(new.name, progress=progress)
    sub = Subscription(
        store,
        after=follower.checkpoint,
        categories=new.categories,
        types=new.stored_types,
        batch_size=batch_size,
    )
    while True:
        before = sub.position
        page = await sub.read_page()
        if page.more and (page.events or page.caught_up_to > before):
            # more arrived meanwhile: keep catching up (what an open transaction holds back
            # is applied after the switch, by a runner of the new version)
            applied += await follower.handle_page(page)
            sub.advance(follower.checkpoint)
            continue
        async with store.transaction() as tx:
            for event in page.events:
                for item in new.events_to_handle(event):
                    await new.handle(item, tx)
            final = max(page.caught_up_to, follower.checkpoint)
            await tx.advance_checkpoint(new.checkpoint_name, follower.checkpoint, final)
            await tx.set_active_version(new.name, new.version)
        applied += len(page.events)
        break
    async with store.transaction() as tx:
        await old.teardown(tx)
    return applied
