"""The seed's financial application: a transaction event gains a field, v1 → v2.

Version 1 of ``TransactionRecorded`` had an account, an amount in cents and a description.
Version 2 adds ``currency``: new transactions must say which, and every transaction
recorded before it was in the ledger's home currency, euros. A dedicated upcaster (a
"converter", in the seed's words) adds the field to old events when they are read; the
stored log is never rewritten. Old events still replay into the ledger, and the balance
projection written for v1 keeps working unchanged.

Run it::

    python examples/financial_transactions.py --store sqlite:///ledger.db
    chronik --store sqlite:///ledger.db schema check --app examples.financial_transactions:app
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import chronik
from chronik import RecordedEvent
from chronik.projections import Projection, ProjectionRunner
from chronik.store import SqlStore, require
from chronik.store.protocol import Tx

# -- the events as the code knows them today ----------------------------------------------

registry = chronik.EventRegistry()


@registry.event("TransactionRecorded", version=2)
@dataclass(frozen=True)
class TransactionRecorded:
    account_id: str
    amount_cents: int
    description: str
    currency: str
    """New in version 2, without a default: every new transaction must name its currency."""


@registry.upcaster("TransactionRecorded", from_version=1)
def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Transactions recorded before multi-currency support were all in euros."""
    return {**data, "currency": "EUR"}


# -- what last year's code wrote (kept here only to make v1 events for the demo) ------------

legacy_registry = chronik.EventRegistry()


@legacy_registry.event("TransactionRecorded", version=1)
@dataclass(frozen=True)
class TransactionRecordedV1:
    account_id: str
    amount_cents: int
    description: str


# -- the ledger: a decider over today's events ----------------------------------------------


@dataclass(frozen=True)
class Record:
    amount_cents: int
    description: str
    currency: str = "EUR"


@dataclass(frozen=True)
class Ledger:
    account_id: str | None = None
    balances: dict[str, int] = field(default_factory=dict)
    transactions: int = 0


def decide(command: Record, state: Ledger) -> list[TransactionRecorded]:
    if command.amount_cents == 0:
        raise ValueError("a transaction moves money")
    return [
        TransactionRecorded(
            state.account_id or "", command.amount_cents, command.description, command.currency
        )
    ]


def evolve(state: Ledger, event: TransactionRecorded) -> Ledger:
    balances = dict(state.balances)
    balances[event.currency] = balances.get(event.currency, 0) + event.amount_cents
    return replace(
        state, account_id=event.account_id, balances=balances, transactions=state.transactions + 1
    )


ledger = chronik.Decider(decide=decide, evolve=evolve, initial_state=Ledger)


# -- read models ----------------------------------------------------------------------------


class AccountBalances(Projection):
    """Written for v1 and left unchanged: it reads only ``account_id`` and ``amount_cents``,
    which both versions have, from the events as stored."""

    name = "account_balances"
    event_types = ["TransactionRecorded"]

    async def setup(self, tx: Tx) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table('balances')} "
            "(account_id TEXT PRIMARY KEY, cents INTEGER NOT NULL)"
        )

    async def teardown(self, tx: Tx) -> None:
        await tx.execute(f"DROP TABLE IF EXISTS {self.table('balances')}")

    async def handle(self, event: RecordedEvent, tx: Tx) -> None:
        t = self.table("balances")
        await tx.execute(
            f"INSERT INTO {t} (account_id, cents) VALUES (:a, :c) "
            f"ON CONFLICT (account_id) DO UPDATE SET cents = {t}.cents + excluded.cents",
            {"a": event.data["account_id"], "c": event.data["amount_cents"]},
        )


class CurrencyTotals(Projection):
    """New with v2: it needs ``currency``, so it reads events upcast through the registry
    (old events arrive with ``currency="EUR"``)."""

    name = "currency_totals"
    event_types = ["TransactionRecorded"]
    registry = registry

    async def setup(self, tx: Tx) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table('totals')} "
            "(currency TEXT PRIMARY KEY, cents INTEGER NOT NULL)"
        )

    async def teardown(self, tx: Tx) -> None:
        await tx.execute(f"DROP TABLE IF EXISTS {self.table('totals')}")

    async def handle(self, event: RecordedEvent, tx: Tx) -> None:
        t = self.table("totals")
        await tx.execute(
            f"INSERT INTO {t} (currency, cents) VALUES (:cur, :c) "
            f"ON CONFLICT (currency) DO UPDATE SET cents = {t}.cents + excluded.cents",
            {"cur": event.data["currency"], "c": event.data["amount_cents"]},
        )


app = chronik.App(
    registry=registry,
    deciders={"account": ledger},
    projections=[AccountBalances(), CurrencyTotals()],
)


async def record_last_year(store: chronik.EventStore, account_id: str) -> None:
    """What the v1 code appended, before ``currency`` existed."""
    old = [
        TransactionRecordedV1(account_id, 250_000, "salary"),
        TransactionRecordedV1(account_id, -120_000, "rent"),
        TransactionRecordedV1(account_id, -4_550, "groceries"),
    ]
    await store.append(
        f"account-{account_id}",
        legacy_registry.to_new_events(old),
        expected_version=chronik.NO_STREAM,
    )


async def run(url: str, say: Any = print) -> dict[str, Any]:
    async with await chronik.connect(url) as store:
        await record_last_year(store, "7")
        stored = [e async for e in store.read_stream("account-7")]
        say(
            "stored by the v1 code: "
            + ", ".join(f"{e.type} v{e.schema_version} {e.data['description']}" for e in stored)
        )

        handler = chronik.CommandHandler(store, ledger, registry=registry)
        result = await handler.handle("account-7", Record(-3_000, "coffee in Boston", "USD"))
        say(
            f"today's code replayed {result.version} old events and recorded one in USD: "
            f"balances {result.state.balances}"
        )

        runner = ProjectionRunner(store, list(app.projections))
        await runner.catch_up()
        (balance,) = await require(store, SqlStore).query(
            "SELECT cents FROM balances_v1 WHERE account_id = '7'"
        )
        totals = dict(
            await require(store, SqlStore).query(
                "SELECT currency, cents FROM totals_v1 ORDER BY currency"
            )
        )
        say(f"unchanged v1 projection: account 7 holds {balance[0]} cents over all currencies")
        say(f"new projection by currency (old events upcast): {totals}")

        upcast = [e for stored_event in stored for e in registry.upcast(stored_event)]
        say(f"old events upcast on read: {[e.data['currency'] for e in upcast]}; none rewritten")
        return {
            "balances": result.state.balances,
            "version": result.version,
            "projection_cents": int(balance[0]),
            "totals": {str(k): int(v) for k, v in totals.items()},
            "stored_versions": [e.schema_version for e in stored],
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="sqlite:///ledger.db")
    args = parser.parse_args(argv)
    asyncio.run(run(args.store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
