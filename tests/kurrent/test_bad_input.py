"""Hostile input over the wire: typed statuses, the server keeps serving, the store unchanged."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kurrentdbclient import NewEvent, StreamState
from kurrentdbclient.exceptions import KurrentDBClientError, MaximumAppendSizeExceededError
from kurrentdbclient.protos.v1 import shared_pb2, streams_pb2, streams_pb2_grpc

from tests.kurrent.conftest import ServerThread

TYPED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
}


def _head(kurrent: ServerThread) -> tuple[int, int]:
    stats = kurrent.call(kurrent.store.stats())
    return stats.events, stats.head_position


def _append_reqs(name: bytes, events: list[tuple[str, bytes, bytes]]) -> list[Any]:
    options = streams_pb2.AppendReq.Options(
        stream_identifier=shared_pb2.StreamIdentifier(stream_name=name), any=shared_pb2.Empty()
    )
    reqs = [streams_pb2.AppendReq(options=options)]
    for type_, data, meta in events:
        reqs.append(
            streams_pb2.AppendReq(
                proposed_message=streams_pb2.AppendReq.ProposedMessage(
                    id=shared_pb2.UUID(string=str(uuid.uuid4())),
                    metadata={"type": type_, "content-type": "application/json"},
                    custom_metadata=meta,
                    data=data,
                )
            )
        )
    return reqs


def _still_serves(client: Any) -> None:
    name = f"alive-{uuid.uuid4()}"
    client.append_to_stream(
        name, events=NewEvent(type="Ok", data=b"{}"), current_version=StreamState.NO_STREAM
    )
    assert [e.type for e in client.get_stream(name)] == ["Ok"]


@pytest.mark.feature("bad-input")
def test_invalid_utf8_stream_names_and_unknown_enums(kurrent: ServerThread, client: Any) -> None:
    before = _head(kurrent)
    with grpc.insecure_channel(kurrent.server.target) as channel:
        stub = streams_pb2_grpc.StreamsStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as caught:
            stub.Append(iter(_append_reqs(b"bad-\xff\xfe", [("T", b"{}", b"")])), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "UTF-8" in (caught.value.details() or "")
        read = streams_pb2.ReadReq(
            options=streams_pb2.ReadReq.Options(
                stream=streams_pb2.ReadReq.Options.StreamOptions(
                    stream_identifier=shared_pb2.StreamIdentifier(stream_name=b"x-1"),
                    start=shared_pb2.Empty(),
                ),
                read_direction=7,  # type: ignore[arg-type]  # an enum value the protocol lacks
                count=10,
                no_filter=shared_pb2.Empty(),
            )
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Read(read, timeout=10))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "read_direction 7" in (caught.value.details() or "")
        no_options = streams_pb2.ReadReq()
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Read(no_options, timeout=10))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad_regex = streams_pb2.ReadReq(
            options=streams_pb2.ReadReq.Options(
                all=streams_pb2.ReadReq.Options.AllOptions(start=shared_pb2.Empty()),
                count=10,
                filter=streams_pb2.ReadReq.Options.FilterOptions(
                    event_type=streams_pb2.ReadReq.Options.FilterOptions.Expression(regex="(("),
                    max=10,
                ),
            )
        )
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Read(bad_regex, timeout=10))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _head(kurrent) == before
    _still_serves(client)


@pytest.mark.feature("bad-input")
def test_oversized_messages_and_events(kurrent: ServerThread, client: Any) -> None:
    before = _head(kurrent)
    with pytest.raises(MaximumAppendSizeExceededError):
        client.append_to_stream(
            "big-1",
            events=[NewEvent(type="Big", data=b'{"x": "' + b"a" * (2 * 1024 * 1024) + b'"}')] * 2,
            current_version=StreamState.ANY,
        )
    with pytest.raises(KurrentDBClientError):
        client.append_to_stream(
            "big-1",
            events=NewEvent(type="Huge", data=b"a" * (18 * 1024 * 1024)),
            current_version=StreamState.ANY,
        )
    with pytest.raises(KurrentDBClientError):
        client.append_to_stream(
            "big-1", events=NewEvent(type="", data=b"{}"), current_version=StreamState.ANY
        )
    assert _head(kurrent) == before
    _still_serves(client)


@pytest.mark.feature("bad-input")
def test_client_leaving_mid_stream(kurrent: ServerThread, client: Any) -> None:
    before = _head(kurrent)
    with grpc.insecure_channel(kurrent.server.target) as channel:
        stub = streams_pb2_grpc.StreamsStub(channel)  # type: ignore[no-untyped-call]
        gate = threading.Event()
        reqs = _append_reqs(b"half-1", [("T", b"{}", b"")] * 3)

        def slow() -> Any:
            yield reqs[0]
            yield reqs[1]
            gate.wait(10)  # the call is cancelled before the rest is sent

        future = stub.Append.future(slow(), timeout=30)
        future.cancel()
        gate.set()
        assert future.cancelled()
        sub = client.subscribe_to_all()
        sub.stop()  # a live subscription dropped by its client
    assert _head(kurrent) == before
    _still_serves(client)


@st.composite
def _hostile_event(draw: st.DrawFn) -> tuple[bytes, str, bytes, bytes]:
    name = draw(
        st.one_of(
            st.binary(max_size=40),
            st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
        )
    )
    type_ = draw(st.text(max_size=20))
    data = draw(st.one_of(st.binary(max_size=60), st.just(b'{"a": NaN}'), st.just(b'{"a": 1e999}')))
    meta = draw(
        st.one_of(
            st.binary(max_size=30), st.just(b'{"correlation_id": 5}'), st.just(b'{"a": "\\u0000"}')
        )
    )
    return name, type_, data, meta


@pytest.mark.feature("bad-input")
@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
def test_hostile_appends_round_trip_or_refuse_typed(kurrent: ServerThread) -> None:
    channel = grpc.insecure_channel(kurrent.server.target)
    stub = streams_pb2_grpc.StreamsStub(channel)  # type: ignore[no-untyped-call]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(_hostile_event())
    def check(case: tuple[bytes, str, bytes, bytes]) -> None:
        name, type_, data, meta = case
        before = _head(kurrent)
        try:
            answer = stub.Append(iter(_append_reqs(name, [(type_, data, meta)])), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() in TYPED, (exc.code(), exc.details())
            assert _head(kurrent) == before
            return
        assert answer.WhichOneof("result") == "success"
        read = streams_pb2.ReadReq(
            options=streams_pb2.ReadReq.Options(
                stream=streams_pb2.ReadReq.Options.StreamOptions(
                    stream_identifier=shared_pb2.StreamIdentifier(stream_name=name),
                    end=shared_pb2.Empty(),
                ),
                read_direction=streams_pb2.ReadReq.Options.Backwards,
                count=1,
                no_filter=shared_pb2.Empty(),
                uuid_option=streams_pb2.ReadReq.Options.UUIDOption(string=shared_pb2.Empty()),
            )
        )
        (got,) = list(stub.Read(read, timeout=10))
        assert got.event.event.data == data
        assert got.event.event.custom_metadata == meta
        assert got.event.event.metadata["type"] == type_
        assert got.event.event.stream_identifier.stream_name == name

    try:
        check()
    finally:
        channel.close()


@pytest.mark.feature("bad-input")
@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
def test_reads_cancelled_after_every_message_leave_the_server_serving(
    kurrent: ServerThread, client: Any
) -> None:
    client.append_to_stream(
        "c-1",
        events=[NewEvent(type=str(i), data=b"{}") for i in range(6)],
        current_version=StreamState.NO_STREAM,
    )
    for k in range(7):  # cancel after k messages: in catch-up, and live (after all 6)
        for sub in (
            client.subscribe_to_all(),
            client.subscribe_to_stream("c-1"),
            client.read_all(),
        ):
            for _, _item in zip(range(k), sub, strict=False):
                pass
            sub.stop()
    assert [e.type for e in client.get_stream("c-1")] == [str(i) for i in range(6)]
    _still_serves(client)


@pytest.mark.feature("tombstone")
@pytest.mark.parametrize("backend_url", ["sqlite"], indirect=True)
def test_a_live_stream_subscription_ends_when_the_stream_is_tombstoned(client: Any) -> None:
    from kurrentdbclient.events import CaughtUp
    from kurrentdbclient.exceptions import StreamIsDeletedError

    client.append_to_stream(
        "tomb-1", events=NewEvent(type="A", data=b"{}"), current_version=StreamState.NO_STREAM
    )
    sub = client.subscribe_to_stream("tomb-1", include_caught_up=True)
    assert next(iter(sub)).type == "A"
    assert isinstance(next(iter(sub)), CaughtUp)
    client.tombstone_stream("tomb-1", current_version=0)
    with pytest.raises(StreamIsDeletedError):
        next(iter(sub))
