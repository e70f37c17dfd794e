"""One process of a partitioned snapshotter, for the scale-out snapshot test:
``python -m tests.scaleout.snapshot_worker STORE_URL PARTITIONS TTL MEMBER [BATCH]``
(the ``acct`` targets of tests.integration.restart_worker: a snapshot at every version)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import chronik
from chronik.scaleout import PartitionedSnapshotter
from tests.integration import restart_worker as rw


async def main(url: str, partitions: int, ttl: float, member: str, batch: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with await chronik.connect(url) as store:
        runner = PartitionedSnapshotter(
            store, rw.TARGETS, registry=rw.registry, name="so", partitions=partitions,
            member=member, lease_ttl=ttl, batch_size=batch, poll_interval=0.05,
        )  # fmt: skip
        await runner.run_until_stopped(stop)
        return 0 if runner.failure() is None else 3


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    url, partitions, ttl, member = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 25
    sys.exit(asyncio.run(main(url, partitions, ttl, member, batch)))
