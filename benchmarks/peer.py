"""The workloads done the way an ``eventsourcing`` (9.5) user does them.

Configured as its documentation says and nothing more: an ``Application`` subclass, an
``Aggregate`` with ``@event``-decorated methods, persistence chosen by environment
(``PERSISTENCE_MODULE`` = ``eventsourcing.sqlite`` with ``SQLITE_DBNAME``, or
``eventsourcing.postgres`` with ``POSTGRES_*``), the library's default transcoder with its
default transcodings (UUID, Decimal, datetime), no aggregate cache, no snapshots (except
W5S, below), and a notification log section size of 500 so the log is read in pages of 500.

W5S: a second application on the same database with ``IS_SNAPSHOTTING_ENABLED=y`` (the
documented switch that gives it a snapshot store), ``app.take_snapshot(id)``, 100 more
deposits saved, then ``app.repository.get(id)`` (newest snapshot + the events after it).

W6P: the library's projection mechanism (``eventsourcing.projection``): a ``Projection``
whose ``process_event`` writes to a materialised view, the view a subclass of the backend's
tracking recorder that records the tracking object and the view's upsert in one transaction
(one per event, as the library's ``Projection`` processes events one at a time). On
PostgreSQL the library's ``ProjectionRunner`` drives it (a subscription pulling 500
notifications at a time, LISTEN/NOTIFY); 9.5's SQLite recorder has no subscriptions
(``subscribe`` raises ``NotImplementedError``), so on SQLite the same projection and view are
driven by the loop the runner's subscription runs: ``select_notifications`` in pages of 500,
``mapper.to_domain_event``, ``process_event(event, Tracking(app.name, id))``.

W8: one application shared by 64 threads, each saving its own account after every event
(the library's default connection pool: 5 connections plus 10 overflow).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from decimal import Decimal
from typing import Any
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import InfrastructureFactory, Tracking, TrackingRecorder
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.projection import Projection, ProjectionRunner
from eventsourcing.sqlite import SQLiteTrackingRecorder
from eventsourcing.utils import Environment
from psycopg.sql import SQL

from benchmarks.common import Sizes, Target, pg_params, run_threads, timer
from benchmarks.model import balances_ddl, balances_upsert, deposited, expected_balances, opened

__all__ = [
    "Bank",
    "BankAccount",
    "BalancesProjection",
    "PostgresBalancesView",
    "SQLiteBalancesView",
    "chain",
    "make_app",
    "w2",
    "w8",
]

Metrics = dict[str, float]
NEWER_EVENTS = 100
"""W5S: events saved after the snapshot."""
W8_WARM_UP = 900_000
"""W8: the warm-up accounts' first index (one untimed event each)."""


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


def make_app(target: Target, *, create_table: bool = True, snapshotting: bool = False) -> Bank:
    """The application on ``target``; ``create_table=False`` when its tables exist already.

    (Its documented ``CREATE_TABLE`` setting: concurrent processes that all create the
    tables at once collide in PostgreSQL's catalog.) ``snapshotting=True`` sets the
    documented ``IS_SNAPSHOTTING_ENABLED``, which gives the application a snapshot store.
    """
    env = env_for(target)
    if not create_table:
        env["CREATE_TABLE"] = "n"
    if snapshotting:
        env["IS_SNAPSHOTTING_ENABLED"] = "y"
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


def load_big(app: Bank, sizes: Sizes) -> tuple[Metrics, UUID]:
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
    return {"events": sizes.w5_events, "ms": statistics.median(times)}, account.id


