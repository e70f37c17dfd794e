"""The ``PersistentSubscriptions`` gRPC service: KurrentDB's persistent subscriptions as
chronik consumer groups (:mod:`chronik.scaleout.groups`).

A persistent subscription is one :class:`~chronik.scaleout.groups.ConsumerGroup`, named by
its group name (one namespace for all streams: the same group name on two streams is
refused with ``ALREADY_EXISTS``), covering one stream or ``$all``. Mapping:

- strategies: ``RoundRobin`` and ``DispatchToSingle`` -> ``round_robin`` (any free member
  gets the next messages), ``Pinned`` -> ``pinned`` (per stream one message at a time, in
  version order, whichever member asks). ``PinnedByCorrelation`` and unknown names are
  refused.
- ``max_retry_count`` R -> ``max_retries`` R + 1 deliveries (the first one and R retries);
  a message's ``retry_count`` is its deliveries so far minus one.
- ``message_timeout`` -> ``message_timeout`` (1 ms to 1 day; 0 is refused).
- nack ``Park`` / ``Retry`` / ``Skip`` -> ``park`` / ``retry`` / ``skip``; ``Unknown`` ->
  ``retry``; ``Stop`` -> ``retry`` for the named messages, then the call ends.
- ``max_subscriber_count`` is enforced per server process (0: no limit).
- stored and reported, not acted on: ``live_buffer_size``, ``read_batch_size``,
  ``history_buffer_size``, ``checkpoint_after``, ``min``/``max_checkpoint_count``,
  ``extra_statistics`` (chronik keeps every message's state in the database, so there are
  no checkpoints to tune).
- filters on ``$all`` (regex or prefixes, on the stream name or the event type; the
  client's default excludes system events): an event the filter refuses is acked by the
  server as it is taken, never sent.
- refused (``INVALID_ARGUMENT``): ``resolve_links`` true (chronik has no link events).
- ``Update`` changes the settings, never the position; ``RestartSubsystem`` answers OK and
  does nothing (there is no subsystem to restart: each call reads the database).

A message a client received but did not ack (its connection dropped, say) is handed out
again after ``message_timeout``: delivery is at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from kurrentdbclient.protos.v1 import persistent_pb2, persistent_pb2_grpc, shared_pb2

from chronik.errors import (
    AccessDenied,
    ChronikError,
    GroupExists,
    GroupNotFound,
    InvalidArgument,
    MissingCapability,
    StoreUnavailable,
)
from chronik.kurrent.auth import Rule, authorize, current_access, declare
from chronik.kurrent.mapping import (
    TOMBSTONE_TYPE,
    ProtocolError,
    decode_name,
    from_chronik_stream,
    to_chronik_stream,
)
from chronik.kurrent.streams import read_event
from chronik.scaleout.groups import ConsumerGroup, GroupMessage, Strategy
from chronik.security import Operation
from chronik.store.port import EventStore

__all__ = ["PersistentService"]

_log = logging.getLogger(__name__)
_Ctx = grpc.aio.ServicerContext[Any, Any]
_ALL = "$all"
_POLL = 0.25
"""Seconds a reader with nothing to send waits before it asks its group again."""
_STRATEGIES: dict[str, Strategy] = {
    "RoundRobin": "round_robin",
    "DispatchToSingle": "round_robin",
    "Pinned": "pinned",
}
_ENUM_NAMES = {0: "DispatchToSingle", 1: "RoundRobin", 2: "Pinned"}
_NACKS = {0: "retry", 1: "park", 2: "retry", 3: "skip", 4: "retry"}
_MAX_INT = 1_000_000
_KEYS = (
    "live_buffer_size", "read_batch_size", "history_buffer_size", "min_checkpoint_count",
    "max_checkpoint_count", "max_subscriber_count",
)  # fmt: skip


def _source_of(options: Any) -> str:
    """``$all`` or the KurrentDB stream name an ``Options`` message names."""
    which = options.WhichOneof("stream_option")
    if which == "all":
        return _ALL
    if which == "stream_identifier":
        return _stream_name(options.stream_identifier.stream_name)
    raise ProtocolError("the request names neither a stream nor $all")


def _may_read(source: str) -> None:
    """The caller may read what a subscription to ``source`` delivers: ``read`` on the
    stream's category, or on every category for ``$all`` (a group's messages are not
    filtered per caller)."""
    if source == _ALL:
        access = current_access()
        if not access.readable().everything:
            access.authorize(Operation.READ, None)  # raises AccessDenied (the whole store)
            raise AccessDenied(access.principal.name, "read", None)
    else:
        authorize(Operation.READ, to_chronik_stream(source))


def _stream_name(raw: bytes) -> str:
    name = decode_name(raw)
    if name == _ALL:
        return _ALL
    to_chronik_stream(name)  # refuses what cannot be a stream
    return name


def _check_group_name(name: str) -> str:
    if not name:
        raise ProtocolError("group_name must not be empty")
    return name


def _millis(settings: Any, field: str) -> int:
    which = settings.WhichOneof(field)
    if which is None:
        return 0
    value = int(getattr(settings, which))
    return value // 10_000 if which.endswith("ticks") else value


def _filter_of(options: Any) -> dict[str, Any]:
    """A ``$all`` filter as stored settings: on the stream name or the event type, a regex
    and/or prefixes (checked here, so a bad one is refused at Create)."""
    which = options.WhichOneof("filter")
    if which is None:
        raise ProtocolError("a filter names neither stream_identifier nor event_type")
    expression = options.stream_identifier if which == "stream_identifier" else options.event_type
    regex = expression.regex
    prefixes = list(expression.prefix)
    if len(regex) > 10_000 or len(prefixes) > 1000 or any(len(p) > 1000 for p in prefixes):
        raise ProtocolError("a filter may have a regex of 10000 characters and 1000 prefixes")
    if regex:
        try:
            re.compile(regex)
        except re.error as exc:
            raise ProtocolError(f"filter regex {regex[:80]!r}: {exc}") from exc
    return {"on": "stream" if which == "stream_identifier" else "type", "regex": regex,
            "prefix": prefixes}  # fmt: skip


def _accepts(stored: dict[str, Any] | None) -> Callable[[GroupMessage], bool]:
    """The predicate of a stored filter (everything passes without one)."""
    if not stored:
        return lambda _m: True
    regex = re.compile(stored["regex"]) if stored.get("regex") else None
    prefixes = tuple(stored.get("prefix") or ())
    on_stream = stored.get("on") == "stream"

    def accept(m: GroupMessage) -> bool:
        text = from_chronik_stream(m.stream_id) if on_stream else m.type
        if prefixes and not text.startswith(prefixes):
            return False
        return regex is None or regex.search(text) is not None

    return accept


def _group_of(name: str, source: str, settings: Any, strategy_name: str, store: EventStore,
              start: str, event_filter: dict[str, Any] | None = None) -> ConsumerGroup:  # fmt: skip
    """The consumer group for a Create or Update request's settings (refusing what chronik
    cannot honour)."""
    if settings.resolve_links:
        raise ProtocolError("resolve_links is not supported: chronik has no link events")
    strategy = _STRATEGIES.get(strategy_name)
    if strategy is None:
        raise ProtocolError(
            f"consumer strategy {strategy_name[:60]!r} is not supported (RoundRobin, "
            "DispatchToSingle or Pinned; see docs/kurrent-protocol.md)"
        )
    retries = int(settings.max_retry_count)
    if not 0 <= retries <= _MAX_INT:
        raise ProtocolError(f"max_retry_count must be 0 to {_MAX_INT}, got {retries}")
    timeout_ms = _millis(settings, "message_timeout")
    if not 1 <= timeout_ms <= 86_400_000:
        raise ProtocolError(f"message_timeout must be 1 ms to 1 day, got {timeout_ms} ms")
    extra: dict[str, Any] = {"strategy": strategy_name, "start_from": start}
    if event_filter:
        extra["filter"] = event_filter
    for key in _KEYS:
        value = int(getattr(settings, key))
        if not 0 <= value <= _MAX_INT:
            raise ProtocolError(f"{key} must be 0 to {_MAX_INT}, got {value}")
        extra[key] = value
    extra["checkpoint_after_ms"] = _millis(settings, "checkpoint_after")
    extra["extra_statistics"] = bool(settings.extra_statistics)
    try:
        return ConsumerGroup(
            store, name, strategy=strategy, max_retries=retries + 1,
            message_timeout=timeout_ms / 1000,
            stream_id=None if source == _ALL else to_chronik_stream(source),
            settings={"kurrent": extra},
        )  # fmt: skip
    except InvalidArgument as exc:
        raise ProtocolError(str(exc)) from exc


def _source_of_group(group: ConsumerGroup) -> str:
    return _ALL if group.stream_id is None else from_chronik_stream(group.stream_id)


class _Reader:
    """One open Read call: its member name and the messages it holds."""

    def __init__(self, group: str, peer: str) -> None:
        self.group = group
        self.member = f"kurrent-{uuid.uuid4()}"
        self.peer = peer
        self.held: dict[str, tuple[GroupMessage, float]] = {}
        self.delivered = 0


class PersistentService(persistent_pb2_grpc.PersistentSubscriptionsServicer):
    """The PersistentSubscriptions service over one store's consumer groups. Every refusal
    answers a typed status and leaves the groups as they were."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.readers: dict[str, list[_Reader]] = {}

    async def _guard(self, context: _Ctx, work: Callable[[], Any]) -> Any:
        """Run ``work`` and answer a typed status for each refusal."""
        try:
            return await work()
        except ProtocolError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.status), str(exc))
        except GroupNotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except GroupExists as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except MissingCapability as exc:
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"persistent subscriptions need a SQL store (SQLite or PostgreSQL): {exc}",
            )
        except StoreUnavailable as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except AccessDenied as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except ChronikError as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))

    async def _load(self, name: str, source: str) -> ConsumerGroup:
        group = await ConsumerGroup.load(self.store, _check_group_name(name))
        if _source_of_group(group) != source:
            raise GroupNotFound(f"{name} on {source}")
        return group

    async def _start(self, source: str, options: Any) -> tuple[int, str]:
        """``(start_after, start_from text)`` for a Create request's start option."""
        if source == _ALL:
            which = options.WhichOneof("all_option")
            if which == "position":
                position = int(options.position.commit_position)
                if position < 0:
                    raise ProtocolError(f"commit_position must be >= 0, got {position}")
                return max(0, position - 1), f"C:{position}/P:{position}"
            if which == "end":
                return await self.store.head_position(), "C:-1/P:-1"
            return 0, "C:0/P:0"
        which = options.WhichOneof("revision_option")
        if which == "end":
            return await self.store.head_position(), "-1"
        if which == "revision" and options.revision > 0:
            stream_id = to_chronik_stream(source)
            async for event in self.store.read_stream(
                stream_id, from_version=int(options.revision) - 1, limit=1
            ):
                return event.position, str(options.revision)
            return await self.store.head_position(), str(options.revision)
        return 0, "0"

    async def Create(
        self, request: persistent_pb2.CreateReq, context: _Ctx
    ) -> persistent_pb2.CreateResp:
        async def work() -> persistent_pb2.CreateResp:
            o = request.options
            start_options: Any
            event_filter: dict[str, Any] | None = None
            which = o.WhichOneof("stream_option")
            if which == "stream":
                source, start_options = (
                    _stream_name(o.stream.stream_identifier.stream_name),
                    o.stream,
                )
            elif which == "all":
                source, start_options = _ALL, o.all
                if o.all.WhichOneof("filter_option") == "filter":
                    event_filter = _filter_of(o.all.filter)
            elif o.stream_identifier.stream_name:  # the old form: a stream, settings.revision
                source, start_options = _stream_name(o.stream_identifier.stream_name), None
            else:
                raise ProtocolError("the request names neither a stream nor $all")
            if source == _ALL and which != "all":
                raise ProtocolError("'$all' is the global log: subscribe with the all option")
            name = _check_group_name(o.group_name)
            strategy = o.settings.consumer_strategy or _ENUM_NAMES.get(
                o.settings.named_consumer_strategy, str(o.settings.named_consumer_strategy)
            )
            if start_options is None:
                start_after, start = 0, "0"
                if o.settings.revision > 0:
                    raise ProtocolError("settings.revision is not supported: use stream.revision")
            else:
                start_after, start = await self._start(source, start_options)
            group = _group_of(name, source, o.settings, strategy, self.store, start, event_filter)
            await group.create(exist_ok=False, start_after=start_after)
            return persistent_pb2.CreateResp()

        return await self._guard(context, work)  # type: ignore[no-any-return]

    async def Update(
        self, request: persistent_pb2.UpdateReq, context: _Ctx
    ) -> persistent_pb2.UpdateResp:
        async def work() -> persistent_pb2.UpdateResp:
            o = request.options
            which = o.WhichOneof("stream_option")
            if which == "stream":
                source = _stream_name(o.stream.stream_identifier.stream_name)
            elif which == "all":
                source = _ALL
            else:
                source = _stream_name(o.stream_identifier.stream_name)
            old = await self._load(o.group_name, source)
            strategy = _ENUM_NAMES.get(
                o.settings.named_consumer_strategy, str(o.settings.named_consumer_strategy)
            )
            kept = old.settings.get("kurrent", {})
            start = str(kept.get("start_from", "C:0/P:0" if source == _ALL else "0"))
            group = _group_of(
                old.name, source, o.settings, strategy, self.store, start, kept.get("filter")
            )
            await group.update()
            return persistent_pb2.UpdateResp()

        return await self._guard(context, work)  # type: ignore[no-any-return]

    async def Delete(
        self, request: persistent_pb2.DeleteReq, context: _Ctx
    ) -> persistent_pb2.DeleteResp:
        async def work() -> persistent_pb2.DeleteResp:
            group = await self._load(request.options.group_name, _source_of(request.options))
            await group.delete()
            return persistent_pb2.DeleteResp()

        return await self._guard(context, work)  # type: ignore[no-any-return]

    async def ReplayParked(
        self, request: persistent_pb2.ReplayParkedReq, context: _Ctx
    ) -> persistent_pb2.ReplayParkedResp:
        async def work() -> persistent_pb2.ReplayParkedResp:
            o = request.options
            group = await self._load(o.group_name, _source_of(o))
            limit = None
            if o.WhichOneof("stop_at_option") == "stop_at":
                if o.stop_at < 0:
                    raise ProtocolError(f"stop_at must be >= 0, got {o.stop_at}")
                limit = int(o.stop_at)
            await group.replay_parked(limit=limit)
            return persistent_pb2.ReplayParkedResp()

        return await self._guard(context, work)  # type: ignore[no-any-return]

    async def RestartSubsystem(self, request: shared_pb2.Empty, context: _Ctx) -> shared_pb2.Empty:
        return shared_pb2.Empty()  # nothing to restart: every call reads the database

    async def GetInfo(
        self, request: persistent_pb2.GetInfoReq, context: _Ctx
    ) -> persistent_pb2.GetInfoResp:
        async def work() -> persistent_pb2.GetInfoResp:
            o = request.options
            group = await self._load(o.group_name, _source_of(o))
            return persistent_pb2.GetInfoResp(subscription_info=await self._info(group))

        return await self._guard(context, work)  # type: ignore[no-any-return]

    async def List(self, request: persistent_pb2.ListReq, context: _Ctx) -> persistent_pb2.ListResp:
        async def work() -> persistent_pb2.ListResp:
            o = request.options
            wanted: str | None = None
            if o.WhichOneof("list_option") == "list_for_stream":
                s = o.list_for_stream
                if s.WhichOneof("stream_option") == "all":
                    wanted = _ALL
                else:
                    wanted = _stream_name(s.stream.stream_name)
            answer = persistent_pb2.ListResp()
            for group in await ConsumerGroup.all(self.store):
                if wanted is None or _source_of_group(group) == wanted:
                    answer.subscriptions.append(await self._info(group))
            return answer

        return await self._guard(context, work)  # type: ignore[no-any-return]

    async def _info(self, group: ConsumerGroup) -> persistent_pb2.SubscriptionInfo:
        facts = await group.info()
        extra = group.settings.get("kurrent", {})
        readers = self.readers.get(group.name, [])
        default_strategy = "Pinned" if group.strategy == "pinned" else "RoundRobin"
        source = _source_of_group(group)
        here = f"C:{facts['position']}/P:{facts['position']}" if source == _ALL else ""
        info = persistent_pb2.SubscriptionInfo(
            event_source=_source_of_group(group),
            group_name=group.name,
            status="Live",
            total_items=sum(r.delivered for r in readers),
            last_known_event_position=here,
            last_checkpointed_event_position=here,
            resolve_link_tos=False,
            start_from=str(extra.get("start_from", "C:0/P:0" if source == _ALL else "0")),
            message_timeout_milliseconds=int(group.message_timeout * 1000),
            extra_statistics=bool(extra.get("extra_statistics", False)),
            max_retry_count=group.max_retries - 1,
            live_buffer_size=int(extra.get("live_buffer_size", 500)),
            buffer_size=int(extra.get("history_buffer_size", 500)),
            read_batch_size=int(extra.get("read_batch_size", 20)),
            check_point_after_milliseconds=int(extra.get("checkpoint_after_ms", 2000)),
            min_check_point_count=int(extra.get("min_checkpoint_count", 10)),
            max_check_point_count=int(extra.get("max_checkpoint_count", 1000)),
            total_in_flight_messages=facts["in_flight"],
            outstanding_messages_count=facts["pending"],
            named_consumer_strategy=str(extra.get("strategy", default_strategy)),
            max_subscriber_count=int(extra.get("max_subscriber_count", 0)),
            parked_message_count=facts["parked"],
        )
        for r in readers:
            info.connections.add(
                **{"from": r.peer},
                connection_name=r.member,
                total_items=r.delivered,
                in_flight_messages=len(r.held),
            )
        return info

    async def Read(
        self, request_iterator: AsyncIterator[persistent_pb2.ReadReq], context: _Ctx
    ) -> AsyncIterator[persistent_pb2.ReadResp]:
        first = await anext(aiter(request_iterator), None)
        opened: list[Any] = []

        async def work() -> None:
            if first is None or first.WhichOneof("content") != "options":
                raise ProtocolError("a Read call must begin with options")
            o = first.options
            source = _source_of(o)
            _may_read(source)  # decided from the request alone, before the group is looked up
            group = await self._load(o.group_name, source)
            if not 1 <= o.buffer_size <= 100_000:
                raise ProtocolError(f"buffer_size must be 1 to 100000, got {o.buffer_size}")
            limit = int(group.settings.get("kurrent", {}).get("max_subscriber_count", 0))
            if limit and len(self.readers.get(group.name, [])) >= limit:
                raise ProtocolError("Maximum subscriptions reached", "FAILED_PRECONDITION")
            opened.append(group)

        await self._guard(context, work)
        assert first is not None
        group: ConsumerGroup = opened[0]
        o = first.options
        structured = o.uuid_option.WhichOneof("content") == "structured"
        accept = _accepts(group.settings.get("kurrent", {}).get("filter"))
        reader = _Reader(group.name, context.peer())
        self.readers.setdefault(group.name, []).append(reader)
        wake = asyncio.Event()
        stop = asyncio.Event()
        errors: list[BaseException] = []
        acks = asyncio.create_task(self._take_acks(request_iterator, group, reader, wake, stop,
                                                   errors))  # fmt: skip
        try:
            yield persistent_pb2.ReadResp(
                subscription_confirmation=persistent_pb2.ReadResp.SubscriptionConfirmation(
                    subscription_id=f"{_source_of_group(group)}::{group.name}"
                )
            )
            while not stop.is_set():
                now = time.monotonic()
                for key, (_m, sent) in list(reader.held.items()):
                    if now - sent > group.message_timeout:
                        del reader.held[key]  # timed out: the group hands it out again
                room = o.buffer_size - len(reader.held)
                marker = self.store.change_marker()
                wake.clear()
                messages = await self._receive(group, reader, min(room, 500)) if room > 0 else []
                for m in messages:
                    if m.type == TOMBSTONE_TYPE or not accept(m):
                        await group.ack(m)  # filtered out: done at once
                        continue
                    reader.held[m.event_id] = (m, time.monotonic())
                    reader.delivered += 1
                    yield _persistent_event(m, structured)
                if messages and room > len(messages):
                    continue
                if errors:
                    break
                await _wait_any(marker, wake, stop, _POLL)
            if errors:
                error = errors[0]
                if isinstance(error, ProtocolError):
                    await context.abort(getattr(grpc.StatusCode, error.status), str(error))
                await self._guard(context, _raiser(error))
        finally:
            acks.cancel()
            with contextlib.suppress(BaseException):
                await acks
            self.readers[group.name].remove(reader)
            if not self.readers[group.name]:
                del self.readers[group.name]

    async def _receive(self, group: ConsumerGroup, reader: _Reader, n: int) -> list[GroupMessage]:
        try:
            return await group.receive(reader.member, limit=n)
        except StoreUnavailable:
            _log.warning("consumer group %r: store unavailable, retrying", group.name)
            return []

    async def _take_acks(
        self,
        requests: AsyncIterator[persistent_pb2.ReadReq],
        group: ConsumerGroup,
        reader: _Reader,
        wake: asyncio.Event,
        stop: asyncio.Event,
        errors: list[BaseException],
    ) -> None:
        """Apply the client's acks and nacks as they come; the end of its requests (or a
        ``Stop`` nack) ends the call."""
        try:
            async for request in requests:
                which = request.WhichOneof("content")
                if which == "ack":
                    found = _held(reader, request.ack.ids)
                    if found:
                        await group.ack(*found)
                elif which == "nack":
                    action = _NACKS.get(request.nack.action)
                    if action is None:
                        raise ProtocolError(f"unknown nack action {request.nack.action}")
                    reason = request.nack.reason[:1000]
                    for m in _held(reader, request.nack.ids):
                        await group.nack(m, action, reason=reason)  # type: ignore[arg-type]
                    if request.nack.action == 4:
                        stop.set()
                else:
                    raise ProtocolError("options may be sent once, at the start of a Read call")
                wake.set()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            errors.append(exc)
        finally:
            stop.set()


