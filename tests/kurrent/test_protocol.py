"""kurrentdbclient (blocking API) against chronik's KurrentDB protocol server, on SQLite and
PostgreSQL: appends in every expected-revision form, conflicts, idempotent retries, reads,
filters, subscriptions, delete, tombstone, metadata, gossip and what is not implemented."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from kurrentdbclient import NewEvent, StreamState
from kurrentdbclient.events import CaughtUp, Checkpoint
from kurrentdbclient.exceptions import (
    FailedPreconditionError,
    GrpcError,
    NotFoundError,
    StreamIsDeletedError,
    WrongCurrentVersionError,
)

from tests.kurrent.conftest import ServerThread


def ev(type_: str = "Happened", data: bytes = b'{"n": 1}', **kw: Any) -> NewEvent:
    return NewEvent(type=type_, data=data, **kw)


@pytest.mark.feature("append")
def test_append_every_expected_revision_form(client: Any) -> None:
    p0 = client.append_to_stream("order-1", events=ev(), current_version=StreamState.NO_STREAM)
    p1 = client.append_to_stream("order-1", events=ev(), current_version=0)
    p2 = client.append_to_stream("order-1", events=ev(), current_version=StreamState.EXISTS)
    p3 = client.append_to_stream("order-1", events=ev(), current_version=StreamState.ANY)
    assert p0 < p1 < p2 < p3
    assert client.get_current_version("order-1") == 3
    assert [e.commit_position for e in client.get_stream("order-1")] == [p0, p1, p2, p3]
    client.append_to_stream("fresh-1", events=ev(), current_version=StreamState.ANY)
    assert client.get_current_version("fresh-1") == 0


@pytest.mark.feature("append")
def test_wrong_expected_version_answers_the_current_revision(client: Any) -> None:
    client.append_to_stream("acct-1", events=[ev(), ev()], current_version=StreamState.NO_STREAM)
    with pytest.raises(WrongCurrentVersionError) as caught:
        client.append_to_stream("acct-1", events=ev(), current_version=0)
    assert caught.value.actual_version == 1
    with pytest.raises(WrongCurrentVersionError) as caught:
        client.append_to_stream("acct-1", events=[ev()], current_version=StreamState.NO_STREAM)
    assert caught.value.actual_version == 1
    with pytest.raises(WrongCurrentVersionError) as caught:
        client.append_to_stream("none-1", events=ev(), current_version=StreamState.EXISTS)
    assert caught.value.actual_version == StreamState.NO_STREAM
    with pytest.raises(WrongCurrentVersionError):
        client.append_to_stream("none-1", events=[ev(), ev()], current_version=3)
    assert client.get_current_version("acct-1") == 1
    assert client.get_current_version("none-1") == StreamState.NO_STREAM


@pytest.mark.feature("idempotency")
@pytest.mark.parametrize("form", ["exact", "any", "no_stream"])
def test_retry_with_the_same_ids_returns_the_original_position(client: Any, form: str) -> None:
    client.append_to_stream("idem-1", events=ev(), current_version=StreamState.NO_STREAM)
    stream = "idem-1" if form != "no_stream" else "idem-2"
    expected: Any = {"exact": 0, "any": StreamState.ANY, "no_stream": StreamState.NO_STREAM}[form]
    batch = [ev("A"), ev("B")]
    first = client.append_to_stream(stream, events=batch, current_version=expected)
    again = client.append_to_stream(stream, events=batch, current_version=expected)
    assert again == first
    single = ev("C")
    expected_single = StreamState.ANY if form == "any" else client.get_current_version(stream)
    one = client.append_to_stream(stream, events=single, current_version=expected_single)
    assert client.append_to_stream(stream, events=single, current_version=expected_single) == one
    types = [e.type for e in client.get_stream(stream)]
    assert types.count("A") == types.count("B") == types.count("C") == 1


@pytest.mark.feature("events")
def test_event_bytes_round_trip(client: Any, kurrent: ServerThread) -> None:
    sent = [
        ev("Json", b'{"a": [1, 2]}', metadata=b'{"$correlationId": "c-1", "k": "v"}'),
        ev(
            "Binary",
            b"\x00\xffnot json",
            metadata=b"\x01\x02",
            content_type="application/octet-stream",
        ),
        ev("Empty", b"", metadata=b""),
        ev("Array", b"[1, 2]", metadata=b"[3]"),
    ]
    client.append_to_stream("bytes-1", events=sent, current_version=StreamState.NO_STREAM)
    got = client.get_stream("bytes-1")
    assert [e.id for e in got] == [e.id for e in sent]
    assert [e.data for e in got] == [e.data for e in sent]
    assert [e.content_type for e in got] == [e.content_type for e in sent]
    assert json.loads(got[0].metadata) == {"$correlationId": "c-1", "k": "v"}
    assert [e.metadata for e in got[1:]] == [b"\x01\x02", b"", b"[3]"]
    assert got[0].recorded_at is not None
    # they are ordinary chronik events: JSON data is chronik's data, the correlation id maps
    stored = kurrent.call(_collect(kurrent.store.read_stream("bytes-1")))
    assert stored[0].data == {"a": [1, 2]} and stored[0].correlation_id == "c-1"
    assert stored[1].data == {} and "kurrent" in stored[1].metadata


@pytest.mark.feature("append")
def test_empty_appends_and_the_all_name(client: Any) -> None:
    """Red team: an empty append with NoStream answered "Value out of range: -1"; `$all`
    could be appended to and tombstoned as a stream of its own."""
    client.append_to_stream("fresh-empty", events=[], current_version=StreamState.NO_STREAM)
    with pytest.raises(NotFoundError):
        client.get_stream("fresh-empty")  # nothing was written
    with pytest.raises(Exception, match="global log"):
        client.append_to_stream("$all", events=ev(), current_version=StreamState.ANY)
    with pytest.raises(Exception, match="global log"):
        client.tombstone_stream("$all", current_version=StreamState.ANY)


@pytest.mark.feature("events")
def test_a_chronik_event_with_a_kurrent_metadata_key_reads_as_written(
    client: Any, kurrent: ServerThread
) -> None:
    """Red team: one event appended through chronik with metadata {"kurrent": {"data": "x"}}
    stopped every $all read and subscription at it (invalid base64), and a well-formed one
    changed how the event read. Only this face's strict encoding is decoded now."""
    import chronik

    odd: list[dict[str, Any]] = [
        {"kurrent": {"data": "x"}},
        {"kurrent": {"content_type": 5}},
        {"kurrent": {}},
        {"kurrent": {"data": "aGVsbG8=", "extra": 1}},
        {"kurrent": "a string"},
    ]
    for n, metadata in enumerate(odd):
        kurrent.call(
            kurrent.store.append(f"odd-{n}", [chronik.NewEvent("Odd", {"n": n}, metadata)])
        )
    everything = list(client.read_all())
    got = [e for e in everything if e.stream_name.startswith("odd-")]
    assert [json.loads(e.data) for e in got] == [{"n": n} for n in range(len(odd))]
    assert all(e.content_type == "application/json" for e in got)
    assert [json.loads(e.metadata)["kurrent"] for e in got] == [m["kurrent"] for m in odd]


