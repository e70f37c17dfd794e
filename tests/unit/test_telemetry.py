"""OpenTelemetry spans (with the SDK's in-memory exporter) and structured log fields.

The append → projection hop: the append stores its span's traceparent in the event, and the
handler's span *links* to it from a new trace (never its child). Without OpenTelemetry
installed, nothing is imported and nothing is stored.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import chronik
from chronik import CommandHandler, Decider, RecordedEvent, telemetry
from chronik.projections import ExternalProjection, Projection, ProjectionRunner
from chronik.store.memory import MemoryEventStore
from chronik.store.protocol import Tx

registry = chronik.EventRegistry()


@registry.event("Ordered")
@dataclass(frozen=True)
class Ordered:
    sku: str


@registry.event("Reserved")
@dataclass(frozen=True)
class Reserved:
    sku: str


@dataclass(frozen=True)
class Order:
    sku: str


orders: Decider[Order, Any, int] = Decider(
    lambda c, n: [Ordered(c.sku)], lambda n, e: n + 1, lambda: 0
)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.configure(tracer_provider=provider)
    try:
        yield exporter
    finally:
        telemetry.configure()
        provider.shutdown()


async def first_event(store: chronik.EventStore, stream_id: str) -> RecordedEvent:
    async for event in store.read_stream(stream_id):
        return event
    raise AssertionError(f"{stream_id} is empty")


def by_name(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def one(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    (span,) = by_name(exporter, name)
    return span


def traceparent_of(span: ReadableSpan) -> str:
    ctx = span.get_span_context()
    assert ctx is not None
    return telemetry.format_traceparent(ctx) or ""


async def test_command_load_and_append_spans(spans: InMemorySpanExporter) -> None:
    async with MemoryEventStore() as store:
        handler = CommandHandler(store, orders, registry=registry)
        with chronik.context(correlation_id="checkout-9"):
            await handler.handle("order-9", Order("kettle"))
        stored = await first_event(store, "order-9")
    command = one(spans, "chronik.command")
    load = one(spans, "chronik.load")
    append = one(spans, "chronik.append")
    assert load.parent is not None and load.parent.span_id == command.context.span_id
    assert append.parent is not None and append.parent.span_id == command.context.span_id
    assert append.kind == SpanKind.PRODUCER
    assert dict(command.attributes or {}) == {
        "chronik.stream_id": "order-9",
        "chronik.category": "order",
        "chronik.correlation_id": "checkout-9",
        "chronik.command.type": "Order",
        "chronik.stream.version": 0,
        "chronik.event.count": 1,
        "chronik.attempts": 1,
        "chronik.position": 1,
    }
    attrs = dict(append.attributes or {})
    assert attrs["chronik.stream_id"] == "order-9"
    assert attrs["chronik.event.type"] == "Ordered"
    assert attrs["chronik.correlation_id"] == "checkout-9"
    assert attrs["chronik.expected_version"] == -1
    assert (attrs["chronik.stream.version"], attrs["chronik.position"]) == (0, 1)
    assert dict(load.attributes or {})["chronik.stream.version"] == -1
    assert stored.metadata["traceparent"] == traceparent_of(append)
    assert stored.correlation_id == "checkout-9"


class Reserve(ExternalProjection):
    """Reacts to an order by appending to the warehouse stream (a second hop)."""

    name = "reserve"
    event_types = ["Ordered"]

    def __init__(self, store: chronik.EventStore, log: logging.Logger) -> None:
        self.store = store
        self.log = log

    async def handle(self, event: RecordedEvent) -> None:
        self.log.info("reserving %s", event.data["sku"])
        await self.store.append("stock-kettle", [registry.to_new_event(Reserved("kettle"))])


class Counter(Projection):
    name = "count"
    event_types = ["Ordered"]

    async def setup(self, tx: Tx) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS n_v1 (n INTEGER)")

    async def handle(self, event: RecordedEvent, tx: Tx) -> None:
        await tx.execute("INSERT INTO n_v1 VALUES (1)")


async def test_append_to_projection_hop_links_not_parents(
    spans: InMemorySpanExporter, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("tests.reserve")
    caplog.handler.addFilter(telemetry.LogContextFilter())
    async with await chronik.connect(f"sqlite:///{tmp_path}/hop.db") as store:
        with chronik.context(correlation_id="checkout-1"):
            await store.append("order-1", [registry.to_new_event(Ordered("kettle"))])
        order = await first_event(store, "order-1")
        runner = ProjectionRunner(store, [Reserve(store, log), Counter()])
        with caplog.at_level(logging.INFO, logger="tests.reserve"):
            assert await runner.catch_up() == 2
        reserved = await first_event(store, "stock-kettle")

    first_append = [s for s in by_name(spans, "chronik.append") if s.parent is None]
    assert len(first_append) == 1
    produced = first_append[0]
    assert order.metadata["traceparent"] == traceparent_of(produced)

    batches = by_name(spans, "chronik.projection.batch")
    handles = by_name(spans, "chronik.projection.handle")
    assert {dict(s.attributes or {})["chronik.projection.name"] for s in batches} == {
        "reserve",
        "count",
    }
    assert len(handles) == 2
    for batch in batches:
        assert batch.parent is None, "a batch starts a new trace"
        assert batch.kind == SpanKind.CONSUMER
        assert dict(batch.attributes or {})["chronik.event.count"] == 1
    for handle in handles:
        (batch,) = [b for b in batches if b.context.span_id == handle.parent.span_id]  # type: ignore[union-attr]
        assert handle.context.trace_id == batch.context.trace_id
        assert handle.context.trace_id != produced.context.trace_id, "linked, not parented"
        (link,) = handle.links
        assert link.context.trace_id == produced.context.trace_id
        assert link.context.span_id == produced.context.span_id
        assert link.context.is_remote
        attrs = dict(handle.attributes or {})
        assert attrs["chronik.stream_id"] == "order-1"
        assert attrs["chronik.event.type"] == "Ordered"
        assert attrs["chronik.position"] == order.position
        assert attrs["chronik.stream.version"] == 0
        assert attrs["chronik.correlation_id"] == "checkout-1"

    (reaction,) = [s for s in by_name(spans, "chronik.append") if s.parent is not None]
    (reserve_handle,) = [
        h for h in handles if dict(h.attributes or {})["chronik.projection.name"] == "reserve"
    ]
    assert reaction.parent is not None
    assert reaction.parent.span_id == reserve_handle.context.span_id
    assert reserved.metadata["traceparent"] == traceparent_of(reaction)
    assert reserved.causation_id == str(order.event_id)
    assert reserved.correlation_id == "checkout-1"

    (record,) = [r for r in caplog.records if r.name == "tests.reserve"]
    assert record.correlation_id == "checkout-1"  # type: ignore[attr-defined]
    assert record.causation_id == str(order.event_id)  # type: ignore[attr-defined]
    assert record.stream_id == "order-1"  # type: ignore[attr-defined]
    assert record.position == order.position  # type: ignore[attr-defined]
    assert record.trace_id == f"{reserve_handle.context.trace_id:032x}"  # type: ignore[attr-defined]


async def test_no_spans_without_a_tracer_provider() -> None:
    """The API installed but no SDK configured (OpenTelemetry's proxy): no spans, no
    traceparent stored; turned off: the same."""
    telemetry.configure()
    assert telemetry.tracer() is None
    async with MemoryEventStore() as store:
        await store.append("order-1", [registry.to_new_event(Ordered("kettle"))])
        event = await first_event(store, "order-1")
    assert "traceparent" not in event.metadata
    provider = TracerProvider()
    telemetry.configure(tracer_provider=provider, enabled=False)
    try:
        assert telemetry.tracer() is None
        assert telemetry.current_traceparent() is None
    finally:
        telemetry.configure()


def test_traceparent_parsing() -> None:
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ctx = telemetry.parse_traceparent(tp)
    assert ctx is not None and ctx.is_remote
    assert telemetry.format_traceparent(ctx) == tp
    for bad in [
        None,
        42,
        "",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        "00-0AF7651916CD43DD8448EB211C80319Z-b7ad6b7169203331-01",
    ]:
        assert telemetry.parse_traceparent(bad) is None, bad


def test_json_log_records_carry_the_context() -> None:
    record = logging.LogRecord("chronik.projections", logging.WARNING, "", 0, "hi %s", ("x",), None)
    with chronik.context(correlation_id="c-1", causation_id="e-1"):
        assert telemetry.LogContextFilter().filter(record)
    out = json.loads(telemetry.JsonLogFormatter().format(record))
    assert out["message"] == "hi x" and out["level"] == "WARNING"
    assert out["correlation_id"] == "c-1" and out["causation_id"] == "e-1"
    assert "stream_id" not in out, "unknown fields are left out"
    given = logging.LogRecord("x", logging.INFO, "", 0, "m", (), None)
    given.stream_id = "order-1"
    telemetry.LogContextFilter().filter(given)
    assert given.__dict__["stream_id"] == "order-1", "a field given with extra= is kept"


class Poison(ExternalProjection):
    name = "poison"
    max_attempts = 1

    async def handle(self, event: RecordedEvent) -> None:
        raise ValueError("boom")


async def test_dead_letter_warning_names_the_event(caplog: pytest.LogCaptureFixture) -> None:
    async with MemoryEventStore() as store:
        with chronik.context(correlation_id="c-7"):
            await store.append("order-7", [registry.to_new_event(Ordered("x"))])
        with caplog.at_level(logging.WARNING, logger="chronik.projections"):
            await ProjectionRunner(store, [Poison()]).catch_up()
    (record,) = [r for r in caplog.records if "dead letter" in r.getMessage()]
    assert (record.stream_id, record.position, record.correlation_id) == ("order-7", 1, "c-7")  # type: ignore[attr-defined]


BLOCKED = """
import importlib.abc, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(name)
        return None

sys.meta_path.insert(0, Block())
import asyncio, chronik
from chronik import telemetry
from chronik.store.memory import MemoryEventStore

async def main():
    async with MemoryEventStore() as store:
        await store.append("order-1", [chronik.NewEvent("Ordered", {"sku": "x"})])
        async for event in store.read_stream("order-1"):
            assert "traceparent" not in event.metadata
    assert telemetry.tracer() is None
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert telemetry.parse_traceparent(tp) is None
    assert not [m for m in sys.modules if m.startswith("opentelemetry")]
    print("ok")

asyncio.run(main())
"""


def test_works_and_imports_nothing_without_opentelemetry() -> None:
    out = subprocess.run(
        [sys.executable, "-c", BLOCKED], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "ok"


GLOBAL_PROVIDER = """
import asyncio, chronik
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from chronik import telemetry
from chronik.store.memory import MemoryEventStore

async def main():
    async with MemoryEventStore() as store:
        await store.append("order-1", [chronik.NewEvent("Ordered", {})])
        assert telemetry.tracer() is None
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)  # set after chronik was imported and used
        await store.append("order-2", [chronik.NewEvent("Ordered", {})])
        async for event in store.read_stream("order-2"):
            (span,) = exporter.get_finished_spans()
            assert event.metadata["traceparent"] == telemetry.format_traceparent(span.context)
    print("ok")

asyncio.run(main())
"""


def test_the_global_provider_is_picked_up_when_set_later() -> None:
    out = subprocess.run(
        [sys.executable, "-c", GLOBAL_PROVIDER], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "ok"
