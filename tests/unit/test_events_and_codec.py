from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import chronik
from chronik import EventRegistry, NewEvent, RecordedEvent
from chronik.context import context
from chronik.events import (
    MAX_VERSION,
    category_of,
    find_non_finite,
    new_event_id,
    text_problem,
    validate_expected_version,
)
from chronik.store.port import ImportedEvent
from chronik.store.validation import (
    DEFAULT_MAX_JSON_DEPTH,
    MAX_EVENTS_PER_APPEND,
    check_read_all,
    check_read_correlation,
    check_read_page,
    check_read_stream,
    check_streams,
    encode_batch,
    plan_import,
)


def test_category_is_the_part_before_the_first_dash() -> None:
    assert category_of("order-42") == "order"
    assert category_of("order-42-line-3") == "order"
    assert category_of("solo") == "solo"
    assert category_of("-x") == ""


def test_new_event_ids_are_uuid7_and_time_ordered() -> None:
    ids = [new_event_id() for _ in range(200)]
    assert all(i.version == 7 for i in ids)
    assert all(i.variant == uuid.RFC_4122 for i in ids)
    assert len(set(ids)) == 200
    stamps = [i.int >> 80 for i in ids]
    assert stamps == sorted(stamps)


@pytest.mark.parametrize("good", [0, 5, chronik.NO_STREAM, chronik.ANY, chronik.STREAM_EXISTS])
def test_expected_versions_accepted(good: int) -> None:
    assert validate_expected_version(good) == int(good)


@pytest.mark.parametrize("good", ["order-1", "a", "x" * 255, "ü" * 127, "with space", "a$b"])
def test_valid_stream_ids(good: str) -> None:
    assert chronik.validate_stream_id(good) == good


@pytest.mark.parametrize(
    "bad,reason",
    [
        ("", "empty"),
        ("$all", "reserved"),
        ("a\x7fb", "control"),
        ("a\u2028b", "control"),
        ("ü" * 128, "bytes"),
        ("a\ud800", "control"),
    ],
)
def test_invalid_stream_ids_name_the_reason(bad: str, reason: str) -> None:
    with pytest.raises(chronik.InvalidStreamId, match=reason):
        chronik.validate_stream_id(bad)


registry = EventRegistry()


@registry.event("MoneyDeposited", version=2)
@dataclass(frozen=True)
class MoneyDeposited:
    account: str
    amount: Decimal
    at: datetime
    tags: list[str]
    note: str | None = None


@registry.event("Renamed")
class Renamed(msgspec.Struct, frozen=True):
    name: str


def _recorded(
    new: NewEvent, *, type_: str | None = None, data: bytes | None = None
) -> RecordedEvent:
    assert isinstance(new.data, bytes)
    return RecordedEvent(
        event_id=new.event_id,
        stream_id="account-1",
        version=3,
        position=10,
        type=type_ or new.type,
        schema_version=new.schema_version,
        raw_data=data if data is not None else new.data,
        raw_metadata=b"{}",
        recorded_at=datetime.now(UTC),
    )


text = st.text(st.characters(exclude_categories=["Cs"]), max_size=30)


@given(
    account=text,
    amount=st.decimals(allow_nan=False, allow_infinity=False, places=2),
    at=st.datetimes(timezones=st.just(UTC)),
    tags=st.lists(text, max_size=5),
    note=st.none() | text,
)
def test_codec_round_trip(
    account: str, amount: Decimal, at: datetime, tags: list[str], note: str | None
) -> None:
    event = MoneyDeposited(account, amount, at, tags, note)
    new = registry.to_new_event(event)
    assert new.type == "MoneyDeposited" and new.schema_version == 2
    assert registry.decode(_recorded(new)) == event


@given(name=text)
def test_struct_round_trip(name: str) -> None:
    new = registry.to_new_event(Renamed(name))
    assert registry.decode(_recorded(new)) == Renamed(name)


def test_decode_validates_types_and_names_the_event() -> None:
    new = registry.to_new_event(Renamed("x"))
    with pytest.raises(chronik.SerializationError, match="account-1") as info:
        registry.decode(_recorded(new, data=b'{"name": 5}'))
    assert info.value.event_type == "Renamed"
    assert info.value.version == 3
    with pytest.raises(chronik.SerializationError):
        registry.decode(_recorded(new, data=b"not json"))


def test_unknown_type_and_future_schema_version() -> None:
    new = registry.to_new_event(Renamed("x"))
    with pytest.raises(chronik.UnknownEventType, match="Nope") as info:
        registry.decode(_recorded(new, type_="Nope"))
    assert info.value.stream_id == "account-1"
    future = NewEvent("Renamed", new.data, schema_version=9)
    with pytest.raises(chronik.SerializationError, match="newer"):
        registry.decode(_recorded(future))


