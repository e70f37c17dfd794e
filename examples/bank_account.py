"""The seed's bank account, end to end: ``make demo`` runs this on a SQLite file.

Opens an account, deposits, withdraws, is refused an overdraft, and survives a concurrency
conflict (another teller writes between our load and our append; the command handler
reloads and decides again).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import chronik
from chronik import NewEvent

registry = chronik.EventRegistry()


# -- events (past tense, immutable, stable type names) ---------------------------------
@registry.event("AccountOpened", version=1)
@dataclass(frozen=True)
class AccountOpened:
    owner: str
    currency: str
    branch: str
    overdraft_limit: Decimal


@registry.event("Deposited", version=1)
@dataclass(frozen=True)
class Deposited:
    amount: Decimal
    reference: str


@registry.event("Withdrawn", version=1)
@dataclass(frozen=True)
class Withdrawn:
    amount: Decimal
    reference: str


# -- commands (imperative) --------------------------------------------------------------
@dataclass(frozen=True)
class OpenAccount:
    owner: str
    currency: str = "EUR"
    branch: str = "main"
    overdraft_limit: Decimal = Decimal("0")


@dataclass(frozen=True)
class Deposit:
    amount: Decimal
    reference: str


@dataclass(frozen=True)
class Withdraw:
    amount: Decimal
    reference: str


Command = OpenAccount | Deposit | Withdraw
Event = AccountOpened | Deposited | Withdrawn


class AccountError(Exception):
    """A command the account refuses."""


class InsufficientFunds(AccountError):
    pass


@dataclass(frozen=True)
class Account:
    opened: bool = False
    owner: str = ""
    balance: Decimal = Decimal("0")
    overdraft_limit: Decimal = Decimal("0")


def decide(command: Command, state: Account) -> Sequence[Event]:
    match command:
        case OpenAccount():
            if state.opened:
                raise AccountError(f"account of {state.owner} is open already")
            return [
                AccountOpened(
                    command.owner, command.currency, command.branch, command.overdraft_limit
                )
            ]
        case Deposit(amount, reference):
            if not state.opened:
                raise AccountError("no such account")
            if amount <= 0:
                raise AccountError("a deposit must be positive")
            return [Deposited(amount, reference)]
        case Withdraw(amount, reference):
            if not state.opened:
                raise AccountError("no such account")
            if state.balance - amount < -state.overdraft_limit:
                raise InsufficientFunds(
                    f"withdrawing {amount} would take the balance {state.balance} below "
                    f"the overdraft limit of -{state.overdraft_limit}"
                )
            return [Withdrawn(amount, reference)]
    raise AccountError(f"unknown command {command!r}")


def evolve(state: Account, event: Event) -> Account:
    match event:
        case AccountOpened():
            return Account(True, event.owner, Decimal("0"), event.overdraft_limit)
        case Deposited():
            return replace(state, balance=state.balance + event.amount)
        case Withdrawn():
            return replace(state, balance=state.balance - event.amount)
    return state


account = chronik.Decider(decide=decide, evolve=evolve, initial_state=Account)


class _SneakyTeller:
    """Wraps a store: before our first append, another teller deposits (a real conflict)."""

    def __init__(self, store: chronik.EventStore) -> None:
        self.store = store
        self.sneaked = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def append(self, stream_id: str, events: Any, **kw: Any) -> chronik.AppendResult:
        if not self.sneaked:
            self.sneaked = True
            other = registry.to_new_event(Deposited(Decimal("5.00"), "teller-2 cash"))
            with chronik.context(actor="teller-2"):
                await self.store.append(stream_id, [other])
        return await self.store.append(stream_id, events, **kw)


async def run(url: str, say: Any = print) -> dict[str, Any]:
    """Run the story against ``url``; returns the final balance and counts (for tests)."""
    async with await chronik.connect(url) as store:
        handler = chronik.CommandHandler(store, account, registry=registry)
        stream = "account-alice"
        with chronik.context(correlation_id="demo-session-1", actor="teller-1"):
            r = await handler.handle(stream, OpenAccount("alice", overdraft_limit=Decimal("50")))
            say(f"opened {stream}: version {r.version}, position {r.position}")
            r = await handler.handle(stream, Deposit(Decimal("100.00"), "salary"))
            say(f"deposited 100.00 -> balance {r.state.balance}")
            r = await handler.handle(stream, Withdraw(Decimal("30.00"), "rent"))
            say(f"withdrew 30.00 -> balance {r.state.balance}")
            try:
                await handler.handle(stream, Withdraw(Decimal("500.00"), "yacht"))
            except InsufficientFunds as exc:
                say(f"refused: {exc}")
            sneaky = chronik.CommandHandler(_SneakyTeller(store), account, registry=registry)
            r = await sneaky.handle(stream, Deposit(Decimal("20.00"), "refund"))
            say(
                f"deposited 20.00 after a concurrency conflict (another teller wrote first): "
                f"{r.attempts} attempts -> balance {r.state.balance}, version {r.version}"
            )
            try:
                await store.append(
                    stream,
                    [NewEvent("Deposited", {"amount": "1", "reference": "stale"})],
                    expected_version=0,
                )
            except chronik.ConcurrencyError as exc:
                say(f"a stale write is rejected: {exc}")
        loaded = await handler.load(stream)
        say(f"replayed from the store: balance {loaded.state.balance} at version {loaded.version}")
        return {"balance": loaded.state.balance, "version": loaded.version, "attempts": r.attempts}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="sqlite:///chronik-demo.db")
    parser.add_argument("--fresh", action="store_true", help="delete the SQLite file first")
    args = parser.parse_args(argv)
    if args.fresh and args.store.startswith("sqlite:///"):
        path = args.store[len("sqlite:///") :]
        for suffix in ("", "-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)
    asyncio.run(run(args.store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