async def _collect(source: Any) -> list[Any]:
    return [e async for e in source]


async def _append_native(store: Any) -> None:
    import chronik

    await store.append("native-1", [chronik.NewEvent("Opened", {"x": 1}, {"user": "u"})])


@pytest.mark.feature("events")
def test_json_chronik_refuses_is_kept_as_bytes(client: Any) -> None:
    deep = b'{"a": ' * 100 + b"1" + b"}" * 100  # deeper than chronik's JSON limit (64)
    sent = [ev("Deep", deep, metadata=deep), ev("Fine", b'{"ok": true}')]
    client.append_to_stream("deep-1", events=sent, current_version=StreamState.NO_STREAM)
    got = client.get_stream("deep-1")
    assert [(e.data, e.metadata) for e in got] == [(deep, deep), (b'{"ok": true}', b"")]


@pytest.mark.feature("events")
def test_events_written_by_chronik_read_over_the_protocol(
    client: Any, kurrent: ServerThread
) -> None:
    kurrent.call(_append_native(kurrent.store))
    (event,) = client.get_stream("native-1")
    assert event.type == "Opened" and json.loads(event.data) == {"x": 1}
    assert event.content_type == "application/json"
    assert json.loads(event.metadata)["user"] == "u"


@pytest.mark.feature("read-stream")
def test_read_stream_both_directions_with_limits(client: Any) -> None:
    client.append_to_stream(
        "r-1", events=[ev(str(i)) for i in range(10)], current_version=StreamState.NO_STREAM
    )
    assert [e.type for e in client.get_stream("r-1", limit=3)] == ["0", "1", "2"]
    assert [e.type for e in client.get_stream("r-1", stream_position=7)] == ["7", "8", "9"]
    assert [e.type for e in client.get_stream("r-1", backwards=True, limit=2)] == ["9", "8"]
    assert [
        e.type for e in client.get_stream("r-1", stream_position=4, backwards=True, limit=3)
    ] == ["4", "3", "2"]
    assert client.get_stream("r-1", stream_position=50) == ()
    with pytest.raises(NotFoundError):
        client.get_stream("missing-1")


