"""OpenTelemetry spans and structured-log fields for chronik (``pip install chronik[otel]``).

Spans, when OpenTelemetry is installed and a tracer provider is configured:

==============================  ==========  ===================================================
span                            kind        around
==============================  ==========  ===================================================
``chronik.command``             internal    :func:`chronik.execute` (every command handler)
``chronik.load``                internal    :func:`chronik.load_state`
``chronik.append``              producer    ``append`` of every backend
``chronik.projection.batch``    consumer    one page of events a projection applies
``chronik.projection.handle``   consumer    one event in a projection's handler
==============================  ==========  ===================================================

Attributes are ``chronik.stream_id``, ``chronik.category``, ``chronik.event.type``,
``chronik.stream.version``, ``chronik.position``, ``chronik.correlation_id``,
``chronik.causation_id`` (and ``chronik.command.type``, ``chronik.event.count``,
``chronik.projection.name``, ``chronik.attempts`` where they apply).

An append stores the W3C ``traceparent`` of its span in each event's metadata. A handler of
that event, later and in another process maybe, starts its span with a *link* to the stored
context, never as its child: a parent chain across asynchronous hops grows one trace without
bound (Eventuous PR #570 built a 251 MB trace). A projection batch always starts a new trace.

Without OpenTelemetry nothing is imported: appends and loads run undecorated, and a command
or a handled event costs one flag test more (besides the log fields).
With the API installed but no SDK configured (OpenTelemetry's proxy provider), chronik makes
no spans at all. :func:`configure` picks another provider (tests) or turns spans off.

Logs: :class:`LogContextFilter` adds ``correlation_id``, ``causation_id``, ``stream_id`` and
``position`` (and ``trace_id``/``span_id`` when a span is recording) to every log record that
passes a handler; :class:`JsonLogFormatter` writes one JSON object per record::

    handler = logging.StreamHandler()
    handler.addFilter(chronik.telemetry.LogContextFilter())
    handler.setFormatter(chronik.telemetry.JsonLogFormatter())
    logging.getLogger().addHandler(handler)
"""

from __future__ import annotations

import contextvars
import functools
import importlib.util
import logging
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import msgspec

from chronik.context import context, current_context
from chronik.events import RecordedEvent, category_of, new_event_id

__all__ = [
    "JsonLogFormatter",
    "LogContextFilter",
    "configure",
    "current_traceparent",
    "event_log_fields",
    "format_traceparent",
    "log_fields",
    "parse_traceparent",
    "projection_batch",
    "projection_handler",
    "set_command_type",
    "traced_append",
    "traced_command",
    "traced_load",
    "tracer",
]

F = TypeVar("F", bound=Any)

TRACER_NAME = "chronik"
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")

# -- which tracer, if any -----------------------------------------------------------------------

_resolved = False
_api: Any = None
"""``opentelemetry.trace`` once imported, ``None`` when it is not installed."""
_enabled = True
_provider: Any = None
"""A provider given to :func:`configure` (``None``: OpenTelemetry's global one)."""
_cached: tuple[Any, Any] | None = None


_UNKNOWN = object()
_env_provider = False
"""``OTEL_PYTHON_TRACER_PROVIDER`` is set: OpenTelemetry makes the provider on first use."""


def _resolve() -> Any:
    global _resolved, _api, _env_provider
    _resolved = True
    try:
        from opentelemetry import trace
    except ImportError:
        _api = None
    else:
        _api = trace
        _env_provider = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
    return _api


def _installed() -> bool:
    """Whether OpenTelemetry can be imported, without importing it (for decorators: when
    it cannot, they return the function itself, so the hot paths pay nothing)."""
    if _resolved:
        return _api is not None
    try:
        return importlib.util.find_spec("opentelemetry") is not None
    except (ImportError, ValueError):
        return False


