"""The bank account every system stores: the same events, fields and payload sizes.

An account is ``Opened(owner, currency, branch, overdraft_limit)`` followed by
``Deposited(amount, reference, teller, seq)`` events (about 100-200 bytes each once encoded
with their metadata). chronik and the raw drivers use the dataclasses below; the
``eventsourcing`` library gets the same fields on its own ``Aggregate`` (see :mod:`.peer`).
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
    "evolve",
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
