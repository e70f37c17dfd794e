"""One member of a partitioned inbox, for the inbox kill tests:
``python -m tests.scaleout.inbox_worker STORE_URL NATS_URL STREAM PARTITIONS TTL MEMBER``.

Runs :class:`~chronik.scaleout.inbox.PartitionedInbox` ``INBOX`` on ``STREAM.<p>.>`` until
SIGTERM (graceful: leases released, fetched messages handed back), then exits 0. Each
message's effect is a row of ``inbox_effects`` (see :func:`effect`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

import chronik
from chronik.nats import InboxMessage
from chronik.scaleout.inbox import PartitionedInbox
from chronik.store.protocol import Tx

INBOX = "so_inbox"
EFFECTS = (
    "CREATE TABLE IF NOT EXISTS inbox_effects (seq {serial} PRIMARY KEY, message_id TEXT NOT "
    "NULL, stream_id TEXT NOT NULL, position BIGINT NOT NULL, member TEXT NOT NULL)"
)


HANDLER_SECONDS = float(os.environ.get("CHRONIK_SO_HANDLER_MS", "0")) / 1000
"""The benchmark's handler I/O: blocks the process this long per message."""


async def effect(message: InboxMessage, tx: Tx) -> None:
    """One row per application, in the order applied (``seq``): a message applied twice has
    two rows, a stream applied out of order has positions out of ``seq`` order."""
    if HANDLER_SECONDS:
        time.sleep(HANDLER_SECONDS)
    await tx.execute(
        "INSERT INTO inbox_effects (message_id, stream_id, position, member) "
        "VALUES (:m, :s, :p, :w)",
        {"m": message.message_id, "s": message.headers["Chronik-Stream-Id"],
         "p": int(message.headers["Chronik-Position"]), "w": os.environ.get("MEMBER", "")},
    )  # fmt: skip


async def main(url: str, nats_url: str, stream: str, partitions: int, ttl: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with await chronik.connect(url) as store:
        runner = PartitionedInbox(
            store, nats_url, name=INBOX, stream=stream, prefix=stream, partitions=partitions,
            handler=effect, member=os.environ["MEMBER"], lease_ttl=ttl, batch_size=10,
            ack_wait=2.0, fetch_timeout=0.2,
        )  # fmt: skip
        await runner.run_until_stopped(stop)
        return 0 if runner.failure() is None else 3


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    url, nats_url, stream, partitions, ttl, member = sys.argv[1:7]
    os.environ["MEMBER"] = member
    sys.exit(asyncio.run(main(url, nats_url, stream, int(partitions), float(ttl))))