@pytest.mark.feature("read-all")
def test_read_all_positions_directions_and_filters(client: Any) -> None:
    client.append_to_stream(
        "alpha-1", events=[ev("Created"), ev("Renamed")], current_version=StreamState.NO_STREAM
    )
    client.append_to_stream(
        "beta-1", events=[ev("Created"), ev("Closed")], current_version=StreamState.NO_STREAM
    )
    everything = list(client.read_all())
    assert [(e.stream_name, e.type) for e in everything] == [
        ("alpha-1", "Created"),
        ("alpha-1", "Renamed"),
        ("beta-1", "Created"),
        ("beta-1", "Closed"),
    ]
    positions = [e.commit_position for e in everything]
    assert positions == sorted(positions)
    assert [e.commit_position for e in client.read_all(commit_position=positions[2])] == positions[
        2:
    ]
    assert [e.commit_position for e in client.read_all(backwards=True)] == positions[::-1]
    assert [e.commit_position for e in client.read_all(backwards=True, limit=2)] == positions[
        :1:-1
    ][:2]
    assert [
        e.commit_position for e in client.read_all(commit_position=positions[2], backwards=True)
    ] == positions[1::-1]
    assert client.get_commit_position() == positions[-1]
    by_type = client.read_all(filter_include=["Created"])
    assert [e.stream_name for e in by_type] == ["alpha-1", "beta-1"]
    by_prefix = client.read_all(
        filter_include=["beta"], filter_by_stream_name=True, filter_by_prefix=True
    )
    assert [e.type for e in by_prefix] == ["Created", "Closed"]
    by_regex = client.read_all(filter_include=[r"alpha-\d"], filter_by_stream_name=True)
    assert [e.type for e in by_regex] == ["Created", "Renamed"]
    excluded = client.read_all(filter_exclude=["Created"])
    assert [e.type for e in excluded] == ["Renamed", "Closed"]
    type_prefix = client.read_all(filter_include=["Clo"], filter_by_prefix=True)
    assert [e.type for e in type_prefix] == ["Closed"]


@pytest.mark.feature("subscribe-all")
def test_subscribe_to_all_catches_up_then_goes_live_with_filter_and_checkpoints(
    client: Any,
) -> None:
    client.append_to_stream(
        "s-1", events=[ev("Keep"), ev("Skip"), ev("Keep")], current_version=StreamState.NO_STREAM
    )
    sub = client.subscribe_to_all(
        filter_include=["Keep"],
        include_checkpoints=True,
        include_caught_up=True,
        window_size=1,
        checkpoint_interval_multiplier=1,
    )
    seen: list[Any] = []
    for item in sub:
        seen.append(item)
        if isinstance(item, CaughtUp):
            break
    kinds = [type(i).__name__ for i in seen]
    assert kinds.count("RecordedEvent") == 2 and "Checkpoint" in kinds and kinds[-1] == "CaughtUp"
    client.append_to_stream("s-1", events=[ev("Skip"), ev("Keep")], current_version=2)
    live = next(i for i in sub if not isinstance(i, Checkpoint))
    assert live.type == "Keep" and live.stream_position == 4
    sub.stop()
    # resume after a checkpoint: nothing at or before it again
    start = seen[0].commit_position
    again = client.subscribe_to_all(commit_position=start, filter_include=["Keep"])
    assert next(iter(again)).stream_position == 2
    again.stop()


@pytest.mark.feature("subscribe-stream")
def test_subscribe_to_stream_from_revision_and_live(client: Any) -> None:
    client.append_to_stream(
        "t-1", events=[ev("0"), ev("1"), ev("2")], current_version=StreamState.NO_STREAM
    )
    sub = client.subscribe_to_stream("t-1", stream_position=0, include_caught_up=True)
    items = []
    for item in sub:
        items.append(item)
        if isinstance(item, CaughtUp):
            break
    assert [i.type for i in items[:-1]] == ["1", "2"]
    client.append_to_stream("t-1", events=ev("3"), current_version=2)
    assert next(iter(sub)).type == "3"
    sub.stop()
    fresh = client.subscribe_to_stream("later-1")
    client.append_to_stream("later-1", events=ev("first"), current_version=StreamState.NO_STREAM)
    assert next(iter(fresh)).type == "first"
    fresh.stop()


