"""The ``event_store.client.streams.Streams`` gRPC service over a chronik store.

Append, BatchAppend, Read (one stream or ``$all``, both directions, filters, catch-up
subscriptions), Delete and Tombstone. Every request is authorised from the stream it names
before the store is asked (:func:`chronik.kurrent.auth.authorize`); ``$all`` reads and
subscriptions show only the events the caller may read (:func:`chronik.kurrent.auth.visible`).
Messages come from the generated classes that ship in the BSD-licensed ``kurrentdbclient``
wheel; the semantics live in :mod:`chronik.kurrent.log`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2, timestamp_pb2
from kurrentdbclient.protos.v1 import shared_pb2, status_pb2, streams_pb2, streams_pb2_grpc

from chronik.errors import (
    AccessDenied,
    AuthenticationFailed,
    ChronikError,
    DuplicateEventId,
    InvalidEvent,
    PayloadTooLarge,
    RateLimited,
    StoreUnavailable,
)
from chronik.events import ANY, NO_STREAM, STREAM_EXISTS, AppendResult, RecordedEvent
from chronik.kurrent.auth import authorize, refuse, visible
from chronik.kurrent.log import KurrentLog, StreamDeleted, Visibility, WrongExpectedVersion
from chronik.kurrent.mapping import (
    TOMBSTONE_TYPE,
    ProtocolError,
    created_ticks,
    decode_name,
    event_parts,
    expected_of,
    from_chronik_stream,
    parse_uuid,
    to_chronik_stream,
    to_new_event,
)
from chronik.security import Operation

__all__ = ["StreamsService"]

_Ctx = grpc.aio.ServicerContext[Any, Any]
_MAX_EVENTS_PER_APPEND = 100_000
_LIVE_POLL = 0.5
"""Seconds a live subscription waits for a change signal before it looks again (PostgreSQL
does not signal the end of an older transaction that held newer ones back)."""

ReadReqOptions = streams_pb2.ReadReq.Options


def _status(name: str) -> grpc.StatusCode:
    return getattr(grpc.StatusCode, name)  # type: ignore[no-any-return]


def _wev_details(stream: str, expected: int, actual: int | None) -> str:
    # the text KurrentDB sends and kurrentdbclient parses for Delete and Tombstone
    return (
        f"WrongExpectedVersion. Stream: {stream}, Expected version: {int(expected)}, "
        f"Actual version: {-1 if actual is None else actual}"
    )


def _empty() -> shared_pb2.Empty:
    return shared_pb2.Empty()


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def read_event(event: RecordedEvent) -> streams_pb2.ReadResp:
    """One stored event as the protocol's ``ReadResp.ReadEvent``."""
    content_type, data, custom = event_parts(event)
    recorded = streams_pb2.ReadResp.ReadEvent.RecordedEvent(
        id=shared_pb2.UUID(string=str(event.event_id)),
        stream_identifier=shared_pb2.StreamIdentifier(
            stream_name=from_chronik_stream(event.stream_id).encode("utf-8")
        ),
        stream_revision=event.version,
        prepare_position=event.position,
        commit_position=event.position,
        metadata={
            "type": event.type,
            "content-type": content_type,
            "created": created_ticks(event.recorded_at),
        },
        custom_metadata=custom,
        data=data,
    )
    return streams_pb2.ReadResp(
        event=streams_pb2.ReadResp.ReadEvent(event=recorded, commit_position=event.position)
    )


class _Filter:
    """A ``$all`` filter: a regex or prefixes, on the stream name or the event type."""

    def __init__(self, options: ReadReqOptions) -> None:
        self.active = options.WhichOneof("filter_option") == "filter"
        self.window = 0
        self.on_stream = False
        self.regex: re.Pattern[str] | None = None
        self.prefixes: tuple[str, ...] = ()
        if not self.active:
            return
        f = options.filter
        which = f.WhichOneof("filter")
        if which is None:
            raise ProtocolError("a filter names neither stream_identifier nor event_type")
        self.on_stream = which == "stream_identifier"
        expression = f.stream_identifier if self.on_stream else f.event_type
        if expression.regex:
            try:
                self.regex = re.compile(expression.regex)
            except re.error as exc:
                raise ProtocolError(f"filter regex {expression.regex[:80]!r}: {exc}") from exc
        self.prefixes = tuple(expression.prefix)
        window = f.max if f.WhichOneof("window") == "max" else 0
        multiplier = f.checkpointIntervalMultiplier or 1
        self.window = max(1, window or 32) * max(1, multiplier)

    def __call__(self, event: RecordedEvent) -> bool:
        if not self.active:
            return True
        text = from_chronik_stream(event.stream_id) if self.on_stream else event.type
        if self.prefixes and not text.startswith(self.prefixes):
            return False
        return not (self.regex is not None and self.regex.search(text) is None)


