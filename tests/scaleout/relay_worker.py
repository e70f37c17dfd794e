"""One process of a partitioned outbox relay, for the scale-out relay test:
``python -m tests.scaleout.relay_worker STORE_URL PARTITIONS TTL MEMBER BATCH NATS STREAM``
(the ``acct`` streams to JetStream stream STREAM, subjects ``STREAM.>``; with
``CHRONIK_SO_SUBJECT_PARTITIONS=N`` in the environment, ``STREAM.<partition of N>.>``)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import chronik
from chronik.scaleout.relay import PartitionedRelay


async def main(url: str, partitions: int, ttl: float, member: str, nats: str, name: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with await chronik.connect(url) as store:
        runner = PartitionedRelay(
            store, nats, name=name, stream=name, prefix=name, categories=["acct"],
            partitions=partitions, member=member, lease_ttl=ttl, batch_size=13,
            poll_interval=0.05, subject_partitions=_subject_partitions(),
        )  # fmt: skip
        await runner.run_until_stopped(stop)
        return 0 if runner.failure() is None else 3


def _subject_partitions() -> int | None:
    n = os.environ.get("CHRONIK_SO_SUBJECT_PARTITIONS")
    return int(n) if n else None


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    url, partitions, ttl, member = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    sys.exit(asyncio.run(main(url, partitions, ttl, member, sys.argv[6], sys.argv[7])))
