from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import chronik
from chronik import EventRegistry, NewEvent, RecordedEvent
from chronik.events import category_of, new_event_id, validate_expected_version


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