class StreamsService(streams_pb2_grpc.StreamsServicer):
    """The Streams service. Every refusal answers a typed status and leaves the store as it
    was; an unexpected error is answered ``INTERNAL`` and the server keeps serving."""

    def __init__(self, log: KurrentLog) -> None:
        self.log = log

    # -- appends ---------------------------------------------------------------------------

    async def _append(
        self, name: str, expected: int, proposed: Sequence[Proposed]
    ) -> AppendResult | WrongExpectedVersion | StreamDeleted:
        if len(proposed) > _MAX_EVENTS_PER_APPEND:
            raise ProtocolError(f"{len(proposed)} events in one append; at most 100,000")
        stream_id = to_chronik_stream(name)
        authorize(Operation.APPEND, stream_id)
        opaque: set[int] = set()
        while True:
            events = [to_new_event(*p, opaque=i in opaque) for i, p in enumerate(proposed)]
            try:
                return await self.log.append(stream_id, events, expected)
            except (WrongExpectedVersion, StreamDeleted) as exc:
                return exc
            except InvalidEvent as exc:
                # JSON chronik does not keep as is (too deep, numbers out of range): the
                # event's bytes are kept base64-encoded instead, as any other bytes
                if not exc.field.startswith(("data", "metadata")) or exc.index in opaque:
                    raise
                opaque.add(exc.index)

    async def Append(
        self, request_iterator: AsyncIterator[streams_pb2.AppendReq], context: _Ctx
    ) -> streams_pb2.AppendResp:
        try:
            options: Any = None
            events: list[Proposed] = []
            async for request in request_iterator:
                which = request.WhichOneof("content")
                if which == "options":
                    if options is not None:
                        raise ProtocolError("Append sent its options twice")
                    options = request.options
                elif which == "proposed_message":
                    if options is None:
                        raise ProtocolError("Append sent an event before its options")
                    events.append(_proposed(request.proposed_message))
                else:
                    raise ProtocolError("an AppendReq carries neither options nor an event")
            if options is None:
                raise ProtocolError("Append sent no options")
            name = decode_name(options.stream_identifier.stream_name)
            expected = expected_of(options.WhichOneof("expected_stream_revision"), options.revision)
            result = await self._append(name, expected, events)
        except Exception as exc:
            await _abort(context, exc)
            raise  # pragma: no cover - abort raises
        if isinstance(result, StreamDeleted):
            await context.abort(
                _status("FAILED_PRECONDITION"), f"Event stream '{name}' is deleted."
            )
        if isinstance(result, WrongExpectedVersion):
            wev = streams_pb2.AppendResp.WrongExpectedVersion()
            if result.actual is None:
                wev.current_no_stream.CopyFrom(_empty())
                wev.no_stream_20_6_0.CopyFrom(_empty())
            else:
                wev.current_revision = result.actual
                wev.current_revision_20_6_0 = result.actual
            _set_expected(wev, expected)
            return streams_pb2.AppendResp(wrong_expected_version=wev)
        if result.version < 0:  # nothing appended to a stream that does not exist
            success = streams_pb2.AppendResp.Success()
            success.no_stream.SetInParent()
            success.no_position.SetInParent()
            return streams_pb2.AppendResp(success=success)
        success = streams_pb2.AppendResp.Success(
            current_revision=result.version,
            position=streams_pb2.AppendResp.Position(
                commit_position=result.position, prepare_position=result.position
            ),
        )
        return streams_pb2.AppendResp(success=success)

    async def BatchAppend(
        self, request_iterator: AsyncIterator[streams_pb2.BatchAppendReq], context: _Ctx
    ) -> AsyncIterator[streams_pb2.BatchAppendResp]:
        try:
            async for response in self._batches(request_iterator):
                yield response
        except Exception as exc:  # the store went away: the call ends
            await _abort(context, exc)

    async def _batches(
        self, request_iterator: AsyncIterator[streams_pb2.BatchAppendReq]
    ) -> AsyncIterator[streams_pb2.BatchAppendResp]:
        pending: dict[bytes, tuple[Any, list[Proposed]]] = {}
        async for request in request_iterator:
            key = request.correlation_id.SerializeToString()
            if request.HasField("options"):
                pending[key] = (request.options, [])
            if key not in pending:
                yield _batch_error(request, "BatchAppend sent events before their options")
                continue
            options, events = pending[key]
            try:
                events.extend(_proposed(message) for message in request.proposed_messages)
            except ProtocolError as exc:
                del pending[key]
                yield _batch_error(request, str(exc))
                continue
            if not request.is_final:
                continue
            del pending[key]
            yield await self._batch_result(request, options, events)

    async def _batch_result(
        self, request: streams_pb2.BatchAppendReq, options: Any, events: list[Proposed]
    ) -> streams_pb2.BatchAppendResp:
        which = options.WhichOneof("expected_stream_position")
        try:
            name = decode_name(options.stream_identifier.stream_name)
            expected = expected_of(which, options.stream_position)
            result = await self._append(name, expected, events)
        except ProtocolError as exc:
            return _batch_error(request, str(exc))
        except AccessDenied as exc:
            return _batch_status(request, "PERMISSION_DENIED", str(exc), shared_pb2.AccessDenied())
        except PayloadTooLarge as exc:
            return _batch_status(
                request,
                "INVALID_ARGUMENT",
                str(exc),
                shared_pb2.MaximumAppendSizeExceeded(maxAppendSize=min(exc.limit, 2**32 - 1)),
            )
        except StoreUnavailable:
            raise  # ends the call with UNAVAILABLE: the outcome of this batch is unknown
        except (ChronikError, ValueError) as exc:
            return _batch_error(request, f"{type(exc).__name__}: {exc}")
        response = streams_pb2.BatchAppendResp(
            correlation_id=request.correlation_id, stream_identifier=options.stream_identifier
        )
        if isinstance(result, StreamDeleted):
            return _batch_status(
                request,
                "FAILED_PRECONDITION",
                f"Event stream '{name}' is deleted.",
                shared_pb2.StreamDeleted(stream_identifier=options.stream_identifier),
            )
        if isinstance(result, WrongExpectedVersion):
            detail = shared_pb2.WrongExpectedVersion()
            if result.actual is None:
                detail.current_no_stream.SetInParent()
            else:
                detail.current_stream_revision = result.actual
            return _batch_status(request, "FAILED_PRECONDITION", "WrongExpectedVersion", detail)
        if result.version < 0:  # nothing appended to a stream that does not exist
            response.success.no_stream.SetInParent()
            response.success.no_position.SetInParent()
            return response
        response.success.current_revision = result.version
        response.success.position.commit_position = result.position
        response.success.position.prepare_position = result.position
        return response

    # -- deletes ---------------------------------------------------------------------------

    async def Delete(self, request: streams_pb2.DeleteReq, context: _Ctx) -> streams_pb2.DeleteResp:
        options = request.options
        try:
            name = decode_name(options.stream_identifier.stream_name)
            expected = expected_of(options.WhichOneof("expected_stream_revision"), options.revision)
            stream_id = to_chronik_stream(name)
            authorize(Operation.DELETE, stream_id)
            position = await self.log.delete(stream_id, expected)
        except Exception as exc:
            await _abort(context, exc)
            raise  # pragma: no cover
        return streams_pb2.DeleteResp(
            position=streams_pb2.DeleteResp.Position(
                commit_position=position, prepare_position=position
            )
        )

    async def Tombstone(
        self, request: streams_pb2.TombstoneReq, context: _Ctx
    ) -> streams_pb2.TombstoneResp:
        options = request.options
        try:
            name = decode_name(options.stream_identifier.stream_name)
            expected = expected_of(options.WhichOneof("expected_stream_revision"), options.revision)
            stream_id = to_chronik_stream(name)
            authorize(Operation.DELETE, stream_id)
            position = await self.log.tombstone(stream_id, expected)
        except Exception as exc:
            await _abort(context, exc)
            raise  # pragma: no cover
        return streams_pb2.TombstoneResp(
            position=streams_pb2.TombstoneResp.Position(
                commit_position=position, prepare_position=position
            )
        )

    # -- reads -----------------------------------------------------------------------------

    async def Read(
        self, request: streams_pb2.ReadReq, context: _Ctx
    ) -> AsyncIterator[streams_pb2.ReadResp]:
        try:
            options = request.options
            if options.read_direction not in (ReadReqOptions.Forwards, ReadReqOptions.Backwards):
                raise ProtocolError(f"read_direction {options.read_direction} is not a direction")
            backwards = options.read_direction == ReadReqOptions.Backwards
            subscribe = options.WhichOneof("count_option") == "subscription"
            which = options.WhichOneof("stream_option")
            if which == "stream":
                name = decode_name(options.stream.stream_identifier.stream_name)
                stream_id = to_chronik_stream(name)
                authorize(Operation.READ, stream_id)
                if subscribe:
                    source = self._subscribe_stream(stream_id, options.stream)
                else:
                    source = self._read_stream(name, stream_id, options, backwards)
            elif which == "all":
                accept = _Filter(options)
                shown = visible()  # the caller's categories only, whatever it asks
                if subscribe:
                    source = self._subscribe_all(options.all, accept, shown)
                else:

                    def both(event: RecordedEvent) -> bool:
                        return shown(event) and accept(event)

                    source = self._read_all(options, backwards, both)
            else:
                raise ProtocolError("a ReadReq names neither a stream nor $all")
            structured = options.uuid_option.WhichOneof("content") == "structured"
            async for response in source:
                if structured and response.WhichOneof("content") == "event":
                    _structure(response.event.event.id)
                yield response
        except Exception as exc:
            await _abort(context, exc)

    async def _read_stream(
        self, name: str, stream_id: str, options: ReadReqOptions, backwards: bool
    ) -> AsyncIterator[streams_pb2.ReadResp]:
        vis = await self.log.visibility(stream_id)
        if vis.tombstoned:
            raise StreamDeleted(name)
        if vis.empty:
            yield streams_pb2.ReadResp(
                stream_not_found=streams_pb2.ReadResp.StreamNotFound(
                    stream_identifier=options.stream.stream_identifier
                )
            )
            return
        revision = options.stream.WhichOneof("revision_option")
        start: int | None = None
        if revision == "revision":
            start = min(options.stream.revision, 2**31)
        elif revision == "end" and not backwards:
            return
        count = min(options.count, 2**62)
        async for event in self.log.read_stream(
            stream_id, vis, start=start, backwards=backwards, count=count
        ):
            yield read_event(event)

    async def _read_all(
        self, options: ReadReqOptions, backwards: bool, accept: Callable[[RecordedEvent], bool]
    ) -> AsyncIterator[streams_pb2.ReadResp]:
        which = options.all.WhichOneof("all_option")
        count = min(options.count, 2**62)
        position = options.all.position.commit_position if which == "position" else None
        if backwards:
            before = None if which != "position" else position
            source = self.log.read_all_backwards(before, count, accept)
        else:
            if which == "end":
                return
            after = 0 if position is None else max(position - 1, 0)
            source = self.log.read_all_forwards(after, count, accept)
        async for event in source:
            yield read_event(event)

    async def _subscribe_stream(
        self, stream_id: str, stream_options: Any
    ) -> AsyncIterator[streams_pb2.ReadResp]:
        yield _confirmation()
        which = stream_options.WhichOneof("revision_option")
        store = self.log.store
        if which == "revision":
            next_version = stream_options.revision + 1
        elif which == "end":
            last = await self.log.last_event(stream_id)
            next_version = 0 if last is None else last.version + 1
        else:
            next_version = 0
        caught_up = False
        while True:
            marker = store.change_marker()
            got = 0
            async for event in self.log.read_stream(
                stream_id,
                await _whole(self.log, stream_id),
                start=next_version,
                backwards=False,
                count=500,
            ):
                got += 1
                next_version = event.version + 1
                yield read_event(event)
            last = await self.log.last_event(stream_id)
            if last is not None and last.type == TOMBSTONE_TYPE and last.version >= next_version:
                raise StreamDeleted(from_chronik_stream(stream_id))
            if got >= 500:
                continue
            if not caught_up:
                caught_up = True
                message = streams_pb2.ReadResp.CaughtUp(timestamp=_now())
                if next_version > 0:
                    message.stream_revision = next_version - 1
                yield streams_pb2.ReadResp(caught_up=message)
            await self.log.wait(marker, _LIVE_POLL)

    async def _subscribe_all(
        self, all_options: Any, accept: _Filter, shown: Callable[[RecordedEvent], bool]
    ) -> AsyncIterator[streams_pb2.ReadResp]:
        yield _confirmation()
        store = self.log.store
        which = all_options.WhichOneof("all_option")
        if which == "position":
            after = all_options.position.commit_position
        elif which == "end":
            after = await self.log.settled_head()
        else:
            after = 0
        scanned = 0
        caught_up = False
        while True:
            marker = store.change_marker()
            events, upto, more = await store.read_page(after=after, limit=500)
            for event in events:
                scanned += 1
                if shown(event) and accept(event):
                    yield read_event(event)
                if accept.active and scanned >= accept.window:
                    scanned = 0
                    yield _checkpoint(event.position)
            moved = upto > after
            after = max(after, upto)
            if more:
                if not events and not moved:
                    await self.log.wait(marker, 0.05)
                continue
            if accept.active and scanned and moved:
                scanned = 0
                yield _checkpoint(after)
            if not caught_up:
                caught_up = True
                yield streams_pb2.ReadResp(
                    caught_up=streams_pb2.ReadResp.CaughtUp(
                        timestamp=_now(),
                        position=streams_pb2.ReadResp.Position(
                            commit_position=after, prepare_position=after
                        ),
                    )
                )
            await self.log.wait(marker, _LIVE_POLL)


