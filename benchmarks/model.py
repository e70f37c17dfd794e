"""The bank account every system stores: the same events, fields and payload sizes.

An account is ``Opened(owner, currency, branch, overdraft_limit)`` followed by
``Deposited(amount, reference, teller, seq)`` events (about 100-200 bytes each once encoded
with their metadata). chronik and the raw drivers use the dataclasses below; the
``eventsourcing`` library gets the same fields on its own ``Aggregate`` (see :mod:`.peer`).
W6P's and W7's read model (balance in cents and deposit count per account, one upsert per
event) is defined here too, so every system writes the same table with the same statement.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal

import chronik

__all__ = [
    "Account",
    "Deposited",
    "Opened",
    "account_decider",
    "account_events",
    "balance_change",
    "balances_ddl",
    "balances_upsert",
    "evolve",
    "expected_balances",
    "initial_state",
    "registry",
    "stream_name",
]

registry = chronik.EventRegistry()


@registry.event("Opened", version=1)
@dataclass(frozen=True, slots=True)
class Opened:
    owner: str
    currency: str
    branch: str
    overdraft_limit: Decimal


@registry.event("Deposited", version=1)
@dataclass(frozen=True, slots=True)
class Deposited:
    amount: Decimal
    reference: str
    teller: str
    seq: int


@dataclass(frozen=True, slots=True)
class Account:
    """The typed state an account folds into."""

    opened: bool = False
    owner: str = ""
    currency: str = ""
    overdraft_limit: Decimal = Decimal(0)
    balance: Decimal = Decimal(0)
    deposits: int = 0


def initial_state() -> Account:
    return Account()


def evolve(state: Account, event: object) -> Account:
    """Fold one event into the state (a new frozen state each time)."""
    if type(event) is Deposited:
        return Account(
            state.opened,
            state.owner,
            state.currency,
            state.overdraft_limit,
            state.balance + event.amount,
            state.deposits + 1,
        )
    if type(event) is Opened:
        return Account(True, event.owner, event.currency, event.overdraft_limit, Decimal(0), 0)
    return state


def _decide(command: object, state: Account) -> Sequence[object]:
    raise NotImplementedError("the benchmarks only load and append")


account_decider: chronik.Decider[object, object, Account] = chronik.Decider(
    decide=_decide, evolve=evolve, initial_state=initial_state
)


def stream_name(index: int) -> str:
    return f"account-{index:06d}"


def opened(index: int) -> Opened:
    return Opened(
        owner=f"Customer {index:06d} Example",
        currency="EUR",
        branch=f"branch-{index % 97:02d}-north",
        overdraft_limit=Decimal("500.00"),
    )


def deposited(index: int, seq: int) -> Deposited:
    return Deposited(
        amount=Decimal(f"{(index * 7 + seq * 13) % 1000}.{seq % 100:02d}"),
        reference=f"invoice 2024-{index:06d}-{seq:05d}",
        teller=f"teller-{seq % 17:02d}",
        seq=seq,
    )


def account_events(index: int, count: int) -> Iterator[Opened | Deposited]:
    """The first ``count`` events of account ``index``: Opened, then Deposited ones."""
    if count <= 0:
        return
    yield opened(index)
    for seq in range(1, count):
        yield deposited(index, seq)


# -- the read model of W6P and W7 -----------------------------------------------------------
#
# Balance (in cents) and deposit count per account, one upsert per event, the same statement
# for every system: ``Opened`` adds (0, 0), so it creates the row; ``Deposited`` adds its
# amount and one deposit.


def balances_ddl(table: str) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {table} (account TEXT PRIMARY KEY, "
        "balance_cents BIGINT NOT NULL, deposits INTEGER NOT NULL)"
    )


def balances_upsert(table: str, style: str = "named") -> str:
    """The upsert with ``:name`` (chronik, sqlite3) or ``%(name)s`` (psycopg) parameters."""
    a, c, d = (":a", ":c", ":d") if style == "named" else ("%(a)s", "%(c)s", "%(d)s")
    return (
        f"INSERT INTO {table} (account, balance_cents, deposits) VALUES ({a}, {c}, {d}) "
        f"ON CONFLICT (account) DO UPDATE SET "
        f"balance_cents = {table}.balance_cents + excluded.balance_cents, "
        f"deposits = {table}.deposits + excluded.deposits"
    )


def balance_change(event: object) -> tuple[int, int]:
    """What one event adds to its account's row: (cents, deposits)."""
    if type(event) is Deposited:
        return int(event.amount * 100), 1
    return 0, 0


def expected_balances(streams: int, events: int) -> dict[int, tuple[int, int]]:
    """Account index -> (balance in cents, deposits) after the first ``events`` events."""
    out = {}
    for index in range(streams):
        cents = sum(int(deposited(index, seq).amount * 100) for seq in range(1, events))
        out[index] = (cents, max(events - 1, 0))
    return out