def _held(reader: _Reader, ids: Any) -> list[GroupMessage]:
    """The held messages that ``ids`` name (ids not held: acked already, or timed out and
    handed to another member; ignored, as KurrentDB does)."""
    found = []
    for value in ids:
        which = value.WhichOneof("value")
        if which == "string":
            key = value.string
        elif which == "structured":
            most = value.structured.most_significant_bits & 0xFFFF_FFFF_FFFF_FFFF
            least = value.structured.least_significant_bits & 0xFFFF_FFFF_FFFF_FFFF
            key = str(uuid.UUID(int=(most << 64) | least))
        else:
            continue
        got = reader.held.pop(key.lower(), None)
        if got is not None:
            found.append(got[0])
    return found


def _persistent_event(m: GroupMessage, structured: bool) -> persistent_pb2.ReadResp:
    event = read_event(m.to_event()).event.event
    recorded = persistent_pb2.ReadResp.ReadEvent.RecordedEvent()
    recorded.ParseFromString(event.SerializeToString())  # the same fields and numbers
    if structured:
        value = uuid.UUID(m.event_id).int
        recorded.id.CopyFrom(
            shared_pb2.UUID(
                structured=shared_pb2.UUID.Structured(
                    most_significant_bits=_signed(value >> 64),
                    least_significant_bits=_signed(value & 0xFFFF_FFFF_FFFF_FFFF),
                )
            )
        )
    return persistent_pb2.ReadResp(
        event=persistent_pb2.ReadResp.ReadEvent(
            event=recorded, commit_position=m.position, retry_count=max(0, m.attempts - 1)
        )
    )


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _raiser(error: BaseException) -> Callable[[], Any]:
    async def again() -> None:
        raise error

    return again


async def _wait_any(
    marker: asyncio.Event, wake: asyncio.Event, stop: asyncio.Event, timeout: float
) -> None:
    waiters = [asyncio.ensure_future(e.wait()) for e in (marker, wake, stop)]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


# under a policy: reading a group needs read on what it covers (checked above); managing
# groups and their parked messages, and listing them, is an operator's job
declare(
    "event_store.client.persistent_subscriptions.PersistentSubscriptions",
    {"Read": Rule.CHECKED, **{m: Rule.OPERATE for m in ("Create", "Update", "Delete",
     "ReplayParked", "RestartSubsystem", "GetInfo", "List")}},
)  # fmt: skip
