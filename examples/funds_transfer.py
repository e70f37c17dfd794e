"""A funds transfer run by a saga: debit one account, credit the other; refund if the credit
is rejected or nothing happens in time.

The transfer is ``pending`` (saga instance ``running``) until the saga ends ``completed`` or
``compensated``. Run it on a SQLite file::

    python examples/funds_transfer.py /tmp/transfer.db

Across two services the accounts' events go out through :class:`chronik.nats.OutboxRelay`
and come in through :class:`chronik.nats.Inbox` (see docs/integration.md).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import chronik
from chronik import NewEvent
from chronik.events import RecordedEvent
from chronik.sagas import (
    CommandDispatcher,
    Deadline,
    DeadlineWorker,
    IssuedCommand,
    Reaction,
    Saga,
    SagaCommand,
    SagaEvent,
    SagaRunner,
    saga_instance,
)

registry = chronik.EventRegistry()


@registry.event("AccountOpened", version=1)
@dataclass(frozen=True)
class AccountOpened:
    owner: str


@registry.event("AccountClosed", version=1)
@dataclass(frozen=True)
class AccountClosed:
    pass


@registry.event("Credited", version=1)
@dataclass(frozen=True)
class Credited:
    amount: int
    transfer_id: str


@registry.event("Debited", version=1)
@dataclass(frozen=True)
class Debited:
    amount: int
    transfer_id: str


@dataclass(frozen=True)
class Account:
    open: bool = False
    balance: int = 0


class AccountRejected(Exception):
    """The account refuses the command."""


def decide(command: dict[str, Any], state: Account) -> Sequence[object]:
    kind, amount, ref = command["type"], command.get("amount", 0), command.get("transfer_id", "")
    if kind == "Open":
        return [AccountOpened(command["owner"])]
    if kind == "Close":
        return [AccountClosed()]
    if not state.open:
        raise AccountRejected("account is not open")
    if kind == "Debit":
        if state.balance < amount:
            raise AccountRejected(f"balance {state.balance} < {amount}")
        return [Debited(amount, ref)]
    if kind == "Credit":
        return [Credited(amount, ref)]
    raise AccountRejected(f"unknown command {kind!r}")


def evolve(state: Account, event: object) -> Account:
    match event:
        case AccountOpened():
            return Account(True, state.balance)
        case AccountClosed():
            return Account(False, state.balance)
        case Credited(amount):
            return Account(state.open, state.balance + amount)
        case Debited(amount):
            return Account(state.open, state.balance - amount)
    return state


account = chronik.Decider(decide=decide, evolve=evolve, initial_state=Account)


# -- the transfer saga ------------------------------------------------------------------
@dataclass(frozen=True)
class Transfer:
    steps: tuple[str, ...] = ()


def transfer_key(event: RecordedEvent) -> str | None:
    return event.stream_id.partition("-")[2] if event.category == "transfer" else None


def react(state: Transfer, event: RecordedEvent) -> Reaction:
    d = event.data
    if event.type == "TransferRequested":
        key = event.stream_id.partition("-")[2]
        return Reaction(
            events=[SagaEvent("TransferStarted", dict(d))],
            commands=[
                SagaCommand(
                    f"account-{d['source']}",
                    "Debit",
                    {"amount": d["amount"], "transfer_id": key},
                    step="debit",
                    compensation=SagaCommand(
                        f"account-{d['source']}",
                        "Credit",
                        {"amount": d["amount"], "transfer_id": key},
                        step="refund",
                    ),
                ),
            ],
            schedule=[Deadline("timeout", float(d.get("timeout", 30.0)))],
        )
    if event.type == "SagaCommandSucceeded" and d["step"] == "debit":
        started = next(e for e in state.steps if e.startswith("start:"))
        _, target, amount = started.split(":")
        return Reaction(
            events=[SagaEvent("TransferDebited", {})],
            commands=[
                SagaCommand(
                    f"account-{target}",
                    "Credit",
                    {"amount": int(amount), "transfer_id": event.stream_id.partition("-")[2]},
                    step="credit",
                    compensation=SagaCommand(  # a timed-out saga may see the credit late
                        f"account-{target}",
                        "Debit",
                        {"amount": int(amount), "transfer_id": event.stream_id.partition("-")[2]},
                        step="reverse-credit",
                    ),
                )
            ],
        )
    if event.type == "SagaCommandSucceeded" and d["step"] == "credit":
        return Reaction(
            events=[SagaEvent("TransferCredited", {})], complete=True, cancel=["timeout"]
        )
    if event.type == "SagaDeadlineExpired":
        return Reaction(compensate="timed out")
    return Reaction()


def evolve_transfer(state: Transfer, event: SagaEvent) -> Transfer:
    if event.type == "TransferStarted":
        d = event.data
        return Transfer((*state.steps, f"start:{d['target']}:{d['amount']}"))
    return Transfer((*state.steps, event.type))


transfer_saga: Saga[Transfer] = Saga(
    name="transfer",
    categories=["transfer"],
    correlate=transfer_key,
    react=react,
    initial_state=Transfer,
    evolve=evolve_transfer,
)


def account_executor(store: chronik.EventStore) -> Any:
    handler = chronik.CommandHandler(store, account, registry=registry)

    async def execute(command: IssuedCommand) -> None:
        await handler.handle(command.stream_id, {"type": command.type, **command.data})

    return execute


async def request_transfer(
    store: chronik.EventStore, transfer_id: str, source: str, target: str, amount: int
) -> None:
    await store.append(
        f"transfer-{transfer_id}",
        [NewEvent("TransferRequested", {"source": source, "target": target, "amount": amount})],
        expected_version=chronik.NO_STREAM,
    )


def workers(store: chronik.EventStore) -> list[Any]:
    """The saga's three workers (``chronik sagas run examples.funds_transfer:workers``)."""
    return [
        SagaRunner(store, transfer_saga),
        CommandDispatcher(
            store, [transfer_saga], account_executor(store), rejected_by=(AccountRejected,)
        ),
        DeadlineWorker(store, [transfer_saga]),
    ]


