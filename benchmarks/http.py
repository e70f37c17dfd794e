"""HTTP face (issue 15): append throughput and latency through `chronik serve` against
in-process ``append`` in the same run, with 1 and 32 concurrent clients; and push latency
from commit to an SSE client against the bare LISTEN/NOTIFY round trip (PostgreSQL).

    python -m benchmarks.http [--backends sqlite,postgres] [--appends 2000] [--rounds 3]

The server runs as a separate process (`chronik serve`), as users run it; rounds alternate
the in-process and HTTP runs. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import httpx

import chronik
from chronik.events import NewEvent

PG = os.environ.get("CHRONIK_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def _in_process(url: str, n: int, clients: int) -> dict[str, float]:
    async with await chronik.connect(url) as store:
        lat: list[float] = []

        async def one(c: int) -> None:
            for i in range(n // clients):
                t = time.perf_counter()
                await store.append(f"inproc{c}-{i % 50}", [NewEvent("Placed", {"n": i})])
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(c) for c in range(clients)))
        dt = time.perf_counter() - t0
    return {"per_s": len(lat) / dt, "p50_ms": _pct(lat, 0.5) * 1e3, "p99_ms": _pct(lat, 0.99) * 1e3}


async def _post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, path: str, body: bytes
) -> tuple[int, bytes]:
    """One HTTP/1.1 keep-alive POST on an open connection: the status and the body."""
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def _over_http(base: str, n: int, clients: int) -> dict[str, float]:
    """``clients`` keep-alive connections, one request in flight on each.

    A minimal HTTP/1.1 client on asyncio streams, not httpx: with 32 connections httpx's
    pool spent a whole core in this process (12 s of CPU in a 12 s run, profiled 2026-12-05),
    so the figure measured the client, not the server.
    """
    lat: list[float] = []
    parts = httpx.URL(base)
    host = f"{parts.host}:{parts.port}"

    async def one(c: int) -> None:
        reader, writer = await asyncio.open_connection(parts.host, parts.port)
        try:
            for i in range(n // clients):
                body = b'{"events":[{"type":"Placed","data":{"n":%d}}]}' % i
                t = time.perf_counter()
                status, text = await _post(reader, writer, host, f"/streams/http{c}-{i % 50}", body)
                assert status == 201, text
                lat.append(time.perf_counter() - t)
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(clients)))
    dt = time.perf_counter() - t0
    return {"per_s": len(lat) / dt, "p50_ms": _pct(lat, 0.5) * 1e3, "p99_ms": _pct(lat, 0.99) * 1e3}


async def _push_latency(url: str, base: str, samples: int) -> list[float]:
    """Append in this process (own store), time until the SSE client sees the event."""
    out: list[float] = []
    async with await chronik.connect(url) as store:
        head = await store.head_position()
        async with (
            httpx.AsyncClient(timeout=30) as http,
            http.stream("GET", f"{base}/live/events", params={"after": str(head)}) as stream,
        ):
            lines = stream.aiter_lines()
            for i in range(samples):
                t = time.perf_counter()
                await store.append(f"push-{i}", [NewEvent("Pinged", {"i": i})])
                async for line in lines:
                    if line.startswith("data:") and '"push-' in line:
                        out.append(time.perf_counter() - t)
                        break
                await asyncio.sleep(0.01)
    return out


async def _notify_round_trip(samples: int) -> list[float]:
    import psycopg

    out: list[float] = []
    async with (
        await psycopg.AsyncConnection.connect(PG, autocommit=True) as listener,
        await psycopg.AsyncConnection.connect(PG, autocommit=True) as sender,
    ):
        await listener.execute("LISTEN chronik_bench")
        for _ in range(samples):
            t = time.perf_counter()
            await sender.execute("NOTIFY chronik_bench")
            # a fresh generator per sample, ended by psycopg itself: cancelling a shared
            # notifies() generator from outside (wait_for) hung the first version of this
            got = [n async for n in listener.notifies(timeout=5, stop_after=1)]
            if not got:
                raise RuntimeError("NOTIFY was not delivered within 5 s")
            out.append(time.perf_counter() - t)
            await asyncio.sleep(0.01)
    return out


def _serve(url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cli = [sys.executable, "-m", "chronik", "--store", url]
    subprocess.run([*cli, "init"], check=True, capture_output=True)
    proc = subprocess.Popen(
        [*cli, "serve", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(f"{base}/health", timeout=1)
            return proc, base
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("chronik serve did not start")


def _row(rows: list[str], text: str) -> None:
    rows.append(text)
    print(text, flush=True)  # as it comes: a later failure loses nothing


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args(argv)
    rows: list[str] = []
    for backend in args.backends.split(","):
        work = tempfile.mkdtemp()
        schema = f"bench_http_{uuid.uuid4().hex[:8]}"
        url = f"sqlite:///{work}/http.db" if backend == "sqlite" else f"{PG}?schema={schema}"
        proc, base = _serve(url)
        try:
            results: dict[tuple[str, int], list[dict[str, float]]] = {}
            for r in range(args.rounds):
                for clients in (1, 32):
                    order = ["in-process", "http"] if r % 2 == 0 else ["http", "in-process"]
                    for kind in order:
                        run = (
                            _in_process(url, args.appends, clients)
                            if kind == "in-process"
                            else _over_http(base, args.appends, clients)
                        )
                        results.setdefault((kind, clients), []).append(asyncio.run(run))
            for clients in (1, 32):
                med: dict[str, dict[str, Any]] = {}
                for kind in ("in-process", "http"):
                    runs = results[(kind, clients)]
                    med[kind] = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
                    lo = min(x["per_s"] for x in runs)
                    hi = max(x["per_s"] for x in runs)
                    med[kind]["range"] = f"{lo:,.0f}-{hi:,.0f}"
                h, i = med["http"], med["in-process"]
                _row(
                    rows,
                    f"| {backend} | {clients} | {i['per_s']:,.0f} ({i['range']}) | "
                    f"{i['p50_ms']:.2f} / {i['p99_ms']:.2f} | {h['per_s']:,.0f} ({h['range']}) | "
                    f"{h['p50_ms']:.2f} / {h['p99_ms']:.2f} | {h['per_s'] / i['per_s']:.2f}x |",
                )
            push = asyncio.run(_push_latency(url, base, args.samples))
            _row(
                rows,
                f"| {backend} | push to SSE client, ms p50 / p99 | "
                f"{_pct(push, 0.5) * 1e3:.2f} / {_pct(push, 0.99) * 1e3:.2f} | | | | |",
            )
        finally:
            proc.terminate()
            proc.wait(20)
            if backend == "postgres":
                import psycopg

                with psycopg.connect(PG, autocommit=True) as conn:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        if backend == "postgres":
            bare = asyncio.run(_notify_round_trip(args.samples))
            _row(
                rows,
                f"| postgres | bare LISTEN/NOTIFY round trip, ms p50 / p99 | "
                f"{_pct(bare, 0.5) * 1e3:.2f} / {_pct(bare, 0.99) * 1e3:.2f} | | | | |",
            )
    print(
        "| backend | clients | in-process appends/s (range) | p50 / p99 ms | HTTP appends/s "
        "(range) | p50 / p99 ms | HTTP / in-process |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
