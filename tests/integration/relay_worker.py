"""An outbox relay process for the kill -9 test: ``python -m ... STORE_URL NATS_URL STREAM``."""

from __future__ import annotations

import asyncio
import sys

import chronik
from chronik.nats import OutboxRelay


async def main(url: str, nats_url: str, stream: str) -> None:
    async with await chronik.connect(url) as store:
        relay = OutboxRelay(
            store,
            nats_url,
            name=stream,
            stream=stream,
            prefix=stream,
            categories=["account"],
            batch_size=13,
            poll_interval=0.05,
        )
        await relay.run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))
