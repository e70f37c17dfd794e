"""Throughput of the partitioned inbox (issue 17) with 1, 2 and 4 member processes.

``python -m benchmarks.inbox_scale [--runs 3] [--messages 3000] [--handler-ms 1]``:
``MESSAGES`` messages on 300 streams are published to a fresh JetStream stream on the
shared NATS (subjects ``STREAM.<partition of 8>.acct.Added``, as the relay with
``subject_partitions=8`` writes them), applied by 1, 2 or 4 processes of
``tests.scaleout.inbox_worker`` (8 partitions, ordered: one message in flight per
partition) on PostgreSQL. The processes start on the empty stream and split the partitions
first; the clock runs from the first publish until every message took effect. The handler
blocks ``--handler-ms`` per message (synchronous I/O). Rounds interleave the process
counts; median and min-max per count, and the ratio to one process in the same round.
Nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid

from tests.conftest import NATS_URL
from tests.scaleout.cluster import ROOT, owners
from tests.scaleout.inbox_worker import EFFECTS, INBOX

import chronik
from benchmarks.common import create_target, drop_target
from chronik.nats import ensure_stream, subject_for
from chronik.scaleout import partition_of
from chronik.scaleout.inbox import inbox_group
from chronik.store import SqlStore, require

__all__ = ["main"]


async def _publish(stream: str, messages: int) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await ensure_stream(js, stream, [f"{stream}.>"])
    for n in range(messages):
        stream_id = f"acct-{n % 300}"
        headers = {"Nats-Msg-Id": f"{stream}-{n}", "Chronik-Stream-Id": stream_id,
                   "Chronik-Position": str(n + 1), "Chronik-Type": "Added"}  # fmt: skip
        subject = subject_for(stream, "acct", "Added", partition_of(stream_id, 8))
        await js.publish(subject, b"{}", stream=stream, headers=headers)
    await nc.close()


async def _drop(stream: str) -> None:
    import nats

    nc = await nats.connect(NATS_URL)
    await nc.jetstream().delete_stream(stream)
    await nc.close()


async def run(procs: int, messages: int, handler_ms: float) -> float:
    """Messages per second with ``procs`` inbox processes."""
    target = create_target("postgres", f"inbox{procs}")
    url = target.chronik_url()
    stream = f"bi_{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
               CHRONIK_SO_HANDLER_MS=str(handler_ms))  # fmt: skip
    members: list[subprocess.Popen[bytes]] = []
    try:
        await _publish(stream, 0)  # the stream, empty: the members split the partitions first
        async with await chronik.connect(url) as store:
            async with store.transaction() as tx:
                await tx.execute(EFFECTS.format(serial="BIGSERIAL"))
            for i in range(procs):
                members.append(subprocess.Popen(  # noqa: ASYNC220
                    [sys.executable, "-m", "tests.scaleout.inbox_worker", url, NATS_URL, stream,
                     "8", "3.0", f"w{i}"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                ))  # fmt: skip
            names = {f"w{i}" for i in range(procs)}
            while True:
                owned = await owners(store, inbox_group(INBOX))
                if len(owned) == 8 and set(owned.values()) == names:
                    break
                await asyncio.sleep(0.05)
            started = time.monotonic()
            await _publish(stream, messages)
            sql = require(store, SqlStore)
            while True:
                rows = await sql.query("SELECT count(*) FROM inbox_effects")
                if int(rows[0][0]) >= messages:
                    return messages / (time.monotonic() - started)
                if time.monotonic() - started > 600:
                    raise TimeoutError("the inbox did not finish")
                await asyncio.sleep(0.05)
    finally:
        for member in members:
            member.terminate()
        for member in members:
            member.wait(60)
        drop_target(target)
        await _drop(stream)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--handler-ms", type=float, default=1.0)
    args = parser.parse_args(argv)
    counts = (1, 2, 4)
    rates: dict[int, list[float]] = {n: [] for n in counts}
    ratios: dict[int, list[float]] = {n: [] for n in counts}
    print(f"partitioned inbox: {args.messages} messages, 300 streams, 8 partitions, ordered, "
          f"{args.handler_ms} ms blocking handler, {args.runs} interleaved rounds")  # fmt: skip
    for r in range(args.runs):
        round_rates = {}
        for n in counts:
            round_rates[n] = await run(n, args.messages, args.handler_ms)
            print(f"  round {r + 1}, {n} process(es): {round_rates[n]:,.0f} messages/s")
        for n in counts:
            rates[n].append(round_rates[n])
            ratios[n].append(round_rates[n] / round_rates[1])
    for n in counts:
        line = (f"  {n} process(es): {statistics.median(rates[n]):,.0f} "
                f"(min {min(rates[n]):,.0f}, max {max(rates[n]):,.0f}) messages/s")  # fmt: skip
        if n > 1:
            line += (f"; {statistics.median(ratios[n]):.2f}x of one (min {min(ratios[n]):.2f}, "
                     f"max {max(ratios[n]):.2f})")  # fmt: skip
        print(line)


if __name__ == "__main__":
    asyncio.run(main())