# -- the same transfer across two services (JetStream between them) -------------------------
# transfers service: the saga; its commands are appended to streams "acctcmd-<command id>"
# and relayed to JetStream; the accounts service's inbox executes them and appends a reply
# ("acctreply-<command id>"), relayed back; the transfers inbox records the outcome.


def remote_executor(store: chronik.EventStore) -> Any:
    """For ``CommandDispatcher(remote=True)``: send a command (an idempotent append)."""

    async def send(command: IssuedCommand) -> None:
        cid = command.command_id
        event = NewEvent(
            command.type,
            {"account": command.stream_id, "command_id": str(cid), **command.data},
            event_id=uuid.uuid5(cid, "send"),
        )
        await store.append(f"acctcmd-{cid}", [event])

    return send


def accounts_inbox_handler(store: chronik.EventStore) -> Any:
    """The accounts service's inbox (``append_handler``): run the command once, reply."""
    from chronik.nats import InboxMessage

    handler = chronik.CommandHandler(store, account, registry=registry)

    async def executed_already(stream_id: str, cid: str) -> bool:
        try:
            async for ev in store.read_stream(stream_id, backwards=True, limit=1000):
                if ev.metadata.get("command_id") == cid:
                    return True
        except chronik.StreamNotFound:
            pass
        return False

    async def handle(message: InboxMessage) -> None:
        d = message.json()
        cid = d.pop("command_id")
        target = d.pop("account")
        reason = None
        if not await executed_already(target, cid):  # a crash after the append, before commit
            try:
                with chronik.context(command_id=cid):
                    await handler.handle(target, {"type": message.type, **d})
            except AccountRejected as exc:
                reason = str(exc)
        reply = NewEvent(
            "CommandRejected" if reason else "CommandSucceeded",
            {"command_id": cid, "reason": reason},
            event_id=uuid.uuid5(uuid.UUID(cid), "reply"),
        )
        await store.append(f"acctreply-{cid}", [reply])

    return handle


def transfers_inbox_handler(store: chronik.EventStore) -> Any:
    """The transfers service's inbox: a reply becomes the saga command's outcome."""
    from chronik.nats import InboxMessage
    from chronik.sagas import record_outcome

    async def handle(message: InboxMessage) -> None:
        d = message.json()
        await record_outcome(store, [transfer_saga], d["command_id"], d.get("reason"))

    return handle


async def settle(store: chronik.EventStore, rounds: int = 20) -> None:
    """Run the three saga workers until nothing is left to do (for tests and the demo)."""
    runner = SagaRunner(store, transfer_saga)
    dispatcher = CommandDispatcher(
        store, [transfer_saga], account_executor(store), rejected_by=(AccountRejected,)
    )
    deadlines = DeadlineWorker(store, [transfer_saga])
    for _ in range(rounds):
        busy = await runner.run_once() + await dispatcher.run_once() + await deadlines.run_once()
        if not busy:
            return


async def main(url: str) -> dict[str, str]:
    async with await chronik.connect(url) as store:
        handler = chronik.CommandHandler(store, account, registry=registry)
        for name in ("alice", "bob", "carol"):
            await handler.handle(f"account-{name}", {"type": "Open", "owner": name})
        await handler.handle("account-alice", {"type": "Credit", "amount": 100})
        await handler.handle("account-carol", {"type": "Close"})
        await request_transfer(store, "t1", "alice", "bob", 30)
        await request_transfer(store, "t2", "alice", "carol", 20)  # credit rejected
        t1 = await saga_instance(store, transfer_saga, "t1")
        print("t1 before the saga runs:", "pending" if t1 is None else t1.status)
        await settle(store)
        out: dict[str, str] = {}
        for key in ("t1", "t2"):
            inst = await saga_instance(store, transfer_saga, key)
            assert inst is not None
            out[key] = inst.status
        for name in ("alice", "bob", "carol"):
            loaded = await handler.load(f"account-{name}")
            out[name] = str(loaded.state.balance)
        print(out)
        return out


if __name__ == "__main__":
    asyncio.run(main(f"sqlite:///{sys.argv[1] if len(sys.argv) > 1 else 'transfer.db'}"))