def test_registry_rejects_clashes_and_non_event_classes() -> None:
    reg = EventRegistry()

    @dataclass(frozen=True)
    class A:
        x: int

    @dataclass(frozen=True)
    class B:
        x: int

    reg.register(A, "Thing")
    reg.register(A, "Thing")  # same again is fine
    with pytest.raises(chronik.RegistryError, match="registered already"):
        reg.register(B, "Thing")
    with pytest.raises(chronik.RegistryError):
        reg.register(A, "Other")
    with pytest.raises(chronik.RegistryError):
        reg.register(dict, "Dict")
    with pytest.raises(chronik.RegistryError):
        reg.register(B, "")
    with pytest.raises(chronik.RegistryError):
        reg.register(B, "B", version=0)
    with pytest.raises(chronik.UnknownEventType):
        reg.to_new_event(B(1))
    assert [t.name for t in reg.types()] == ["Thing"]
    assert "Thing" in reg


def test_recorded_event_decodes_lazily_and_once() -> None:
    new = NewEvent("X", b'{"a": 1}')
    rec = _recorded(new)
    assert rec._data is None
    first = rec.data
    assert first == {"a": 1} and rec.data is first
    assert rec.to_dict()["data"] == {"a": 1}
    assert "account-1" in repr(rec)


# -- what a store accepts: the shared checks (chronik.store.validation) ----------------------


def _encode(*events: NewEvent, depth: int = DEFAULT_MAX_JSON_DEPTH) -> list[bytes]:
    _, _, batch = encode_batch("s-1", list(events), chronik.ANY, 1 << 20, depth)
    return [e.data for e in batch]


def test_expected_version_stops_at_the_largest_stream_version() -> None:
    assert validate_expected_version(MAX_VERSION) == 2**31 - 1
    for bad in (2**31, 2**63, 2**70):
        with pytest.raises(chronik.InvalidExpectedVersion, match="largest version"):
            validate_expected_version(bad)


@pytest.mark.parametrize(
    "text,problem",
    [("Happened", None), ("Zoë 🎉", None), ("", "empty"), ("a\x00", "control"),
     ("a\u2029", "control"), ("\udc80", "control"), ("x" * 256, "256 UTF-8 bytes"),
     ("é" * 128, "256 UTF-8 bytes"), (5, "must be a str")],
)  # fmt: skip
def test_text_problem_names_what_is_wrong(text: object, problem: str | None) -> None:
    found = text_problem(text, 255)
    assert found is None if problem is None else problem in (found or "")


def test_find_non_finite_gives_the_path() -> None:
    assert find_non_finite({"a": [1.0, {"b": (2, math.inf)}]}) == "$.a[1].b[1]"
    assert find_non_finite({"a": None, "b": [0.0, -0.0, 1e308]}) is None
    assert find_non_finite({math.nan: 1}) == "$ (a key)"


def test_an_invalid_event_names_stream_index_field_and_limit() -> None:
    with pytest.raises(chronik.InvalidEvent) as info:
        encode_batch("s-1", [NewEvent("A"), NewEvent("T" * 300)], chronik.ANY, 1 << 20)
    error = info.value
    assert (error.stream_id, error.index, error.field, error.limit) == ("s-1", 1, "type", 255)
    assert isinstance(error, chronik.SerializationError) and isinstance(error, ValueError)
    assert len(str(error)) < 200  # a 300-character type is shown cut
    with pytest.raises(chronik.PayloadTooLarge) as too_large:
        encode_batch("s-1", [NewEvent("T" * 200, {"x": "y" * 100})], chronik.ANY, 300)
    assert too_large.value.size > 300  # the type counts


def test_event_ids_are_normalised_uuids() -> None:
    some = uuid.uuid4()
    for spelling in (some, str(some), str(some).upper(), some.hex, f"{{{some}}}"):
        new = NewEvent("A", event_id=spelling)  # type: ignore[arg-type]
        _, _, (encoded,) = encode_batch("s-1", [new], chronik.ANY, 1 << 20)
        assert encoded.event_id == some and type(encoded.event_id) is uuid.UUID
    with pytest.raises(chronik.DuplicateEventId):
        encode_batch(
            "s-1",
            [NewEvent("A", event_id=some), NewEvent("A", event_id=str(some))],  # type: ignore[arg-type]
            chronik.ANY,
            1 << 20,
        )