def load_from_snapshot(target: Target, account_id: UUID, sizes: Sizes) -> Metrics:
    """W5S: W5's account snapshotted (``app.take_snapshot``, untimed) by an application with
    snapshotting enabled, 100 more deposits saved, then ``repository.get`` ``w5_loads`` times."""
    app = make_app(target, snapshotting=True)
    try:
        app.take_snapshot(account_id)
        account: BankAccount = app.repository.get(account_id)
        at = account.version
        if at != sizes.w5_events:
            raise AssertionError(f"W5S: the account is at version {at}")
        for k in range(NEWER_EVENTS):
            d = deposited(999_999, at + k)
            account.deposit(d.amount, d.reference, d.teller, d.seq)
        app.save(account)
        times = []
        loaded = account
        for _ in range(sizes.w5_loads):
            with timer() as t:
                loaded = app.repository.get(account_id)
            if loaded.version != at + NEWER_EVENTS:
                raise AssertionError(f"W5S loaded version {loaded.version}")
            times.append(t.seconds * 1000)
        if loaded.deposits != at + NEWER_EVENTS - 1:
            raise AssertionError(f"W5S: {loaded.deposits} deposits")
        return {"events": NEWER_EVENTS, "events_in_snapshot": at, "ms": statistics.median(times)}
    finally:
        app.close()


# -- W6P: a projection into a materialised view --------------------------------------------


class _Finish:
    """When the view recorded the last notification: the end of W6P's timing."""

    def __init__(self) -> None:
        self.target = 0
        self.processed = 0
        self.at = 0.0
        self.done = threading.Event()

    def arm(self, target: int) -> None:
        self.target, self.processed, self.at = target, 0, 0.0
        self.done.clear()

    def tracked(self, notification_id: int) -> None:
        self.processed += 1
        if notification_id >= self.target:
            self.at = time.perf_counter()
            self.done.set()


FINISH = _Finish()


class SQLiteBalancesView(SQLiteTrackingRecorder):
    """The materialised view on SQLite: the view table beside the tracking table."""

    upsert = balances_upsert("balances")

    def construct_create_table_statements(self) -> list[str]:
        return [*super().construct_create_table_statements(), balances_ddl("balances")]

    def record_change(self, account: str, cents: int, deposits: int, tracking: Tracking) -> None:
        """The view's upsert and the tracking record, in one transaction."""
        with self.datastore.transaction(commit=True) as c:
            self._insert_tracking(c, tracking)
            c.execute(self.upsert, {"a": account, "c": cents, "d": deposits})
        FINISH.tracked(tracking.notification_id)

    def balances(self) -> dict[str, tuple[int, int]]:
        with self.datastore.transaction(commit=False) as c:
            c.execute("SELECT account, balance_cents, deposits FROM balances")
            return {r[0]: (int(r[1]), int(r[2])) for r in c.fetchall()}


class PostgresBalancesView(PostgresTrackingRecorder):
    """The materialised view on PostgreSQL: the view table beside the tracking table."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        self.view_table = f'"{datastore.schema}".balances'
        self.sql_create_statements.append(SQL(balances_ddl(self.view_table)))  # type: ignore[arg-type]
        self.upsert = balances_upsert(self.view_table, "pyformat")

    def record_change(self, account: str, cents: int, deposits: int, tracking: Tracking) -> None:
        """The view's upsert and the tracking record, in one transaction."""
        with self.datastore.transaction(commit=True) as curs:
            self._insert_tracking(curs, tracking)
            curs.execute(self.upsert, {"a": account, "c": cents, "d": deposits})
        FINISH.tracked(tracking.notification_id)

    def balances(self) -> dict[str, tuple[int, int]]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(f"SELECT account, balance_cents, deposits FROM {self.view_table}")
            return {
                r["account"]: (int(r["balance_cents"]), int(r["deposits"])) for r in curs.fetchall()
            }


BalancesView = SQLiteBalancesView | PostgresBalancesView


class BalancesProjection(Projection[Any]):
    """Balance and deposit count per account, one upsert per event (the same as chronik's
    and the raw baseline's read model)."""

    name = "balances"

    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        view: BalancesView = self.view
        amount = getattr(domain_event, "amount", None)
        if amount is None:  # Opened
            view.record_change(str(domain_event.originator_id), 0, 0, tracking)
        else:  # Deposited
            view.record_change(str(domain_event.originator_id), int(amount * 100), 1, tracking)