@pytest.mark.feature("delete")
def test_soft_delete_hides_the_stream_until_written_again(
    client: Any, kurrent: ServerThread
) -> None:
    client.append_to_stream("d-1", events=[ev("a"), ev("b")], current_version=StreamState.NO_STREAM)
    with pytest.raises(WrongCurrentVersionError):
        client.delete_stream("d-1", current_version=0)
    client.delete_stream("d-1", current_version=1)
    with pytest.raises(NotFoundError):
        client.get_stream("d-1")
    assert client.get_current_version("d-1") == StreamState.NO_STREAM
    client.append_to_stream("d-1", events=ev("c"), current_version=StreamState.NO_STREAM)
    assert [(e.type, e.stream_position) for e in client.get_stream("d-1")] == [("c", 2)]
    meta, _ = client.get_stream_metadata("d-1")
    assert meta["$tb"] == 2
    with pytest.raises(NotFoundError):
        client.delete_stream("never-1", current_version=StreamState.ANY)
    # chronik's own readers see every event, and the $metadata event in $$d-1
    stored = kurrent.call(_collect(kurrent.store.read_stream("d-1")))
    assert [e.type for e in stored] == ["a", "b", "c"]


@pytest.mark.feature("tombstone")
def test_tombstone_is_for_ever(client: Any, kurrent: ServerThread) -> None:
    client.append_to_stream("x-1", events=ev(), current_version=StreamState.NO_STREAM)
    client.tombstone_stream("x-1", current_version=0)
    with pytest.raises(StreamIsDeletedError):
        client.get_stream("x-1")
    with pytest.raises(StreamIsDeletedError):
        client.append_to_stream("x-1", events=[ev(), ev()], current_version=StreamState.ANY)
    with pytest.raises(FailedPreconditionError, match="is deleted"):
        client.append_to_stream("x-1", events=ev(), current_version=StreamState.ANY)
    with pytest.raises(StreamIsDeletedError):
        client.tombstone_stream("x-1", current_version=StreamState.ANY)
    with pytest.raises(StreamIsDeletedError):
        client.delete_stream("x-1", current_version=StreamState.ANY)
    stored = kurrent.call(_collect(kurrent.store.read_stream("x-1")))
    assert [e.type for e in stored] == ["Happened", "$streamDeleted"]
    types = [e.type for e in client.read_all(filter_exclude=[])]
    assert "$streamDeleted" in types


@pytest.mark.feature("metadata")
def test_stream_metadata_round_trips_and_applies(client: Any) -> None:
    client.append_to_stream(
        "m-1", events=[ev(str(i)) for i in range(5)], current_version=StreamState.NO_STREAM
    )
    assert client.get_stream_metadata("m-1") == ({}, StreamState.NO_STREAM)
    client.set_stream_metadata("m-1", metadata={"$maxCount": 2, "custom": {"owner": "ops"}})
    meta, version = client.get_stream_metadata("m-1")
    assert meta == {"$maxCount": 2, "custom": {"owner": "ops"}} and version == 0
    assert [e.type for e in client.get_stream("m-1")] == ["3", "4"]
    client.set_stream_metadata("m-1", metadata={"$tb": 1}, current_version=0)
    assert [e.type for e in client.get_stream("m-1")] == ["1", "2", "3", "4"]
    client.set_stream_metadata("m-1", metadata={"$maxAge": 1})
    import time

    time.sleep(1.1)  # every event is older than $maxAge now: none is read
    assert client.get_stream("m-1") == ()
    with pytest.raises(WrongCurrentVersionError):
        client.set_stream_metadata("m-1", metadata={}, current_version=0)
    system = [e for e in client.read_all(filter_exclude=[]) if e.type == "$metadata"]
    assert system and system[0].stream_name == "$$m-1"


@pytest.mark.feature("stream-names")
def test_dollar_streams_map_reversibly(client: Any, kurrent: ServerThread) -> None:
    client.append_to_stream("$custom-1", events=ev(), current_version=StreamState.NO_STREAM)
    (event,) = client.get_stream("$custom-1")
    assert event.stream_name == "$custom-1"
    stored = kurrent.call(_collect(kurrent.store.read_stream("kurrent$custom-1")))
    assert len(stored) == 1
    with pytest.raises(GrpcError, match="kurrent"):
        client.append_to_stream("kurrent$x", events=ev(), current_version=StreamState.ANY)


