"""What the hash chain (migration 0016, docs/security.md "Tamper evidence") costs on the
write path: W1, W2 (SQLite and PostgreSQL) and W3 (PostgreSQL) of ``benchmarks.run``, each
with the chain and without it, in the same run.

Not a test and not part of ``benchmarks.run``::

    python -m benchmarks.chain_cost [--repetitions 3] [--backends sqlite,postgres]
                                    [--only W1,W2,W3] [--json PATH]

chronik has no switch to turn the chain off; only this benchmark removes it, from its own
fresh database, for the "without" runs: on PostgreSQL it disables the ``events_chain``
trigger of the schema; on SQLite it drops the ``events_chained`` guard and runs the append
with the INSERT of before 0016 (in the measuring process only). Every measurement runs in a
fresh interpreter on a fresh database, and the two variants take turns (the order rotates
each repetition). Prints the median events/s with min-max of each and the ratio
chain/without (1.00: free; 0.90: 10% slower).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
from typing import Any

from benchmarks.common import PG_URL, Sizes, Target, create_target, drop_target, pg_reachable

SIZES = Sizes(w1_streams=2000, w1_events=10, w2_streams=200, w2_events=10, w3_seconds=3.0)
_PRE_0016_APPEND = (
    "INSERT INTO events (stream_id, category, version, event_id, type, schema_version, "
    "data, metadata, recorded_at) "
    "VALUES (?, ?, ?, ?, ?, ?, CAST(? AS TEXT), CAST(? AS TEXT), ?)"
)


def _unchain(target: Target) -> None:
    """Remove the chain from this (benchmark's own, already migrated) database."""
    if target.backend == "postgres":
        import psycopg

        with psycopg.connect(target.pg_url, autocommit=True) as conn:
            conn.execute(f'ALTER TABLE "{target.schema}".events DISABLE TRIGGER events_chain')
        return
    import sqlite3

    from chronik.store.sqlite_statements import SqliteStatements

    with sqlite3.connect(target.sqlite_path) as conn:
        conn.execute("DROP TRIGGER IF EXISTS events_chained")
    SqliteStatements.append = _PRE_0016_APPEND


async def _prepare(target: Target) -> None:
    import chronik

    async with await chronik.connect(target.chronik_url()):
        pass


async def _measure(workload: str, target: Target) -> dict[str, Any]:
    import chronik
    from benchmarks import chronik_side

    async with await chronik.connect(target.chronik_url()) as opened:
        store: Any = opened
        if workload == "W1":
            out = await chronik_side.write_accounts(store, SIZES)
        else:
            out = await chronik_side.append_one_by_one(store, SIZES)
        hashed = await store.query("SELECT count(*) FROM events WHERE hash IS NOT NULL")
        out["hashed"] = int(hashed[0][0])
        return out


def one(workload: str, variant: str, backend: str) -> dict[str, Any]:
    """One measurement in this (fresh) interpreter, on a fresh database."""
    target = create_target(backend, f"chain_{variant}")  # type: ignore[arg-type]
    try:
        asyncio.run(_prepare(target))
        if variant == "without":
            _unchain(target)
        if workload == "W3":
            from benchmarks import concurrent

            out = concurrent.run("chronik", target, SIZES.w3_writers, SIZES.w3_seconds)
            import psycopg

            with psycopg.connect(target.pg_url) as conn:
                row = conn.execute(
                    f'SELECT count(*) FROM "{target.schema}".events WHERE hash IS NOT NULL'
                ).fetchone()
            out["hashed"] = int(row[0]) if row else 0
        else:
            out = asyncio.run(_measure(workload, target))
        return out
    finally:
        drop_target(target)


def server_share(batch: int = 10, statements: int = 300, repetitions: int = 5) -> dict[str, Any]:
    """PostgreSQL only: the share of the server's time an INSERT of ``batch`` events spends
    in the chain trigger (EXPLAIN ANALYZE reports trigger time apart), over ``statements``
    INSERTs into a fresh chronik schema; median and min-max of ``repetitions``. Both numbers
    come from the same statements, so the machine's load hardly moves the ratio."""
    import re

    import psycopg

    shares = []
    for rep in range(repetitions):
        target = create_target("postgres", "chain_share")
        try:
            asyncio.run(_prepare(target))
            s = f'"{target.schema}"'
            trigger = total = 0.0
            with psycopg.connect(target.pg_url, autocommit=True) as conn:
                for n in range(statements):
                    plan = conn.execute(
                        f"EXPLAIN (ANALYZE, FORMAT TEXT) INSERT INTO {s}.events (position, "
                        "stream_id, version, event_id, type, data, metadata) SELECT "
                        "%s + g, %s, g - 1, gen_random_uuid(), 'Deposited', "
                        '\'{"account": "acc-1", "amount_cents": 1250, "currency": "EUR"}\', '
                        '\'{"correlation_id": "c-1"}\' FROM generate_series(1, %s) g',
                        ((rep * statements + n + 1) << 20, f"account-{n}", batch),
                    ).fetchall()
                    text = "\n".join(row[0] for row in plan)
                    found = re.search(r"Trigger events_chain: time=([\d.]+)", text)
                    whole = re.search(r"Execution Time: ([\d.]+)", text)
                    if found is None or whole is None:
                        raise AssertionError(f"no trigger time in the plan: {text}")
                    trigger += float(found.group(1))
                    total += float(whole.group(1))
            shares.append(trigger / total)
        finally:
            drop_target(target)
    return {"batch": batch, "statements": statements, "median": statistics.median(shares),
            "min": min(shares), "max": max(shares)}  # fmt: skip


def _spawn(workload: str, variant: str, backend: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.chain_cost", "--one", workload, variant, backend],
        capture_output=True, text=True, check=False, env=os.environ.copy(),
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"{workload} {variant} {backend} failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    # the negative control of the switch: with the chain every row is hashed, without none
    if (variant == "chain") != (result["hashed"] > 0):
        raise AssertionError(f"{workload} {variant} {backend}: {result['hashed']} rows hashed")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", nargs=3, metavar=("WORKLOAD", "VARIANT", "BACKEND"))
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--only", default="W1,W2,W3")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(*args.one)))
        return 0
    backends = args.backends.split(",")
    if "postgres" in backends and not pg_reachable():
        print(f"PostgreSQL not reachable at {PG_URL}: skipped", file=sys.stderr)
        backends.remove("postgres")
    cases = [(w, b) for w in args.only.split(",") for b in backends
             if not (w == "W3" and b != "postgres")]  # fmt: skip
    runs: dict[tuple[str, str, str], list[float]] = {}
    for rep in range(args.repetitions):
        for workload, backend in cases:
            order = ["chain", "without"] if rep % 2 == 0 else ["without", "chain"]
            for variant in order:
                out = _spawn(workload, variant, backend)
                runs.setdefault((workload, backend, variant), []).append(out["events_per_s"])
                print(f"[{rep + 1}/{args.repetitions}] {workload} {backend:8} {variant:8} "
                      f"{out['events_per_s']:>10,.0f} events/s", file=sys.stderr)  # fmt: skip
    rows = []
    print(f"{'workload':8} {'backend':8} {'with chain (min-max)':>28} {'without (min-max)':>28}"
          f" {'ratio':>6}")  # fmt: skip
    for workload, backend in cases:
        with_, without = runs[(workload, backend, "chain")], runs[(workload, backend, "without")]
        ratio = statistics.median(with_) / statistics.median(without)
        rows.append({"workload": workload, "backend": backend, "with_chain": with_,
                     "without": without, "ratio_median": ratio})  # fmt: skip

        def fmt(v: list[float]) -> str:
            return f"{statistics.median(v):,.0f} ({min(v):,.0f}-{max(v):,.0f})"

        print(f"{workload:8} {backend:8} {fmt(with_):>28} {fmt(without):>28} {ratio:6.2f}")
    shares = []
    if "postgres" in backends:
        for batch in (1, 10):
            share = server_share(batch)
            shares.append(share)
            print(f"PostgreSQL server time in the chain trigger, {batch:2} events an INSERT: "
                  f"{share['median']:.1%} ({share['min']:.1%}-{share['max']:.1%})")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sizes": SIZES.__dict__, "repetitions": args.repetitions, "rows": rows,
                       "server_share": shares}, f, indent=2)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