def test_nan_is_found_behind_values_msgspec_converts() -> None:
    at = datetime(2026, 1, 2, tzinfo=UTC)
    fine: dict[Any, Any] = {"t": (1, None), "u": uuid.UUID(int=1), "at": at, 5: None}
    assert _encode(NewEvent("A", fine)) == [msgspec.json.encode(fine)]
    with pytest.raises(chronik.InvalidEvent, match=r"\$\.t\[1\]"):
        _encode(NewEvent("A", {"t": (1, math.nan), "u": uuid.UUID(int=1)}))
    with pytest.raises(chronik.InvalidEvent, match="NaN"):
        _encode(NewEvent("A", {"ok": None}, metadata={"x": [math.inf]}))


def test_depth_is_exact_and_strings_do_not_count() -> None:
    brackets = {"s": "[{" * 500 + '\\"[', "wide": [[i] for i in range(300)]}
    assert _encode(NewEvent("A", brackets), depth=3)  # depth 3, despite 1,000 brackets
    with pytest.raises(chronik.InvalidEvent, match="nests 4 deep") as info:
        _encode(NewEvent("A", {"wide": [[[i]] for i in range(300)]}), depth=3)
    assert info.value.limit == 3
    raw = msgspec.json.encode({"wide": [[[i]] for i in range(300)]})
    with pytest.raises(chronik.InvalidEvent, match="nests 4 deep"):
        _encode(NewEvent("A", raw), depth=3)


def test_too_many_events_are_refused_before_any_is_encoded() -> None:
    one = NewEvent("A", {"x": object()})  # would fail to encode
    with pytest.raises(chronik.BatchTooLarge, match="1048577"):
        encode_batch("s-1", [one] * (MAX_EVENTS_PER_APPEND + 1), chronik.ANY, 1 << 20)


def test_the_limit_matches_the_postgresql_position_layout() -> None:
    pg_support = pytest.importorskip("chronik.store.pg_support")
    assert pg_support.MAX_EVENTS_PER_APPEND == MAX_EVENTS_PER_APPEND


def test_metadata_from_the_context_is_checked_when_the_context_changes() -> None:
    with context(actor="alice"):
        assert _encode(NewEvent("A"))
        assert _encode(NewEvent("A"))  # the same context: checked once
    with context(actor=5), pytest.raises(chronik.InvalidEvent, match=r"chronik\.context"):  # type: ignore[arg-type]
        _encode(NewEvent("A"))
    with context(tenant=math.nan), pytest.raises(chronik.InvalidEvent, match="NaN"):
        _encode(NewEvent("A"))
    tags: list[object] = ["a"]
    with context(tags=tags):
        assert _encode(NewEvent("A"))
        tags.append(math.inf)  # the same context, changed since it was checked
        with pytest.raises(chronik.InvalidEvent, match="NaN"):
            _encode(NewEvent("A"))


def test_non_events_are_invalid_arguments_and_type_errors() -> None:
    for bad in (NewEvent("A"), "events", None, 5, b"xy"):
        with pytest.raises(chronik.InvalidArgument) as info:
            encode_batch("s-1", bad, chronik.ANY, 1 << 20)  # type: ignore[arg-type]
        assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    with pytest.raises(chronik.InvalidArgument, match=r"events\[1\]"):
        encode_batch("s-1", [NewEvent("A"), {"type": "A"}], chronik.ANY, 1 << 20)  # type: ignore[list-item]


def _imported(**changes: Any) -> ImportedEvent:
    base = ImportedEvent(uuid.uuid4(), "a-1", None, "Old", 1, b"{}", b"{}", datetime.now(UTC))
    return base._replace(**changes)


def test_imports_pass_the_checks_of_an_append() -> None:
    some = uuid.uuid4()
    ((ev, version),) = plan_import([_imported(event_id=str(some).upper())], {}, 1 << 20)
    assert (ev.event_id, version) == (some, 0) and type(ev.event_id) is uuid.UUID
    bad = {
        "event_id": _imported(event_id="nope"),
        "type": _imported(type="a\x00"),
        "schema_version": _imported(schema_version=0),
        "version": _imported(version=True),
        "data": _imported(data=b"[1]"),
        "metadata": _imported(metadata=b'{"x": "\\u0000"}'),
        "metadata.correlation_id": _imported(metadata=b'{"correlation_id": 7}'),
        "recorded_at": _imported(recorded_at=datetime(2020, 1, 1)),  # naive
    }
    for field, ev in bad.items():
        with pytest.raises(chronik.InvalidEvent) as info:
            plan_import([_imported(), ev], {}, 1 << 20)
        assert (info.value.field, info.value.index) == (field, 1)
    with pytest.raises(chronik.InvalidEvent, match="deep"):
        plan_import([_imported(data=b'{"a":' + b"[" * 70 + b"]" * 70 + b"}")], {}, 1 << 20)
    with pytest.raises(chronik.PayloadTooLarge):
        plan_import([_imported(type="T" * 250, data=b'{"a":"' + b"x" * 40 + b'"}')], {}, 290)
    with pytest.raises(chronik.InvalidArgument):
        plan_import([{"stream_id": "a-1"}], {}, 1 << 20)  # type: ignore[list-item]


