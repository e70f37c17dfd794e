"""One member of a consumer group, for the consumer-group tests:
``python -m tests.scaleout.group_member STORE_URL GROUP STRATEGY MEMBER``.

Receives messages until SIGTERM; a message whose data has ``"poison": true`` is nacked
(retry) every time, so it ends parked; any other is recorded in ``cg_effects`` and acked in
the same transaction (its effect and its ack commit together).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import cast

import chronik
from chronik.scaleout.groups import ConsumerGroup, Strategy


async def main(url: str, name: str, strategy: str, member: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with await chronik.connect(url) as store:
        group = ConsumerGroup(store, name, categories=["cg"], strategy=cast(Strategy, strategy),
                              max_retries=3, message_timeout=1.0, buffer=400)  # fmt: skip
        while not stop.is_set():
            messages = await group.receive(member, limit=25)
            if not messages:
                await asyncio.sleep(0.02)
            for m in messages:
                if m.data.get("poison"):
                    await group.nack(m, "retry", reason="poison")
                    continue
                async with store.transaction() as tx:
                    await tx.execute(
                        "INSERT INTO cg_effects (event_id, stream_id, version, member) "
                        "VALUES (:e, :s, :v, :m)",
                        {"e": m.event_id, "s": m.stream_id, "v": m.version, "m": member},
                    )
                    await group.ack(m, tx=tx)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(*sys.argv[1:5])))