def _global_provider(api: Any) -> Any:
    """OpenTelemetry's global tracer provider, ``None`` when none is set (read from the
    module's global, where ``set_tracer_provider`` puts it: ``get_tracer_provider`` looks
    at ``os.environ`` on every call)."""
    if _env_provider:
        return api.get_tracer_provider()
    provider = getattr(api, "_TRACER_PROVIDER", _UNKNOWN)
    return api.get_tracer_provider() if provider is _UNKNOWN else provider


def configure(*, tracer_provider: Any = None, enabled: bool = True) -> None:
    """Make chronik's spans with ``tracer_provider`` (``None``: OpenTelemetry's global one),
    or turn them off with ``enabled=False``.

    Example (tests)::

        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        chronik.telemetry.configure(tracer_provider=provider)
    """
    global _enabled, _provider, _cached
    _enabled = enabled
    _provider = tracer_provider
    _cached = None


def tracer() -> Any | None:
    """The OpenTelemetry tracer chronik uses now, or ``None`` when it makes no spans.

    ``None`` when OpenTelemetry is not installed, spans are turned off, or no tracer
    provider is configured (OpenTelemetry's proxy provider would only make no-op spans).
    """
    global _cached
    if not _enabled:
        return None
    api = _api if _resolved else _resolve()
    if api is None:
        return None
    provider = _provider if _provider is not None else _global_provider(api)
    if provider is None or isinstance(provider, api.ProxyTracerProvider):
        return None
    cached = _cached
    if cached is not None and cached[0] is provider:
        return cached[1]
    from chronik._version import __version__

    made = provider.get_tracer(TRACER_NAME, __version__)
    _cached = (provider, made)
    return made


# -- W3C traceparent ------------------------------------------------------------------------------


def format_traceparent(span_context: Any) -> str | None:
    """The W3C ``traceparent`` of an OpenTelemetry span context (``None`` if it is invalid)."""
    if span_context is None or not span_context.is_valid:
        return None
    return (
        f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
        f"{int(span_context.trace_flags):02x}"
    )


def parse_traceparent(value: object) -> Any | None:
    """The remote span context of a stored W3C ``traceparent``; ``None`` if malformed or
    OpenTelemetry is not installed."""
    api = _api if _resolved else _resolve()
    if api is None or not isinstance(value, str):
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    tid, sid = int(trace_id, 16), int(span_id, 16)
    if tid == 0 or sid == 0:
        return None
    return api.SpanContext(
        trace_id=tid, span_id=sid, is_remote=True, trace_flags=api.TraceFlags(int(flags, 16))
    )


def current_traceparent() -> str | None:
    """The ``traceparent`` of the current recording span (``None`` without one)."""
    if tracer() is None:
        return None
    return format_traceparent(_api.get_current_span().get_span_context())


# -- log fields -------------------------------------------------------------------------------

_scope: contextvars.ContextVar[tuple[str | None, int | None]] = contextvars.ContextVar(
    "chronik_log_scope", default=(None, None)
)
"""The stream id and position the code here works on (a command's stream, a handled event)."""

_LOG_KEYS = ("correlation_id", "causation_id", "stream_id", "position")


def log_fields() -> dict[str, Any]:
    """``correlation_id``, ``causation_id``, ``stream_id`` and ``position`` here and now."""
    ctx = current_context()
    stream_id, position = _scope.get()
    return {
        "correlation_id": ctx.correlation_id,
        "causation_id": ctx.causation_id,
        "stream_id": stream_id,
        "position": position,
    }


def event_log_fields(event: RecordedEvent) -> dict[str, Any]:
    """The log fields of one stored event (for ``logger.warning(..., extra=...)``)."""
    return {
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "stream_id": event.stream_id,
        "position": event.position,
    }


