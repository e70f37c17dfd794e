"""KurrentDB protocol face (issue 16): W1, W2 and W6 through ``chronik serve --kurrent-grpc``
with the official client (kurrentdbclient), against the same workloads in-process, in the same
run and on the same backend.

    python -m benchmarks.kurrent [--backends sqlite,postgres] [--quick] [--rounds 3]

W1: one append of 10 events per stream (``BatchAppend``); W2: one event per append with its
expected revision (``Append``); W6: the whole log read back (``Read`` of ``$all``) with each
event's data decoded from JSON. The server runs as a separate process, as users run it; rounds
alternate the in-process and protocol runs. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import chronik
from chronik.events import NewEvent

PG = os.environ.get("CHRONIK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")
PER_STREAM = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data(stream: int, i: int) -> dict[str, Any]:
    return {"account": stream, "amount_cents": 100 + i, "note": "deposit"}


async def _in_process(url: str, streams: int, singles: int, tag: str) -> dict[str, float]:
    async with await chronik.connect(url) as store:
        t = time.perf_counter()
        for s in range(streams):
            batch = [NewEvent("Deposited", _data(s, i)) for i in range(PER_STREAM)]
            await store.append(f"w1{tag}-{s}", batch, expected_version=chronik.NO_STREAM)
        w1 = streams * PER_STREAM / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(singles):
            stream = f"w2{tag}-{i // PER_STREAM}"
            event = NewEvent("Deposited", _data(i, i))
            await store.append(stream, [event], expected_version=i % PER_STREAM - 1)
        w2 = singles / (time.perf_counter() - t)
        t = time.perf_counter()
        count = 0
        async for recorded in store.read_all():
            _ = recorded.data
            count += 1
        w6 = count / (time.perf_counter() - t)
    return {"W1": w1, "W2": w2, "W6": w6}


def _over_protocol(uri: str, streams: int, singles: int, tag: str) -> dict[str, float]:
    from kurrentdbclient import KurrentDBClient, StreamState
    from kurrentdbclient import NewEvent as KNewEvent

    with KurrentDBClient(uri) as client:
        t = time.perf_counter()
        for s in range(streams):
            batch = [
                KNewEvent(type="Deposited", data=json.dumps(_data(s, i)).encode())
                for i in range(PER_STREAM)
            ]
            client.append_to_stream(
                f"w1{tag}-{s}", events=batch, current_version=StreamState.NO_STREAM
            )
        w1 = streams * PER_STREAM / (time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(singles):
            version = i % PER_STREAM - 1
            client.append_to_stream(
                f"w2{tag}-{i // PER_STREAM}",
                events=KNewEvent(type="Deposited", data=json.dumps(_data(i, i)).encode()),
                current_version=StreamState.NO_STREAM if version < 0 else version,
            )
        w2 = singles / (time.perf_counter() - t)
        t = time.perf_counter()
        count = 0
        for recorded in client.read_all(filter_exclude=()):
            json.loads(recorded.data)
            count += 1
        w6 = count / (time.perf_counter() - t)
    return {"W1": w1, "W2": w2, "W6": w6}


def _serve(url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cli = [sys.executable, "-m", "chronik", "--store", url]
    subprocess.run([*cli, "init"], check=True, capture_output=True)
    proc = subprocess.Popen(
        [*cli, "serve", "--kurrent-grpc", f"127.0.0.1:{port}", "--no-http"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return proc, f"kurrentdb://127.0.0.1:{port}?tls=false"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("chronik serve --kurrent-grpc did not start")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--quick", action="store_true", help="small sizes, one round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    streams, singles, rounds = (100, 300, 1) if args.quick else (1000, 2000, args.rounds)
    print(
        "| backend | workload | in-process events/s | protocol events/s | protocol / in-process |"
    )
    print("|---|---|---|---|---|")
    for backend in args.backends.split(","):
        work = tempfile.mkdtemp()
        schemas = [f"bench_kurrent_{uuid.uuid4().hex[:8]}" for _ in range(2)]
        urls = (
            [f"sqlite:///{work}/inproc.db", f"sqlite:///{work}/served.db"]
            if backend == "sqlite"
            else [f"{PG}?schema={s}" for s in schemas]
        )
        proc, uri = _serve(urls[1])
        try:
            results: dict[str, list[dict[str, float]]] = {"in-process": [], "protocol": []}
            for r in range(rounds):
                order = ["in-process", "protocol"] if r % 2 == 0 else ["protocol", "in-process"]
                for kind in order:
                    tag = f"r{r}"
                    if kind == "in-process":
                        results[kind].append(
                            asyncio.run(_in_process(urls[0], streams, singles, tag))
                        )
                    else:
                        results[kind].append(_over_protocol(uri, streams, singles, tag))
            for workload in ("W1", "W2", "W6"):
                i = statistics.median(x[workload] for x in results["in-process"])
                p = statistics.median(x[workload] for x in results["protocol"])
                print(
                    f"| {backend} | {workload} | {i:,.0f} | {p:,.0f} | {p / i:.2f}x |", flush=True
                )
        finally:
            proc.terminate()
            proc.wait(20)
            if backend == "postgres":
                import psycopg

                with psycopg.connect(PG, autocommit=True) as conn:
                    for schema in schemas:
                        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    main()
