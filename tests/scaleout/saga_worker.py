"""One process of the partitioned funds-transfer saga, for the scale-out saga test:
``python -m tests.scaleout.saga_worker STORE_URL PARTITIONS TTL MEMBER``.

Runs :class:`~chronik.scaleout.PartitionedSagaRunner` of ``examples.funds_transfer`` with
its CommandDispatcher and DeadlineWorker until SIGTERM (exit 0)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from examples import funds_transfer as ft

import chronik
from chronik.sagas import CommandDispatcher, DeadlineWorker
from chronik.scaleout import PartitionedSagaRunner
from chronik.workers import Worker


async def main(url: str, partitions: int, ttl: float, member: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with await chronik.connect(url) as store:
        workers: list[Worker] = [
            PartitionedSagaRunner(
                store, ft.transfer_saga, partitions=partitions, member=member, lease_ttl=ttl,
                batch_size=7, poll_interval=0.05,
            ),
            CommandDispatcher(
                store, [ft.transfer_saga], ft.account_executor(store),
                rejected_by=(ft.AccountRejected,), poll_interval=0.05, claim_timeout=1.0,
            ),
            DeadlineWorker(store, [ft.transfer_saga], poll_interval=0.1),
        ]  # fmt: skip
        for w in workers:
            await w.start()
        await stop.wait()
        for w in workers:
            await w.stop()
        return 0 if all(w.failure() is None for w in workers) else 3


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    url, partitions, ttl, member = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    sys.exit(asyncio.run(main(url, partitions, ttl, member)))
