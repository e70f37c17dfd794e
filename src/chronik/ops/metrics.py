"""Prometheus metrics of a store and its workers (``pip install chronik[ops]``).

:class:`StoreMetrics` keeps a ``prometheus_client`` registry with:

=========================================  =========  ===========================================
name                                       type       what
=========================================  =========  ===========================================
``chronik_append_seconds``                 histogram  latency of ``append`` in this process
``chronik_appended_events_total``          counter    events appended by this process, by category
``chronik_append_errors_total``            counter    appends that raised, by error type
``chronik_store_events``                   gauge      stored events by category (refreshed at most
                                                      every ``stats_interval`` seconds)
``chronik_store_head_position``            gauge      the highest position readers can see
``chronik_horizon_age_seconds``            gauge      age of the oldest transaction holding the
                                                      read horizon (PostgreSQL; 0 elsewhere)
``chronik_horizon_invisible_events``       gauge      committed events readers cannot see yet
                                                      (counted up to 10,000)
``chronik_checkpoint_position``            gauge      each checkpoint (projection, saga, relay...)
``chronik_checkpoint_lag_events``          gauge      events after it (exact up to 10,000, then
                                                      estimated from positions)
``chronik_checkpoint_lag_seconds``         gauge      age of the first event after it
``chronik_checkpoint_age_seconds``         gauge      time since it last moved
``chronik_dead_letters``                   gauge      dead letters by subscription
``chronik_outbox_backlog``                 gauge      saga commands pending or running, by saga
``chronik_worker_partition_owner``         gauge      1 per partition of a worker group, labelled
                                                      with its owner ("" when free; SQL stores)
``chronik_worker_partition_epoch``         gauge      the lease's epoch (fencing token) per
                                                      partition; it goes up at each takeover
``chronik_worker_partition_lag_events``    gauge      positions between a partition's checkpoint
                                                      and the head
``chronik_worker_members``                 gauge      live members of each worker group
``chronik_projection_*``                   gauge      the projection runner's own metrics
                                                      (docs/projections.md), when one is given
=========================================  =========  ===========================================

Gauges are read from the store at each scrape (:meth:`StoreMetrics.exposition`), never by
counting the whole tail. :func:`serve_metrics` answers ``GET /metrics`` on a port (the
workers' ``--metrics-port``); ``chronik serve`` mounts the same at ``/metrics``.

Example::

    metrics = StoreMetrics(store)
    metrics.instrument()                 # time this process's appends
    text = await metrics.exposition()    # Prometheus text format
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from chronik.events import category_of
from chronik.ops.restore import DONE_PREFIX, EXPECTED_PREFIX
from chronik.scaleout.status import workers_status
from chronik.store.capabilities import supports
from chronik.store.horizon import events_after, read_horizon
from chronik.store.port import SqlStore
from chronik.store.protocol import EventStore

__all__ = ["CONTENT_TYPE", "METRIC_NAMES", "StoreMetrics", "metrics_server", "serve_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

METRIC_NAMES = (
    "chronik_append_seconds",
    "chronik_appended_events_total",
    "chronik_append_errors_total",
    "chronik_store_events",
    "chronik_store_head_position",
    "chronik_horizon_age_seconds",
    "chronik_horizon_invisible_events",
    "chronik_checkpoint_position",
    "chronik_checkpoint_lag_events",
    "chronik_checkpoint_lag_seconds",
    "chronik_checkpoint_age_seconds",
    "chronik_dead_letters",
    "chronik_outbox_backlog",
)
"""Every metric name :class:`StoreMetrics` exports (the projection runner's come on top)."""

StatusSource = Callable[[], Awaitable[Sequence[Any]]]


class _Snapshot(Collector):
    """The gauges read at the last refresh, handed to prometheus_client as they are."""

    def __init__(self) -> None:
        self.families: list[Metric] = []

    def collect(self) -> Iterable[Metric]:
        return list(self.families)


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _seconds(value: Any, now: datetime) -> float:
    if isinstance(value, datetime):
        at = value if value.tzinfo else value.replace(tzinfo=UTC)
    elif isinstance(value, int | float):  # SQLite: microseconds since 1970
        at = datetime.fromtimestamp(value / 1e6, UTC)
    else:
        try:
            at = datetime.fromisoformat(str(value))
        except ValueError:
            return 0.0
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return max((now - at).total_seconds(), 0.0)


class StoreMetrics:
    """The metrics of one store (and optionally a projection runner) in one registry.

    Args:
        store: the store to read gauges from.
        registry: where to register (default: a new one, so that several stores in one
            process do not collide).
        projections: ``runner.status`` of a :class:`~chronik.projections.ProjectionRunner`,
            whose statuses are exported under the existing ``chronik_projection_*`` names.
        stats_interval: the per-category event counts (a count over the table) are read
            at most this often.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        registry: CollectorRegistry | None = None,
        projections: StatusSource | None = None,
        stats_interval: float = 30.0,
    ) -> None:
        self.store = store
        self.registry = registry if registry is not None else CollectorRegistry()
        self.projections = projections
        self.stats_interval = stats_interval
        self._stats: tuple[float, dict[str, int]] | None = None
        self._lock = asyncio.Lock()
        self._snapshot = _Snapshot()
        self.registry.register(self._snapshot)
        self.append_seconds = Histogram(
            "chronik_append_seconds",
            "Latency of append in this process",
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.appended = Counter(
            "chronik_appended_events",
            "Events appended by this process",
            ["category"],
            registry=self.registry,
        )
        self.append_errors = Counter(
            "chronik_append_errors", "Appends that raised", ["error"], registry=self.registry
        )

    # -- appends --------------------------------------------------------------------------

    def instrument(self) -> None:
        """Time and count every ``append`` of :attr:`store` from now on (this process)."""
        inner = self.store.append
        if getattr(inner, "_chronik_metrics", False):
            return

        @functools.wraps(inner)
        async def append(stream_id: str, events: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                result = await inner(stream_id, events, *args, **kwargs)
            except Exception as exc:
                self.append_errors.labels(type(exc).__name__).inc()
                raise
            self.append_seconds.observe(time.perf_counter() - started)
            with contextlib.suppress(TypeError):
                self.appended.labels(category_of(stream_id)).inc(len(events))
            return result

        append._chronik_metrics = True  # type: ignore[attr-defined]
        self.store.append = append  # type: ignore[method-assign]

    # -- gauges ---------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Read every gauge from the store (and the projection runner) now."""
        async with self._lock:
            self._snapshot.families = await self._read()

    async def _categories(self) -> dict[str, int]:
        now = time.monotonic()
        if self._stats is None or now - self._stats[0] >= self.stats_interval:
            stats = await self.store.stats()
            self._stats = (now, dict(stats.categories))
        return self._stats[1]

    async def _read(self) -> list[Metric]:
        store = self.store
        out: list[Metric] = []
        g = _gauge("chronik_store_events", "Stored events by category", ["category"])
        for cat, n in sorted((await self._categories()).items()):
            g.add_metric([cat], n)
        out.append(g)
        g = _gauge("chronik_store_head_position", "Highest position readers can see")
        g.add_metric([], await store.head_position())
        out.append(g)
        horizon = await read_horizon(store)
        g = _gauge(
            "chronik_horizon_age_seconds",
            "Age of the oldest transaction holding the read horizon back (0: none)",
        )
        g.add_metric([], horizon.age_seconds if horizon is not None and horizon.held else 0.0)
        out.append(g)
        g = _gauge(
            "chronik_horizon_invisible_events",
            "Committed events readers cannot see yet (counted up to 10000)",
        )
        g.add_metric([], horizon.invisible_events if horizon is not None else 0)
        out.append(g)
        out.extend(await self._checkpoints())
        out.extend(await self._dead_letters())
        out.append(await self._outbox())
        out.extend(await self._leases())
        if self.projections is not None:
            out.extend(_projection_families(await self.projections()))
        return out

    async def _checkpoints(self) -> list[Metric]:
        store = self.store
        label = ["checkpoint"]
        pos = _gauge("chronik_checkpoint_position", "Last position handled", label)
        lag = _gauge("chronik_checkpoint_lag_events", "Events after the checkpoint", label)
        lag_s = _gauge(
            "chronik_checkpoint_lag_seconds", "Age of the first event after the checkpoint", label
        )
        age = _gauge("chronik_checkpoint_age_seconds", "Seconds since the checkpoint moved", label)
        moved: dict[str, Any] = {}
        if supports(store, SqlStore):
            rows = await store.query("SELECT name, updated_at FROM checkpoints")  # type: ignore[attr-defined]
            moved = {str(n): at for n, at in rows}
        now = datetime.now(UTC)
        for name, position in sorted((await store.checkpoints()).items()):
            if name.startswith((EXPECTED_PREFIX, DONE_PREFIX)):
                continue
            behind = await events_after(store, position)
            pos.add_metric([name], position)
            lag.add_metric([name], behind.events)
            lag_s.add_metric([name], behind.seconds)
            if name in moved:
                age.add_metric([name], _seconds(moved[name], now))
        return [pos, lag, lag_s, age]

    async def _dead_letters(self) -> list[Metric]:
        g = _gauge("chronik_dead_letters", "Recorded dead letters", ["subscription"])
        per: dict[str, int] = {}
        for letter in await self.store.dead_letters():
            per[letter.subscription] = per.get(letter.subscription, 0) + 1
        for name, n in sorted(per.items()):
            g.add_metric([name], n)
        return [g]

    async def _leases(self) -> list[Metric]:
        """Owner, epoch and lag of every partition of every worker group (scale-out)."""
        owner = _gauge(
            "chronik_worker_partition_owner",
            "1 per partition of a worker group, labelled with its owner ('' when free)",
            ["group", "partition", "owner"],
        )
        epoch = _gauge(
            "chronik_worker_partition_epoch",
            "Lease epoch (fencing token) of a partition; goes up at each takeover",
            ["group", "partition"],
        )
        lag = _gauge(
            "chronik_worker_partition_lag_events",
            "Positions between a partition's checkpoint and the head",
            ["group", "partition"],
        )
        members = _gauge("chronik_worker_members", "Live members of a worker group", ["group"])
        if supports(self.store, SqlStore):
            for group in await workers_status(self.store):
                members.add_metric([group.name], len(group.members))
                for p in group.partitions:
                    part = f"{p.partition}of{p.partitions}"
                    owner.add_metric([group.name, part, p.owner or ""], 1)
                    epoch.add_metric([group.name, part], p.epoch)
                    if p.lag is not None:  # an inbox's lag is its JetStream consumers'
                        lag.add_metric([group.name, part], p.lag)
        return [owner, epoch, lag, members]

    async def _outbox(self) -> Metric:
        g = _gauge("chronik_outbox_backlog", "Saga commands pending or running", ["saga"])
        if supports(self.store, SqlStore):
            from chronik.sagas.status import saga_counts

            try:
                counts = await saga_counts(self.store)  # type: ignore[arg-type]
            except Exception:  # an old schema without saga tables
                return g
            per: dict[str, int] = {}
            for saga, status, n in counts.commands:
                if status in ("pending", "running"):
                    per[saga] = per.get(saga, 0) + n
            for saga, n in sorted(per.items()):
                g.add_metric([saga], n)
        return g

    async def exposition(self) -> bytes:
        """Refresh, then the whole registry in the Prometheus text format."""
        await self.refresh()
        return generate_latest(self.registry)


def _projection_families(statuses: Sequence[Any]) -> list[Metric]:
    """The runner's statuses under the names of ``render_metrics`` (projections.status)."""
    from chronik.projections.status import METRICS

    out: list[Metric] = []
    for name, kind, doc, attr in METRICS:
        if kind == "counter":
            from prometheus_client.core import CounterMetricFamily

            fam: Metric = CounterMetricFamily(
                name.removesuffix("_total"), doc, labels=["projection", "version"]
            )
        else:
            fam = _gauge(name, doc, ["projection", "version"])
        for s in statuses:
            fam.add_metric([s.name, str(s.version)], getattr(s, attr))  # type: ignore[attr-defined]
        out.append(fam)
    up = _gauge("chronik_projection_up", "1 when running, 0 otherwise", ["projection", "state"])
    for s in statuses:
        up.add_metric([s.name, s.state], 1 if s.state == "running" else 0)
    out.append(up)
    return out


async def _handle(
    metrics: StoreMetrics, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        line = request.split(b"\r\n", 1)[0].split()
        if len(line) >= 2 and line[0] == b"GET" and line[1].split(b"?")[0] == b"/metrics":
            try:
                body, status = await metrics.exposition(), b"200 OK"
                ctype = CONTENT_TYPE.encode()
            except Exception as exc:  # the store is down: say so, keep serving
                body, status = f"# scrape failed: {exc!r}\n".encode(), b"503 Service Unavailable"
                ctype = b"text/plain; charset=utf-8"
        else:
            body, status, ctype = b"see /metrics\n", b"404 Not Found", b"text/plain"
        writer.write(
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: "
            + ctype
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + body
        )
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def serve_metrics(metrics: StoreMetrics, port: int, host: str = "0.0.0.0") -> asyncio.Server:
    """Answer ``GET /metrics`` on ``host:port`` until the returned server is closed."""
    return await asyncio.start_server(functools.partial(_handle, metrics), host, port)


@contextlib.asynccontextmanager
async def metrics_server(
    store: EventStore,
    port: int | None,
    *,
    projections: StatusSource | None = None,
    host: str = "0.0.0.0",
) -> AsyncIterator[StoreMetrics | None]:
    """``--metrics-port`` of a worker command: metrics of ``store`` served on ``port``
    while the block runs (nothing when ``port`` is ``None``)."""
    if port is None:
        yield None
        return
    metrics = StoreMetrics(store, projections=projections)
    metrics.instrument()
    server = await serve_metrics(metrics, port, host)
    try:
        yield metrics
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
