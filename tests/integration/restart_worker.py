"""One kind of worker in a process of its own, for the PostgreSQL restart test:
``python -m tests.integration.restart_worker KIND STORE_URL [NATS_URL NAME]``.

KIND is ``snapshots`` (a Snapshotter of the ``acct`` streams), ``sagas`` (the funds
transfer's SagaRunner, CommandDispatcher and DeadlineWorker), ``relay`` (an OutboxRelay of
``acct`` to the JetStream stream NAME) or ``inbox`` (an Inbox of that stream, effects in
``inbox_effects``). Projections run through ``chronik projections run`` instead.

It logs ``running KIND`` on stderr once SIGTERM stops it gracefully (exit 0); a worker that
ends by itself ends the process with exit status 3.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from typing import Any

from examples import funds_transfer as ft

import chronik
from chronik.nats import Inbox, InboxMessage, OutboxRelay
from chronik.sagas import CommandDispatcher, DeadlineWorker, SagaRunner
from chronik.snapshots import EveryN, SnapshotConfig, Snapshotter
from chronik.store.protocol import EventStore, Tx
from chronik.workers import Worker

registry = chronik.EventRegistry()


@registry.event("Added")
@dataclass(frozen=True)
class Added:
    """What the restart test appends to the ``acct`` streams (crash_app.Totals counts it)."""

    n: int


@dataclass(frozen=True)
class Sum:
    total: int = 0
    count: int = 0


def _evolve(state: Sum, event: object) -> Sum:
    if isinstance(event, Added):
        return Sum(state.total + event.n, state.count + 1)
    return state


def _decide(command: object, state: Sum) -> list[object]:
    return []


decider: chronik.Decider[object, object, Sum] = chronik.Decider(
    decide=_decide, evolve=_evolve, initial_state=Sum
)
SNAPSHOTS = SnapshotConfig(Sum, policy=EveryN(1), inline=False, keep=2)
"""A snapshot at the newest version of every page's streams: each stream's last version."""
TARGETS = {"acct": (decider, SNAPSHOTS)}
SNAPSHOTTER = "restart"
INBOX = "restart_inbox"


async def inbox_effect(message: InboxMessage, tx: Tx) -> None:
    """Counts the applications of each message (must end at 1)."""
    await tx.execute(
        "INSERT INTO inbox_effects (message_id, n) VALUES (:m, 1) "
        "ON CONFLICT (message_id) DO UPDATE SET n = inbox_effects.n + 1",
        {"m": message.message_id},
    )


def build(kind: str, store: EventStore, args: list[str]) -> list[Worker]:
    if kind == "snapshots":
        return [
            Snapshotter(
                store,
                TARGETS,
                registry=registry,
                name=SNAPSHOTTER,
                batch_size=25,
                poll_interval=0.05,
            )
        ]
    if kind == "sagas":
        return [
            SagaRunner(store, ft.transfer_saga, batch_size=7, poll_interval=0.05),
            CommandDispatcher(
                store,
                [ft.transfer_saga],
                ft.account_executor(store),
                rejected_by=(ft.AccountRejected,),
                poll_interval=0.05,
                claim_timeout=1.0,  # a killed worker's claims are taken over soon
            ),
            DeadlineWorker(store, [ft.transfer_saga], poll_interval=0.1),
        ]
    nats_url, name = args
    if kind == "relay":
        relay = OutboxRelay(
            store,
            nats_url,
            name=name,
            stream=name,
            prefix=name,
            categories=["acct"],
            batch_size=13,
            poll_interval=0.05,
        )
        return [relay]
    if kind == "inbox":
        inbox = Inbox(
            store,
            nats_url,
            name=INBOX,
            stream=name,
            subject=f"{name}.acct.>",
            handler=inbox_effect,
            max_deliver=1,  # a handler failure is dead-lettered at once: a lost store is none
            ack_wait=5.0,
            batch_size=20,
            fetch_timeout=0.2,
        )
        return [inbox]
    raise SystemExit(f"unknown kind {kind!r}")


async def main(kind: str, url: str, args: list[str]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with await chronik.connect(url) as store:
        workers = build(kind, store, args)
        runs = [asyncio.create_task(w.run()) for w in workers]
        logging.getLogger("restart_worker").warning("running %s", kind)
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({*runs, stopper}, return_when=asyncio.FIRST_COMPLETED)
        ended = [w for w, t in zip(workers, runs, strict=True) if t.done()]
        for w in workers:
            await w.stop()
        stopper.cancel()
        results: list[Any] = await asyncio.gather(*runs, return_exceptions=True)
    for w, result in zip(workers, results, strict=True):
        if isinstance(result, BaseException):
            print(f"{type(w).__name__} raised {result!r}", file=sys.stderr)
    if ended:
        print(f"ended by itself: {[type(w).__name__ for w in ended]}", file=sys.stderr)
        return 3
    return 1 if any(isinstance(r, BaseException) for r in results) else 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:])))