class LogContextFilter(logging.Filter):
    """Adds ``correlation_id``, ``causation_id``, ``stream_id`` and ``position`` to records.

    Values come from :func:`chronik.context` and from what chronik is doing (a command's
    stream, the event a projection handles); a field the record has already (given with
    ``extra=``) is kept. ``None`` where unknown. Attach it to a *handler*, so it also sees
    records of child loggers. With a recording span, ``trace_id`` and ``span_id`` too.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in log_fields().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if tracer() is not None and not hasattr(record, "trace_id"):
            span_context = _api.get_current_span().get_span_context()
            if span_context.is_valid:
                record.trace_id = f"{span_context.trace_id:032x}"
                record.span_id = f"{span_context.span_id:016x}"
        return True


_encode_json = msgspec.json.Encoder(enc_hook=str).encode


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the chronik log fields
    (see :class:`LogContextFilter`), ``trace_id``/``span_id`` and ``exception`` if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in (*_LOG_KEYS, "trace_id", "span_id"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return _encode_json(out).decode()


# -- spans ------------------------------------------------------------------------------------


def _span_kind(name: str) -> Any:
    return getattr(_api.SpanKind, name)


def set_command_type(command: object) -> None:
    """Name the command being handled on the current ``chronik.command`` span."""
    if tracer() is not None:
        _api.get_current_span().set_attribute("chronik.command.type", type(command).__name__)


def traced_command(fn: F) -> F:
    """Decorate :func:`chronik.execute`: a ``chronik.command`` span and the log scope."""

    @functools.wraps(fn)
    async def execute(store: Any, stream_id: str, *args: Any, **kwargs: Any) -> Any:
        token = _scope.set((stream_id, None))
        try:
            t = tracer()
            if t is None:
                return await fn(store, stream_id, *args, **kwargs)
            attributes: dict[str, Any] = {
                "chronik.stream_id": stream_id,
                "chronik.category": category_of(stream_id),
            }
            correlation = current_context().correlation_id
            if correlation is not None:
                attributes["chronik.correlation_id"] = correlation
            with t.start_as_current_span("chronik.command", attributes=attributes) as span:
                result = await fn(store, stream_id, *args, **kwargs)
                done = {
                    "chronik.stream.version": result.version,
                    "chronik.event.count": len(result.events),
                    "chronik.attempts": result.attempts,
                }
                if result.position is not None:
                    done["chronik.position"] = result.position
                span.set_attributes(done)
                return result
        finally:
            _scope.reset(token)

    return cast(F, execute)


def traced_load(fn: F) -> F:
    """Decorate :func:`chronik.load_state` with a ``chronik.load`` span (returns ``fn``
    itself when OpenTelemetry is not installed)."""
    if not _installed():
        return fn

    @functools.wraps(fn)
    async def load_state(store: Any, stream_id: str, *args: Any, **kwargs: Any) -> Any:
        t = tracer()
        if t is None:
            return await fn(store, stream_id, *args, **kwargs)
        attributes = {"chronik.stream_id": stream_id, "chronik.category": category_of(stream_id)}
        with t.start_as_current_span("chronik.load", attributes=attributes) as span:
            loaded = await fn(store, stream_id, *args, **kwargs)
            span.set_attribute("chronik.stream.version", loaded.version)
            snapshot_version = getattr(loaded, "snapshot_version", None)
            if snapshot_version is not None:
                span.set_attribute("chronik.snapshot.version", snapshot_version)
            return loaded

    return cast(F, load_state)


def traced_append(fn: F) -> F:
    """Decorate a backend's ``append``: a ``chronik.append`` span whose ``traceparent`` is
    stored in the metadata of every event appended (returns ``fn`` itself when OpenTelemetry
    is not installed)."""
    if not _installed():
        return fn

    @functools.wraps(fn)
    async def append(self: Any, stream_id: str, events: Any, **kwargs: Any) -> Any:
        t = tracer()
        if t is None:
            return await fn(self, stream_id, events, **kwargs)
        ctx = current_context()
        correlation = ctx.correlation_id or str(new_event_id())
        attributes: dict[str, Any] = {
            "chronik.stream_id": stream_id,
            "chronik.category": category_of(stream_id) if isinstance(stream_id, str) else "",
            "chronik.correlation_id": correlation,
        }
        if ctx.causation_id is not None:
            attributes["chronik.causation_id"] = ctx.causation_id
        try:
            attributes["chronik.event.count"] = len(events)
            types = sorted({e.type for e in events})
            attributes["chronik.event.type"] = types[0] if len(types) == 1 else types
        except (TypeError, AttributeError):
            pass  # the backend raises the proper error for bad input
        expected = kwargs.get("expected_version")
        if isinstance(expected, int):
            attributes["chronik.expected_version"] = int(expected)
        kind = _span_kind("PRODUCER")
        with t.start_as_current_span("chronik.append", kind=kind, attributes=attributes) as span:
            traceparent = format_traceparent(span.get_span_context())
            with context(correlation_id=correlation, traceparent=traceparent):
                result = await fn(self, stream_id, events, **kwargs)
            span.set_attributes(
                {"chronik.stream.version": result.version, "chronik.position": result.position}
            )
            return result

    return cast(F, append)


class _NoSpan:
    """What the span context managers give when no span is made."""

    __slots__ = ()

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_NO_SPAN = _NoSpan()


class _BatchScope:
    __slots__ = ("_events", "_manager", "_name")

    def __init__(self, name: str, events: Sequence[RecordedEvent]) -> None:
        self._name = name
        self._events = events
        self._manager: Any = None

    def __enter__(self) -> Any:
        t = tracer()
        if t is None or not self._events:
            return _NO_SPAN
        from opentelemetry.context import Context

        events = self._events
        attributes = {
            "chronik.projection.name": self._name,
            "chronik.event.count": len(events),
            "chronik.position.first": events[0].position,
            "chronik.position.last": events[-1].position,
        }
        # a new trace: never the child of whatever runs the projection (a long-lived task)
        self._manager = t.start_as_current_span(
            "chronik.projection.batch",
            context=Context(),
            kind=_span_kind("CONSUMER"),
            attributes=attributes,
        )
        return self._manager.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        if self._manager is not None:
            return self._manager.__exit__(*exc)
        return None


def projection_batch(name: str, events: Sequence[RecordedEvent]) -> Any:
    """A ``chronik.projection.batch`` span around one page a projection applies (a new
    trace; no span for an empty page)."""
    return _BatchScope(name, events)


class _HandlerScope:
    __slots__ = ("_event", "_manager", "_name", "_token")

    def __init__(self, name: str, event: RecordedEvent) -> None:
        self._name = name
        self._event = event
        self._manager: Any = None

    def __enter__(self) -> Any:
        event = self._event
        self._token = _scope.set((event.stream_id, event.position))
        t = tracer()
        if t is None:
            return _NO_SPAN
        attributes: dict[str, Any] = {
            "chronik.projection.name": self._name,
            "chronik.stream_id": event.stream_id,
            "chronik.category": category_of(event.stream_id),
            "chronik.event.type": event.type,
            "chronik.stream.version": event.version,
            "chronik.position": event.position,
            "chronik.event_id": str(event.event_id),
        }
        if event.correlation_id is not None:
            attributes["chronik.correlation_id"] = event.correlation_id
        if event.causation_id is not None:
            attributes["chronik.causation_id"] = event.causation_id
        stored = parse_traceparent(event.metadata.get("traceparent"))
        links = [_api.Link(stored)] if stored is not None else []
        self._manager = t.start_as_current_span(
            "chronik.projection.handle",
            kind=_span_kind("CONSUMER"),
            attributes=attributes,
            links=links,
        )
        return self._manager.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        try:
            if self._manager is not None:
                return self._manager.__exit__(*exc)
            return None
        finally:
            _scope.reset(self._token)


def projection_handler(name: str, event: RecordedEvent) -> Any:
    """The scope of one event in projection ``name``'s handler: log fields, and a
    ``chronik.projection.handle`` span *linked* to the event's stored ``traceparent``."""
    return _HandlerScope(name, event)