async def _whole(log: KurrentLog, stream_id: str) -> Visibility:
    """Every event of the stream, for a subscription (metadata does not hide live events)."""
    last = await log.last_event(stream_id)
    return Visibility(None if last is None else last.version, 0, None, False)


Proposed = tuple[uuid.UUID, dict[str, str], bytes, bytes]
"""A proposed message as sent: id, properties (type, content-type), custom metadata, data."""


def _proposed(message: Any) -> Proposed:
    return (parse_uuid(message.id), dict(message.metadata), message.custom_metadata, message.data)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _structure(message: shared_pb2.UUID) -> None:
    """Turn a ``UUID`` message from its string form into the structured form (two signed
    64-bit halves), which the .NET and Java clients ask for."""
    value = uuid.UUID(message.string).int
    message.structured.most_significant_bits = _signed(value >> 64)
    message.structured.least_significant_bits = _signed(value & 0xFFFF_FFFF_FFFF_FFFF)


def _confirmation() -> streams_pb2.ReadResp:
    return streams_pb2.ReadResp(
        confirmation=streams_pb2.ReadResp.SubscriptionConfirmation(
            subscription_id=str(uuid.uuid4())
        )
    )


def _checkpoint(position: int) -> streams_pb2.ReadResp:
    return streams_pb2.ReadResp(
        checkpoint=streams_pb2.ReadResp.Checkpoint(
            commit_position=position, prepare_position=position, timestamp=_now()
        )
    )


