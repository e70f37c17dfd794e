"""The workloads done the way an ``eventsourcing`` (9.5) user does them.

Configured as its documentation says and nothing more: an ``Application`` subclass, an
``Aggregate`` with ``@event``-decorated methods, persistence chosen by environment
(``PERSISTENCE_MODULE`` = ``eventsourcing.sqlite`` with ``SQLITE_DBNAME``, or
``eventsourcing.postgres`` with ``POSTGRES_*``), the library's default transcoder with its
default transcodings (UUID, Decimal, datetime), no aggregate cache, no snapshots, and a
notification log section size of 500 so the log is read in pages of 500.
"""

from __future__ import annotations

import statistics
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event

from benchmarks.common import Sizes, Target, pg_params, timer
from benchmarks.model import deposited, opened

__all__ = ["Bank", "BankAccount", "chain", "make_app", "w2"]

Metrics = dict[str, float]


class BankAccount(Aggregate):
    """The same account as :mod:`benchmarks.model`, as the peer's users write it."""

    @event("Opened")
    def __init__(self, owner: str, currency: str, branch: str, overdraft_limit: Decimal) -> None:
        self.owner = owner
        self.currency = currency
        self.branch = branch
        self.overdraft_limit = overdraft_limit
        self.balance = Decimal(0)
        self.deposits = 0

    @event("Deposited")
    def deposit(self, amount: Decimal, reference: str, teller: str, seq: int) -> None:
        self.balance += amount
        self.deposits += 1


class Bank(Application[UUID]):
    log_section_size = 500


def env_for(target: Target) -> dict[str, str]:
    """The documented environment settings that point the application at ``target``."""
    if target.backend == "sqlite":
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": target.sqlite_path}
    p = pg_params(target.pg_url)
    return {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": p["dbname"],
        "POSTGRES_HOST": p["host"],
        "POSTGRES_PORT": p["port"],
        "POSTGRES_USER": p["user"],
        "POSTGRES_PASSWORD": p["password"],
        "POSTGRES_SCHEMA": target.schema,
    }


def make_app(target: Target, *, create_table: bool = True) -> Bank:
    """The application on ``target``; ``create_table=False`` when its tables exist already.

    (Its documented ``CREATE_TABLE`` setting: concurrent processes that all create the
    tables at once collide in PostgreSQL's catalog.)
    """
    env = env_for(target)
    if not create_table:
        env["CREATE_TABLE"] = "n"
    app = Bank(env=env)
    if target.backend == "sqlite":
        # Same durability as chronik: the library leaves SQLite's default, which must be FULL.
        datastore = app.recorder.datastore  # type: ignore[attr-defined]
        with datastore.transaction(commit=False) as cursor:
            cursor.execute("PRAGMA synchronous")
            if cursor.fetchone()[0] != 2:
                raise RuntimeError("eventsourcing's SQLite connections are not synchronous=FULL")
    return app


def new_account(index: int, events: int) -> BankAccount:
    o = opened(index)
    account = BankAccount(o.owner, o.currency, o.branch, o.overdraft_limit)
    for seq in range(1, events):
        d = deposited(index, seq)
        account.deposit(d.amount, d.reference, d.teller, d.seq)
    return account


def write_accounts(app: Bank, sizes: Sizes) -> tuple[Metrics, list[UUID]]:
    """W1: each account created with its deposits, then saved once (one transaction)."""
    ids: list[UUID] = []
    with timer() as t:
        for index in range(sizes.w1_streams):
            account = new_account(index, sizes.w1_events)
            app.save(account)
            ids.append(account.id)
    events = sizes.w1_streams * sizes.w1_events
    return {"events": events, "seconds": t.seconds, "events_per_s": events / t.seconds}, ids


def append_one_by_one(app: Bank, sizes: Sizes) -> Metrics:
    """W2: the account object stays in hand; ``save`` after every event."""
    with timer() as t:
        for index in range(sizes.w2_streams):
            o = opened(index)
            account = BankAccount(o.owner, o.currency, o.branch, o.overdraft_limit)
            app.save(account)
            for seq in range(1, sizes.w2_events):
                d = deposited(index, seq)
                account.deposit(d.amount, d.reference, d.teller, d.seq)
                app.save(account)
    events = sizes.w2_streams * sizes.w2_events
    return {"events": events, "seconds": t.seconds, "events_per_s": events / t.seconds}


def rebuild(app: Bank, ids: list[UUID], sizes: Sizes) -> Metrics:
    """W4: ``repository.get`` of every W1 account."""
    events = 0
    get = app.repository.get
    with timer() as t:
        for account_id in ids:
            account: BankAccount = get(account_id)
            events += account.version
    expected = sizes.w1_streams * sizes.w1_events
    if events != expected:
        raise AssertionError(f"W4 folded {events} events, expected {expected}")
    return {
        "events": events,
        "seconds": t.seconds,
        "aggregates_per_s": len(ids) / t.seconds,
        "events_per_s": events / t.seconds,
    }


def read_log(app: Bank, expected: int) -> Metrics:
    """W6: the notification log in sections of 500, each mapped to its domain event."""
    select = app.notification_log.select
    to_domain_event = app.mapper.to_domain_event
    count = 0
    last = 0
    with timer() as t:
        while True:
            page = select(start=last, limit=500, inclusive_of_start=False)
            for notification in page:
                to_domain_event(notification)
            count += len(page)
            if len(page) < 500:
                break
            last = page[-1].id
    if count != expected:
        raise AssertionError(f"W6 read {count} events, expected {expected}")
    return {"events": count, "seconds": t.seconds, "events_per_s": count / t.seconds}


def load_big(app: Bank, sizes: Sizes) -> Metrics:
    """W5: one account of ``w5_events`` events (saved untimed), loaded ``w5_loads`` times."""
    account = new_account(999_999, sizes.w5_events)
    app.save(account)
    times = []
    for _ in range(sizes.w5_loads):
        with timer() as t:
            loaded: BankAccount = app.repository.get(account.id)
        if loaded.version != sizes.w5_events:
            raise AssertionError(f"W5 loaded version {loaded.version}")
        times.append(t.seconds * 1000)
    return {"events": sizes.w5_events, "ms": statistics.median(times)}


def chain(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    app = make_app(target)
    try:
        out: dict[str, Metrics] = {}
        out["W1"], ids = write_accounts(app, sizes)
        out["W4"] = rebuild(app, ids, sizes)
        out["W6"] = read_log(app, sizes.w1_streams * sizes.w1_events)
        out["W5"] = load_big(app, sizes)
        return out
    finally:
        app.close()


def w2(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    app = make_app(target)
    try:
        return {"W2": append_one_by_one(app, sizes)}
    finally:
        app.close()


def info() -> dict[str, Any]:
    from importlib.metadata import version

    return {"version": version("eventsourcing")}
