"""One process of a partitioned projection, for the scale-out tests and benchmark:
``python -m tests.scaleout.worker STORE_URL PARTITIONS TTL MEMBER [BATCH]``.

Runs :class:`~chronik.scaleout.PartitionedProjectionRunner` of ``tests.scaleout.app`` until
SIGTERM (graceful: its leases are released), then exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import chronik
from chronik.scaleout import PartitionedProjectionRunner
from tests.scaleout.app import StreamOrder


async def main(url: str, partitions: int, ttl: float, member: str, batch: int) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with await chronik.connect(url) as store:
        runner = PartitionedProjectionRunner(
            store, StreamOrder(), partitions=partitions, member=member, lease_ttl=ttl,
            batch_size=batch, poll_interval=0.1,
            shared_reader=os.environ.get("CHRONIK_SO_SHARED", "1") == "1",
        )  # fmt: skip
        await runner.run_until_stopped(stop)
        return 0 if runner.failure() is None else 3


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    url, partitions, ttl, member = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 100
    sys.exit(asyncio.run(main(url, partitions, ttl, member, batch)))
