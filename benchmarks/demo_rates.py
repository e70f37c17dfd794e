"""Append and read rates of the demo workload (the bank account), for the issue notes.

    python -m benchmarks.demo_rates [--store URL] [--accounts 200] [--deposits 20]

Each account is opened and then receives deposits through ``CommandHandler`` (load, decide,
append with the expected version): the real write path, one event per command. Then the
whole log is read back through ``read_all`` and decoded into typed events.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from decimal import Decimal

from examples.bank_account import Deposit, OpenAccount, account, registry

import chronik


async def measure(url: str, accounts: int, deposits: int) -> dict[str, float]:
    async with await chronik.connect(url) as store:
        handler = chronik.CommandHandler(store, account, registry=registry)
        started = time.perf_counter()
        commands = 0
        for a in range(accounts):
            stream = f"account-{a}"
            await handler.handle(stream, OpenAccount(f"owner-{a}"))
            for d in range(deposits):
                await handler.handle(stream, Deposit(Decimal(d + 1), f"ref-{d}"))
            commands += deposits + 1
        write_s = time.perf_counter() - started
        started = time.perf_counter()
        read = 0
        decode = registry.decode
        async for event in store.read_all():
            decode(event)
            read += 1
        read_s = time.perf_counter() - started
    return {
        "commands_per_s": commands / write_s,
        "events_read_per_s": read / read_s,
        "events": float(read),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--accounts", type=int, default=200)
    parser.add_argument("--deposits", type=int, default=20)
    args = parser.parse_args()
    url = args.store or f"sqlite:///{tempfile.mkdtemp()}/demo.db"
    result = asyncio.run(measure(url, args.accounts, args.deposits))
    print(
        f"{url}: {result['commands_per_s']:,.0f} commands/s (load+decide+append, one event "
        f"each), read+decode {result['events_read_per_s']:,.0f} events/s "
        f"over {result['events']:,.0f} events"
    )


if __name__ == "__main__":
    main()