@pytest.mark.parametrize(
    "args,normal",
    [((0, None, None, None), (0, None, None, None)),
     ((-5, ["a"], ("B",), -1), (0, ["a"], ["B"], 0)),
     ((2**70, [], None, 2**70), (2**63 - 1, [], None, 2**63 - 1))],
)  # fmt: skip
def test_read_all_arguments_are_normalised(
    args: tuple[object, ...], normal: tuple[object, ...]
) -> None:
    assert check_read_all(*args) == normal


@pytest.mark.parametrize(
    "args",
    [("1", None, None, None), (True, None, None, None), (1.0, None, None, None),
     (0, "order", None, None), (0, None, [5], None), (0, ["a\x00"], None, None),
     (0, None, ["\ud800"], None), (0, None, None, "5"), (0, b"ab", None, None)],
)  # fmt: skip
def test_read_all_arguments_of_the_wrong_type(args: tuple[object, ...]) -> None:
    with pytest.raises(chronik.InvalidArgument):
        check_read_all(*args)


def test_other_read_arguments() -> None:
    assert check_read_stream(None, None, False) == (0, None)
    assert check_read_stream(-(2**70), 3, False) == (0, 3)
    assert check_read_stream(2**70, None, False) == (2**31, None)
    assert check_read_stream(None, None, True) == (None, None)
    assert check_read_stream(2**70, None, True) == (2**31 - 1, None)
    assert check_read_stream(-(2**70), None, True) == (-1, None)
    assert check_read_page(2**70, 2**70, None, None) == (2**63 - 1, 2**31 - 1, None, None)
    assert check_read_correlation(uuid.UUID(int=1), None) == (str(uuid.UUID(int=1)), None)
    assert check_streams("order", -3) == ("order", 0)
    for bad in (
        lambda: check_read_stream("0", None, False),
        lambda: check_read_page(0, None, None, None),
        lambda: check_read_correlation(123, None),
        lambda: check_read_correlation("a\x00", None),
        lambda: check_streams(5, None),
    ):
        with pytest.raises(chronik.InvalidArgument):
            bad()


async def test_the_json_depth_limit_is_set_per_store() -> None:
    async with await chronik.connect("memory://") as store:
        assert store.max_json_depth == DEFAULT_MAX_JSON_DEPTH  # type: ignore[attr-defined]
        store.max_json_depth = 2  # type: ignore[attr-defined]
        with pytest.raises(chronik.InvalidEvent) as info:
            await store.append("s-1", [NewEvent("A", {"a": {"b": []}})])
        assert info.value.limit == 2
        for bad in (0, 513, True, "8"):
            with pytest.raises(chronik.InvalidArgument):
                store.max_json_depth = bad  # type: ignore[attr-defined]


def test_codec_refuses_nan_and_looks_only_where_a_float_can_be() -> None:
    reg = EventRegistry()

    @reg.event("Measured")
    class Measured(msgspec.Struct, frozen=True):
        value: float | None = None

    @reg.event("Named")
    @dataclass(frozen=True)
    class Named:
        name: str
        nick: str | None = None

    assert reg.to_new_event(Measured(None)).data == b'{"value":null}'
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(chronik.SerializationError, match="NaN or Infinity"):
            reg.to_new_event(Measured(bad))
    assert reg._floats == {"Measured": True, "Named": False}
    assert reg.to_new_event(Named("x")).data == b'{"name":"x","nick":null}'


def test_a_stored_event_id_that_is_no_uuid_is_a_serialization_error() -> None:
    # what an older release could store on SQLite, read back by chronik events --json
    legacy = RecordedEvent.from_stored(7, "s-1", 3, "nope", "A", 1, b"{}", b"{}", 0)
    with pytest.raises(chronik.SerializationError, match="nope") as info:
        legacy.to_dict()
    assert (info.value.stream_id, info.value.version) == ("s-1", 3)
    upper = RecordedEvent.from_stored(7, "s-1", 3, str(uuid.UUID(int=5)).upper(), "A", 1, b"{}",
                                      b"{}", 0)  # fmt: skip
    assert upper.event_id == uuid.UUID(int=5)