def _set_expected(wev: Any, expected: int) -> None:
    if expected == ANY:
        wev.expected_any.CopyFrom(_empty())
        wev.any_20_6_0.CopyFrom(_empty())
    elif expected == NO_STREAM:
        wev.expected_no_stream.CopyFrom(_empty())
    elif expected == STREAM_EXISTS:
        wev.expected_stream_exists.CopyFrom(_empty())
        wev.stream_exists_20_6_0.CopyFrom(_empty())
    else:
        wev.expected_revision = expected
        wev.expected_revision_20_6_0 = expected


def _batch_status(
    request: streams_pb2.BatchAppendReq, code: str, message: str, detail: Any
) -> streams_pb2.BatchAppendResp:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return streams_pb2.BatchAppendResp(
        correlation_id=request.correlation_id,
        error=status_pb2.Status(code=_status(code).value[0], message=message, details=packed),  # type: ignore[arg-type]
    )


def _batch_error(request: streams_pb2.BatchAppendReq, message: str) -> streams_pb2.BatchAppendResp:
    return _batch_status(
        request, "INVALID_ARGUMENT", message, shared_pb2.BadRequest(message=message)
    )


async def _abort(context: _Ctx, exc: BaseException) -> None:
    """Answer an error as the protocol's status (``context.abort`` raises)."""
    if isinstance(exc, grpc.aio.AbortError | GeneratorExit):
        raise exc
    if isinstance(exc, ProtocolError):
        await context.abort(_status(exc.status), str(exc))
    if isinstance(exc, AccessDenied | AuthenticationFailed | RateLimited):
        await refuse(context, exc)
    if isinstance(exc, StreamDeleted):
        name = from_chronik_stream(exc.stream_id)
        await context.abort(_status("FAILED_PRECONDITION"), f"Event stream '{name}' is deleted.")
    if isinstance(exc, WrongExpectedVersion):
        await context.abort(
            _status("FAILED_PRECONDITION"),
            _wev_details(from_chronik_stream(exc.stream_id), exc.expected, exc.actual),
        )
    if isinstance(exc, StoreUnavailable):
        await context.abort(_status("UNAVAILABLE"), f"the store is unavailable: {exc}")
    if isinstance(exc, DuplicateEventId):
        await context.abort(_status("ALREADY_EXISTS"), str(exc))
    if isinstance(exc, ChronikError | ValueError):
        await context.abort(_status("INVALID_ARGUMENT"), f"{type(exc).__name__}: {exc}")
    await context.abort(_status("INTERNAL"), f"{type(exc).__name__}: {exc}")