@pytest.mark.feature("gossip")
def test_gossip_answers_one_leader(client: Any, kurrent: ServerThread) -> None:
    (member,) = client.read_gossip()
    assert member.state == "NODE_STATE_LEADER"
    assert (member.address, member.port) == (kurrent.server.host, kurrent.server.port)


@pytest.mark.feature("gossip")
def test_discovery_through_gossip_connects(kurrent: ServerThread) -> None:
    from kurrentdbclient import KurrentDBClient

    uri = f"kurrentdb+discover://{kurrent.server.target}?tls=false"
    with KurrentDBClient(uri) as c:
        c.append_to_stream("g-1", events=ev(), current_version=StreamState.ANY)
        assert c.get_current_version("g-1") == 0


@pytest.mark.feature("server-features")
def test_server_features_list_exactly_what_is_implemented(kurrent: ServerThread) -> None:
    from chronik.kurrent.server import SUPPORTED_METHODS, FeaturesEmpty, SupportedMethods

    with grpc.insecure_channel(kurrent.server.target) as channel:
        call = channel.unary_unary(
            "/event_store.client.server_features.ServerFeatures/GetSupportedMethods",
            request_serializer=FeaturesEmpty.SerializeToString,
            response_deserializer=SupportedMethods.FromString,
        )
        answer = call(FeaturesEmpty(), timeout=10)
    listed = {(m.service_name, m.method_name) for m in answer.methods}
    assert listed == {(s.lower(), m.lower()) for s, m, _ in SUPPORTED_METHODS}
    assert answer.event_store_server_version.startswith("chronik-")


@pytest.mark.feature("unimplemented")
def test_persistent_subscriptions_none_and_the_rest_unimplemented(client: Any) -> None:
    assert client.list_subscriptions() == []  # served now: tests/kurrent/test_persistent.py
    with pytest.raises(GrpcError, match=r"docs/kurrent-protocol\.md") as caught:
        client.create_projection(name="p", query="fromAll()")
    assert "Projections/Create" in str(caught.value)
    assert "UNIMPLEMENTED" in str(caught.value)


@pytest.mark.feature("events")
def test_structured_uuids_for_clients_that_ask(client: Any, kurrent: ServerThread) -> None:
    from kurrentdbclient.protos.v1 import shared_pb2, streams_pb2, streams_pb2_grpc

    from chronik.kurrent.mapping import parse_uuid

    sent = [ev("A"), ev("B")]
    client.append_to_stream("u-1", events=sent, current_version=StreamState.NO_STREAM)
    options = streams_pb2.ReadReq.Options
    read = streams_pb2.ReadReq(
        options=options(
            stream=options.StreamOptions(
                stream_identifier=shared_pb2.StreamIdentifier(stream_name=b"u-1"),
                start=shared_pb2.Empty(),
            ),
            count=10,
            no_filter=shared_pb2.Empty(),
            uuid_option=options.UUIDOption(structured=shared_pb2.Empty()),
        )
    )
    with grpc.insecure_channel(kurrent.server.target) as channel:
        stub = streams_pb2_grpc.StreamsStub(channel)  # type: ignore[no-untyped-call]
        got = list(stub.Read(read, timeout=10))
    assert [r.event.event.id.WhichOneof("value") for r in got] == ["structured"] * 2
    assert [parse_uuid(r.event.event.id) for r in got] == [e.id for e in sent]


@pytest.mark.feature("read-all")
def test_memory_store_reads_all_backwards() -> None:
    """``memory://`` has no SQL: backwards reads of ``$all`` take the port-only path."""
    from kurrentdbclient import KurrentDBClient

    server = ServerThread("memory://")
    try:
        with KurrentDBClient(server.uri) as c:
            c.append_to_stream(
                "m-1", events=[ev("A"), ev("B")], current_version=StreamState.NO_STREAM
            )
            c.append_to_stream("m-2", events=[ev("C")], current_version=StreamState.NO_STREAM)
            assert [e.type for e in c.read_all(backwards=True)] == ["C", "B", "A"]
            last = c.get_commit_position()
            assert [e.type for e in c.read_all(commit_position=last, backwards=True)] == ["B", "A"]
    finally:
        server.close()