def project(app: Bank, target: Target, ids: list[UUID], sizes: Sizes) -> Metrics:
    """W6P: the projection catches up from the start over the W1 events into its view."""
    env = env_for(target)
    last = app.recorder.max_notification_id()
    assert last is not None
    FINISH.arm(last)
    deadline = time.monotonic() + 3600
    started = time.perf_counter()
    if target.backend == "postgres":
        with ProjectionRunner(
            application_class=Bank,
            projection_class=BalancesProjection,
            view_class=PostgresBalancesView,
            env=env,
        ) as runner:
            while not FINISH.done.wait(0.05):
                if runner.is_interrupted.is_set() or time.monotonic() > deadline:
                    break
            view: BalancesView = runner.view
    else:
        factory = InfrastructureFactory[TrackingRecorder].construct(
            env=Environment(BalancesProjection.name, {**os.environ, **env})
        )
        view = factory.tracking_recorder(SQLiteBalancesView)  # type: ignore[assignment]
        projection = BalancesProjection(view=view)
        select = app.recorder.select_notifications
        to_domain_event = app.mapper.to_domain_event
        name = app.name
        start = view.max_tracking_id(name) or 0
        while True:
            page = select(start=start, limit=500, inclusive_of_start=False)
            for notification in page:
                projection.process_event(
                    to_domain_event(notification), Tracking(name, notification.id)
                )
            if len(page) < 500:
                break
            start = page[-1].id
    try:
        if not FINISH.done.is_set():
            raise AssertionError(f"W6P stopped at {FINISH.processed} events")
        seconds = FINISH.at - started
        balances = view.balances()
    finally:
        view.datastore.close()
    expected = sizes.w1_streams * sizes.w1_events
    if FINISH.processed != expected:
        raise AssertionError(f"W6P applied {FINISH.processed} events, expected {expected}")
    want = {str(ids[i]): v for i, v in expected_balances(sizes.w1_streams, sizes.w1_events).items()}
    if balances != want:
        raise AssertionError("W6P: the read model differs from what W1 wrote")
    return {
        "events": expected,
        "seconds": seconds,
        "events_per_s": expected / seconds,
        "accounts": len(balances),
        "balance_cents_total": sum(cents for cents, _ in balances.values()),
    }


def chain(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    app = make_app(target)
    try:
        out: dict[str, Metrics] = {}
        out["W1"], ids = write_accounts(app, sizes)
        out["W4"] = rebuild(app, ids, sizes)
        out["W6"] = read_log(app, sizes.w1_streams * sizes.w1_events)
        out["W6P"] = project(app, target, ids, sizes)
        out["W5"], big = load_big(app, sizes)
    finally:
        app.close()
    out["W5S"] = load_from_snapshot(target, big, sizes)
    return out


def w2(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    app = make_app(target)
    try:
        return {"W2": append_one_by_one(app, sizes)}
    finally:
        app.close()


def concurrent_appenders(app: Bank, sizes: Sizes) -> Metrics:
    """W8: ``w8_tasks`` threads sharing the one application, each creating its own account
    and saving it after every event (``w8_events`` events, one ``save`` each). Untimed
    before the barrier: one warm-up account saved per thread (the connection pool warms up
    as in a running server)."""
    tasks, per = sizes.w8_tasks, sizes.w8_events
    ids: list[UUID | None] = [None] * tasks

    def account_for(index: int) -> BankAccount:
        o = opened(index)
        return BankAccount(o.owner, o.currency, o.branch, o.overdraft_limit)

    def writer(index: int, barrier: threading.Barrier) -> None:
        app.save(account_for(W8_WARM_UP + index))
        barrier.wait()
        account = account_for(index)
        app.save(account)
        for seq in range(1, per):
            d = deposited(index, seq)
            account.deposit(d.amount, d.reference, d.teller, d.seq)
            app.save(account)
        ids[index] = account.id

    seconds = run_threads(tasks, writer)
    for account_id in ids:
        assert account_id is not None
        loaded: BankAccount = app.repository.get(account_id)
        if loaded.version != per:
            raise AssertionError(f"W8: an account is at version {loaded.version}, not {per}")
    events = tasks * per
    return {"events": events, "tasks": tasks, "seconds": seconds, "events_per_s": events / seconds}


def w8(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    app = make_app(target)
    try:
        return {"W8": concurrent_appenders(app, sizes)}
    finally:
        app.close()


def info() -> dict[str, Any]:
    from importlib.metadata import version

    return {"version": version("eventsourcing")}
