"""KurrentDB persistent subscriptions on chronik's consumer groups, through the real
``kurrentdbclient`` (sync and asyncio): create, read with acks, nack park / retry / skip,
retry limit -> parked, replay parked, update, delete, list, info; a client leaving with
messages in flight loses none; hostile requests answer INVALID_ARGUMENT, never INTERNAL."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import grpc
import pytest
from kurrentdbclient import AsyncKurrentDBClient, KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.exceptions import AlreadyExistsError, NotFoundError
from kurrentdbclient.protos.v1 import persistent_pb2, persistent_pb2_grpc, shared_pb2

from tests.kurrent.conftest import ServerThread

pytestmark = pytest.mark.feature("persistent-subscriptions")


def _append(client: Any, stream: str, n: int, *, kind: str = "Happened") -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    client.append_to_stream(
        stream,
        events=[
            NewEvent(type=kind, data=json.dumps({"i": i}).encode(), id=ids[i]) for i in range(n)
        ],
        current_version=StreamState.ANY,
    )
    return ids


def _take(sub: Any, n: int, *, ack: bool = True) -> list[Any]:
    got = []
    for event in sub:
        got.append(event)
        if ack:
            sub.ack(event)
        if len(got) == n:
            break
    return got


def test_create_read_ack_list_info_update_delete(client: KurrentDBClient) -> None:
    ids = _append(client, "order-1", 3) + _append(client, "order-2", 2)
    client.create_subscription_to_all("g1", consumer_strategy="RoundRobin", max_retry_count=3)
    with pytest.raises(AlreadyExistsError):
        client.create_subscription_to_all("g1")
    sub = client.read_subscription_to_all("g1")
    got = _take(sub, 5)
    assert sorted(e.id for e in got) == sorted(ids)
    assert {e.retry_count for e in got} == {0}
    assert [e.data for e in got if e.stream_name == "order-1"] == [
        json.dumps({"i": i}).encode() for i in range(3)
    ]
    sub.stop()
    deadline = time.monotonic() + 10
    while client.get_subscription_info("g1").total_in_flight_messages and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)  # the client sends acks in batches
    info = client.get_subscription_info("g1")
    assert (info.group_name, info.event_source, info.consumer_strategy) == (
        "g1", "$all", "RoundRobin",
    )  # fmt: skip
    assert (info.max_retry_count, info.parked_message_count, info.total_in_flight_messages) == (
        3, 0, 0,
    )  # fmt: skip
    client.create_subscription_to_stream("g2", "order-1", consumer_strategy="Pinned")
    assert sorted((i.group_name, i.event_source) for i in client.list_subscriptions()) == [
        ("g1", "$all"), ("g2", "order-1"),
    ]  # fmt: skip
    assert [i.group_name for i in client.list_subscriptions_to_stream("order-1")] == ["g2"]
    client.update_subscription_to_all("g1", message_timeout=5.0, max_retry_count=7)
    info = client.get_subscription_info("g1")
    assert (info.message_timeout, info.max_retry_count) == (5.0, 7)
    with pytest.raises(NotFoundError):
        client.update_subscription_to_all("nope")
    with pytest.raises(NotFoundError):
        client.get_subscription_info("g2")  # g2 covers order-1, not $all
    client.delete_subscription("g1")
    with pytest.raises(NotFoundError):
        client.get_subscription_info("g1")
    with pytest.raises(NotFoundError):
        client.delete_subscription("g1")
    assert [i.group_name for i in client.list_subscriptions()] == ["g2"]


def test_a_stream_subscription_gets_only_its_stream_in_order(client: KurrentDBClient) -> None:
    _append(client, "acct-1", 2)
    _append(client, "acct-2", 2)
    client.create_subscription_to_stream("s", "acct-1", consumer_strategy="Pinned")
    later = _append(client, "acct-1", 2)
    sub = client.read_subscription_to_stream("s", "acct-1")
    got = _take(sub, 4)
    assert [(e.stream_name, e.stream_position) for e in got] == [("acct-1", v) for v in range(4)]
    assert [e.id for e in got[2:]] == later
    sub.stop()
    client.create_subscription_to_stream("s-end", "acct-1", from_end=True)
    client.create_subscription_to_stream("s-rev", "acct-1", stream_position=3)
    tail = _append(client, "acct-1", 1)
    sub = client.read_subscription_to_stream("s-end", "acct-1")
    assert [e.id for e in _take(sub, 1)] == tail
    sub.stop()
    sub = client.read_subscription_to_stream("s-rev", "acct-1")
    assert [e.stream_position for e in _take(sub, 2)] == [3, 4]
    sub.stop()


def test_nack_park_retry_skip_retry_limit_and_replay(client: KurrentDBClient) -> None:
    ids = _append(client, "job-1", 4)
    client.create_subscription_to_stream(
        "jobs", "job-1", consumer_strategy="RoundRobin", max_retry_count=1
    )
    sub = client.read_subscription_to_stream("jobs", "job-1")
    first = {e.id: e for e in _take(sub, 4, ack=False)}
    assert set(first) == set(ids)
    sub.nack(first[ids[0]], "park")
    sub.nack(first[ids[1]], "skip")
    sub.nack(first[ids[2]], "retry")
    sub.ack(first[ids[3]])
    (again,) = _take(sub, 1, ack=False)
    assert (again.id, again.retry_count) == (ids[2], 1)
    sub.nack(again, "retry")  # past max_retry_count 1: parked
    sub.stop()
    deadline = time.monotonic() + 10
    while client.get_subscription_info("jobs", "job-1").parked_message_count < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    info = client.get_subscription_info("jobs", "job-1")
    assert (info.parked_message_count, info.total_in_flight_messages) == (2, 0)
    client.replay_parked_events("jobs", "job-1")
    sub = client.read_subscription_to_stream("jobs", "job-1")
    replayed = _take(sub, 2)
    assert sorted(e.id for e in replayed) == sorted([ids[0], ids[2]])
    assert {e.retry_count for e in replayed} == {0}
    sub.stop()


def test_a_client_leaving_mid_stream_loses_nothing(client: KurrentDBClient) -> None:
    ids = _append(client, "mail-1", 5)
    client.create_subscription_to_all("mail", message_timeout=1.0)
    sub = client.read_subscription_to_all("mail")
    held = _take(sub, 3, ack=False)  # received, never acked: the client goes away
    sub.stop()
    sub = client.read_subscription_to_all("mail")
    got = _take(sub, 5)
    sub.stop()
    assert sorted(e.id for e in got) == sorted(ids)
    again = {e.id: e.retry_count for e in got}
    assert {again[e.id] for e in held} == {1}  # handed out again after the message timeout


async def test_asyncio_client(kurrent: ServerThread) -> None:
    client = AsyncKurrentDBClient(kurrent.uri)
    await client.connect()
    try:
        await client.append_to_stream(
            "pay-1", events=[NewEvent(type="Paid", data=b"{}") for _ in range(3)],
            current_version=StreamState.ANY,
        )  # fmt: skip
        await client.create_subscription_to_all("ag", consumer_strategy="Pinned")
        sub = await client.read_subscription_to_all("ag")
        seen = []
        async for event in sub:
            seen.append(event.stream_position)
            await sub.ack(event)
            if len(seen) == 3:
                break
        await sub.stop()
        assert seen == [0, 1, 2]
        infos = await client.list_subscriptions()
        assert [i.group_name for i in infos] == ["ag"]
        await client.delete_subscription("ag")
        assert await client.list_subscriptions() == []
    finally:
        await client.close()


def _stub(kurrent: ServerThread) -> tuple[Any, grpc.Channel]:
    channel = grpc.insecure_channel(kurrent.server.target)
    return persistent_pb2_grpc.PersistentSubscriptionsStub(channel), channel  # type: ignore[no-untyped-call]


def _create(name: str, **settings: Any) -> Any:
    base: dict[str, Any] = {"message_timeout_ms": 30_000, "consumer_strategy": "RoundRobin"}
    base.update(settings)
    return persistent_pb2.CreateReq(
        options=persistent_pb2.CreateReq.Options(
            group_name=name,
            all=persistent_pb2.CreateReq.AllOptions(
                start=shared_pb2.Empty(), no_filter=shared_pb2.Empty()
            ),
            settings=persistent_pb2.CreateReq.Settings(**base),
        )
    )


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (_create(""), "group_name"),
        (_create("a\x00b"), "NUL"),
        (_create("x" * 100_000), "at most"),
        (_create("g", resolve_links=True), "resolve_links"),
        (_create("g", consumer_strategy="PinnedByCorrelation"), "strategy"),
        (_create("g", message_timeout_ms=0), "message_timeout"),
        (_create("g", max_retry_count=-1), "max_retry_count"),
        (_create("g", live_buffer_size=-5), "live_buffer_size"),
        (_create("g", max_subscriber_count=2_000_000_000), "max_subscriber_count"),
    ],
)
def test_hostile_create_requests_are_invalid_argument(
    kurrent: ServerThread, client: KurrentDBClient, request_: Any, needle: str
) -> None:
    stub, channel = _stub(kurrent)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Create(request_, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert needle in (caught.value.details() or "")
    finally:
        channel.close()
    assert client.list_subscriptions() == []


def test_hostile_reads_and_filters_are_refused_typed(
    kurrent: ServerThread, client: KurrentDBClient
) -> None:
    stub, channel = _stub(kurrent)
    try:
        filtered = _create("f")
        filtered.options.all.filter.CopyFrom(
            persistent_pb2.CreateReq.AllOptions.FilterOptions(
                event_type=persistent_pb2.CreateReq.AllOptions.FilterOptions.Expression(
                    regex="(unclosed"
                ),
                max=10,
            )
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.Create(filtered, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        bad_stream = persistent_pb2.GetInfoReq(
            options=persistent_pb2.GetInfoReq.Options(
                stream_identifier=shared_pb2.StreamIdentifier(stream_name=b"\xff\xfe"),
                group_name="g",
            )
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetInfo(bad_stream, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        client.create_subscription_to_all("r")
        for first in (
            persistent_pb2.ReadReq(ack=persistent_pb2.ReadReq.Ack(id=b"x")),
            persistent_pb2.ReadReq(
                options=persistent_pb2.ReadReq.Options(
                    all=shared_pb2.Empty(), group_name="r", buffer_size=0
                )
            ),
            persistent_pb2.ReadReq(
                options=persistent_pb2.ReadReq.Options(
                    all=shared_pb2.Empty(), group_name="\x00", buffer_size=10
                )
            ),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                list(stub.Read(iter([first]), timeout=10))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, first
        with pytest.raises(grpc.RpcError) as caught:
            list(
                stub.Read(
                    iter([persistent_pb2.ReadReq(options=persistent_pb2.ReadReq.Options(
                        all=shared_pb2.Empty(), group_name="absent", buffer_size=10))]),
                    timeout=10,
                )
            )  # fmt: skip
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        channel.close()
    assert [i.group_name for i in client.list_subscriptions()] == ["r"]


def test_max_subscriber_count_is_enforced(client: KurrentDBClient) -> None:
    from kurrentdbclient.exceptions import MaximumSubscriptionsReachedError

    client.create_subscription_to_all("one", max_subscriber_count=1)
    sub = client.read_subscription_to_all("one")
    try:
        with pytest.raises(MaximumSubscriptionsReachedError):
            client.read_subscription_to_all("one")
    finally:
        sub.stop()
    stopped = threading.Event()
    stopped.set()
    deadline = time.monotonic() + 10
    while True:  # the server notices the first reader's end
        try:
            client.read_subscription_to_all("one").stop()
            break
        except MaximumSubscriptionsReachedError:
            assert time.monotonic() < deadline
            time.sleep(0.1)


_OK_OR_REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS}


def test_hypothesis_create_never_answers_internal(kurrent: ServerThread) -> None:
    """Any group name, strategy and numbers: created, or refused with INVALID_ARGUMENT /
    ALREADY_EXISTS and a message; never INTERNAL or UNKNOWN (the server keeps serving)."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    stub, channel = _stub(kurrent)
    ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        name=st.text(max_size=300),
        strategy=st.sampled_from(["RoundRobin", "Pinned", "DispatchToSingle", "", "x" * 500]),
        retries=ints, timeout_ms=ints, live=ints, subscribers=ints,
    )  # fmt: skip
    def check(name: str, strategy: str, retries: int, timeout_ms: int, live: int,
              subscribers: int) -> None:  # fmt: skip
        request = _create(name, consumer_strategy=strategy, max_retry_count=retries,
                          message_timeout_ms=timeout_ms, live_buffer_size=live,
                          max_subscriber_count=subscribers)  # fmt: skip
        try:
            stub.Create(request, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() in _OK_OR_REFUSED, (exc.code(), exc.details())
            assert exc.details()

    try:
        check()
    finally:
        channel.close()
