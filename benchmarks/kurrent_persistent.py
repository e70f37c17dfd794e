"""KurrentDB persistent subscriptions (issue 17 item 4): events/s through a persistent
subscription to ``$all`` with 1 and 4 competing reader processes (each event acked), against
a catch-up subscription to ``$all`` on the same server, same store, same run.

    python -m benchmarks.kurrent_persistent [--backends sqlite,postgres] [--events 2000]
                                            [--rounds 3] [--quick]

The server runs as its own process (``chronik serve --kurrent-grpc``), as users run it.
Readers are processes started before the clock and released together; the clock stops when
the group's info shows every event taken and none pending or in flight (acks included).
Rounds interleave the three kinds; the table gives the median and min-max of the rounds and
the ratio of medians to the catch-up read. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Literal, cast

from kurrentdbclient import KurrentDBClient, NewEvent, StreamState

from benchmarks.kurrent import PG, _serve

PER_STREAM = 20


def _seed(client: KurrentDBClient, events: int) -> None:
    for s in range(events // PER_STREAM):
        client.append_to_stream(
            f"bench-{s}",
            events=[NewEvent(type="Deposited", data=json.dumps({"s": s, "i": i}).encode())
                    for i in range(PER_STREAM)],
            current_version=StreamState.NO_STREAM,
        )  # fmt: skip


def _catch_up(client: KurrentDBClient, events: int) -> float:
    t = time.perf_counter()
    sub = client.subscribe_to_all()
    for got, _event in enumerate(sub, start=1):
        if got == events:
            break
    sub.stop()
    return events / (time.perf_counter() - t)


def _reader(uri: str, group: str, go: str) -> None:
    """A reader process: wait for ``go``, then read and ack until killed."""
    while not os.path.exists(go):
        time.sleep(0.005)
    client = KurrentDBClient(uri)
    sub = client.read_subscription_to_all(group, event_buffer_size=200, max_ack_delay=0.02)
    for event in sub:
        sub.ack(event)


def _persistent(uri: str, client: KurrentDBClient, events: int, readers: int, tag: str,
                strategy: str) -> float:  # fmt: skip
    group = f"bench-{tag}-{readers}"
    chosen = cast(Literal["DispatchToSingle", "RoundRobin", "Pinned"], strategy)
    client.create_subscription_to_all(group, consumer_strategy=chosen)
    go = Path(tempfile.mkdtemp()) / "go"
    env = dict(os.environ)
    procs = [
        subprocess.Popen([sys.executable, "-m", "benchmarks.kurrent_persistent", "--reader",
                          uri, group, str(go)], env=env)
        for _ in range(readers)
    ]  # fmt: skip
    try:
        time.sleep(1.5)  # imported and waiting
        t = time.perf_counter()
        go.touch()
        while True:
            info = client.get_subscription_info(group)
            taken = int(info.last_known_event_position.split("/")[0].split(":")[1])
            if (taken >= head and info.outstanding_messages_count == 0
                    and info.total_in_flight_messages == 0):  # fmt: skip
                break
            time.sleep(0.01)
        return events / (time.perf_counter() - t)
    finally:
        for p in procs:
            p.kill()
            p.wait()
        client.delete_subscription(group)


head = 0


def main(argv: list[str] | None = None) -> None:
    global head
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--reader"]:
        _reader(*argv[1:4])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--strategy", default="RoundRobin")
    parser.add_argument("--quick", action="store_true", help="300 events, one round")
    args = parser.parse_args(argv)
    events, rounds = (300, 1) if args.quick else (args.events, args.rounds)
    events -= events % PER_STREAM
    print(f"{events} events, {rounds} rounds, strategy {args.strategy}; median (min-max) "
          "events/s\n")  # fmt: skip
    print("| backend | catch-up subscription | persistent, 1 reader | persistent, 4 readers |")
    print("|---|---|---|---|")
    for backend in args.backends.split(","):
        work = tempfile.mkdtemp()
        schema = f"bench_psub_{uuid.uuid4().hex[:8]}"
        url = f"sqlite:///{work}/served.db" if backend == "sqlite" else f"{PG}?schema={schema}"
        proc, uri = _serve(url)
        client = KurrentDBClient(uri)
        try:
            _seed(client, events)
            head = client.get_commit_position()
            kinds = ["catch-up", "1", "4"]
            results: dict[str, list[float]] = {k: [] for k in kinds}
            for r in range(rounds):
                for kind in kinds[r % 3 :] + kinds[: r % 3]:  # rotate the order each round
                    if kind == "catch-up":
                        results[kind].append(_catch_up(client, events))
                    else:
                        results[kind].append(
                            _persistent(uri, client, events, int(kind), f"r{r}", args.strategy)
                        )
            base = statistics.median(results["catch-up"])
            cells = []
            for kind in kinds:
                xs = results[kind]
                m = statistics.median(xs)
                ratio = "" if kind == "catch-up" else f", {m / base:.2f}x"
                cells.append(f"{m:,.0f} ({min(xs):,.0f} to {max(xs):,.0f}{ratio})")
            print(f"| {backend} | " + " | ".join(cells) + " |", flush=True)
        finally:
            client.close()
            proc.terminate()
            proc.wait(20)
            if backend == "postgres":
                import psycopg

                with psycopg.connect(PG, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
