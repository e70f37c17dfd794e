"""Upcaster chains: registration, validation, application, and the errors that name events."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, make_dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chronik
from chronik import EventRegistry, RecordedEvent
from chronik.upcasting import Upcast, split_event_id


def stored(
    type_: str,
    schema_version: int,
    data: dict[str, Any] | bytes,
    *,
    stream_id: str = "pay-1",
    version: int = 4,
) -> RecordedEvent:
    raw = data if isinstance(data, bytes) else msgspec.json.encode(data)
    return RecordedEvent(
        event_id=uuid.uuid4(),
        stream_id=stream_id,
        version=version,
        position=17,
        type=type_,
        schema_version=schema_version,
        raw_data=raw,
        raw_metadata=b'{"correlation_id":"c-1"}',
        recorded_at=datetime(2024, 1, 2, tzinfo=UTC),
    )


# -- a registry with every kind of step -------------------------------------------------------
#
# Payment v1 {amt, cust, memo} --rename fields--> v2 {amount_cents, customer_id, memo}
#   --additive (channel="web")--> v3 --memo→note, tags--> v4
#   --renamed--> PaymentReceived v1 --currency--> v2 (registered)

payments = EventRegistry()


@payments.event("PaymentReceived", version=2)
@dataclass(frozen=True)
class PaymentReceived:
    amount_cents: int
    customer_id: str
    note: str
    currency: str
    tags: list[str] = field(default_factory=list)
    channel: str = "web"


@payments.upcaster("Payment", from_version=1)
def payment_v1(data: dict[str, Any]) -> dict[str, Any]:
    return {"amount_cents": data["amt"], "customer_id": data["cust"], "memo": data["memo"]}


@payments.upcaster("Payment", from_version=2)
def payment_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "channel": data.get("channel", "web")}


@payments.upcaster("Payment", from_version=3)
def payment_v3(data: dict[str, Any]) -> dict[str, Any]:
    memo = data.pop("memo")
    return {**data, "note": memo.strip(), "tags": []}


@payments.upcaster("Payment", from_version=4, to="PaymentReceived")
def payment_renamed(data: dict[str, Any]) -> Upcast:
    return Upcast("PaymentReceived", data)


@payments.upcaster("PaymentReceived", from_version=1)
def add_currency(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "EUR"}


text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
cents = st.integers(min_value=-(2**53), max_value=2**53)


@given(amt=cents, cust=text, memo=text, extra=st.dictionaries(st.sampled_from(["x", "y"]), text))
def test_random_v1_payloads_upcast_and_decode_as_declared(
    amt: int, cust: str, memo: str, extra: dict[str, str]
) -> None:
    event = stored("Payment", 1, {"amt": amt, "cust": cust, "memo": memo, **extra})
    decoded = payments.decode(event)
    assert decoded == PaymentReceived(
        amount_cents=amt, customer_id=cust, note=memo.strip(), currency="EUR", tags=[]
    )
    (upcast,) = payments.upcast(event)
    assert (upcast.type, upcast.schema_version) == ("PaymentReceived", 2)
    assert upcast.data == msgspec.to_builtins(decoded)
    assert (upcast.event_id, upcast.stream_id, upcast.version, upcast.position) == (
        event.event_id,
        event.stream_id,
        event.version,
        event.position,
    )
    assert upcast.raw_metadata == event.raw_metadata and upcast.recorded_at == event.recorded_at


@given(amt=cents, cust=text, memo=text, channel=st.sampled_from(["web", "shop", "phone"]))
def test_every_stored_version_enters_the_chain_at_its_step(
    amt: int, cust: str, memo: str, channel: str
) -> None:
    expected = PaymentReceived(amt, cust, memo.strip(), "EUR", [], channel)
    base = {"amount_cents": amt, "customer_id": cust}
    assert payments.decode(stored("Payment", 3, {**base, "memo": memo, "channel": channel})) == (
        expected
    )
    v4 = {**base, "note": memo.strip(), "tags": [], "channel": channel}
    assert payments.decode(stored("Payment", 4, v4)) == expected
    assert payments.decode(stored("PaymentReceived", 1, v4)) == expected
    assert payments.decode(stored("PaymentReceived", 2, {**v4, "currency": "EUR"})) == expected


def test_a_current_event_is_not_touched() -> None:
    data = {"amount_cents": 1, "customer_id": "c", "note": "", "currency": "USD"}
    event = stored("PaymentReceived", 2, data)
    assert payments.upcast(event) == [event] and payments.upcast(event)[0] is event
    assert payments.decode(event).currency == "USD"


def test_additive_steps_need_no_upcaster_and_fill_defaults() -> None:
    reg = EventRegistry()

    @reg.event("Opened", version=3)
    @dataclass(frozen=True)
    class Opened:
        owner: str
        currency: str = "EUR"
        tier: int = 0

    assert reg.problems() == []
    assert reg.decode(stored("Opened", 1, {"owner": "ann"})) == Opened("ann")
    assert reg.decode(stored("Opened", 2, {"owner": "ann", "currency": "SEK"})) == Opened(
        "ann", "SEK"
    )
    (up,) = reg.upcast(stored("Opened", 1, {"owner": "ann"}))
    assert up.schema_version == 3 and up.data == {"owner": "ann", "currency": "EUR", "tier": 0}
    # an additive step without a default for the new field cannot decode: a named error
    reg2 = EventRegistry()

    @reg2.event("Opened", version=2)
    @dataclass(frozen=True)
    class Opened2:
        owner: str
        currency: str

    with pytest.raises(chronik.SerializationError, match="currency") as info:
        reg2.decode(stored("Opened", 1, {"owner": "ann"}))
    assert info.value.stream_id == "pay-1" and info.value.schema_version == 1


def test_split_and_drop() -> None:
    reg = EventRegistry()

    @reg.event("ItemAdded")
    @dataclass(frozen=True)
    class ItemAdded:
        sku: str

    @reg.event("PriceSet")
    @dataclass(frozen=True)
    class PriceSet:
        sku: str
        cents: int

    @reg.upcaster("ItemAddedWithPrice", from_version=1, to=["ItemAdded", "PriceSet"])
    def split(data: dict[str, Any]) -> list[Upcast]:
        return [
            Upcast("ItemAdded", {"sku": data["sku"]}),
            Upcast("PriceSet", {"sku": data["sku"], "cents": data["cents"]}),
        ]

    @reg.upcaster("CartViewed", from_version=1, to=[])
    def drop(data: dict[str, Any]) -> None:
        return None

    event = stored("ItemAddedWithPrice", 1, {"sku": "a", "cents": 5})
    assert reg.decode_many(event) == [ItemAdded("a"), PriceSet("a", 5)]
    with pytest.raises(chronik.UpcastError, match="2 events"):
        reg.decode(event)
    parts = reg.upcast(event)
    assert [p.type for p in parts] == ["ItemAdded", "PriceSet"]
    assert parts[0].event_id == event.event_id
    assert parts[1].event_id == split_event_id(event.event_id, 1) != event.event_id
    assert [p.event_id for p in reg.upcast(event)] == [p.event_id for p in parts]  # stable
    assert reg.decode_many(stored("CartViewed", 1, {})) == []
    assert reg.upcast(stored("CartViewed", 1, {})) == []
    assert set(reg.stored_types(["PriceSet"])) == {"PriceSet", "ItemAddedWithPrice"}


def test_unknown_and_future_events_name_stream_version_type_and_schema_version() -> None:
    with pytest.raises(chronik.UnknownEventType) as unknown:
        payments.decode(stored("Refund", 3, {}, stream_id="pay-9", version=2))
    message = str(unknown.value)
    assert "'Refund'" in message and "'pay-9'" in message and "version 2" in message
    assert "schema version 3" in message and unknown.value.schema_version == 3

    with pytest.raises(chronik.UpcastError) as future:
        payments.decode(stored("PaymentReceived", 3, {}, stream_id="pay-9", version=2))
    message = str(future.value)
    assert "newer" in message and "'pay-9' version 2" in message
    assert "'PaymentReceived' v3" in message
    assert isinstance(future.value, chronik.SerializationError)


def test_tolerant_mode_yields_raw_events_for_unknown_and_future_only() -> None:
    unknown = stored("Refund", 1, {})
    future = stored("PaymentReceived", 7, {})
    assert payments.upcast(unknown, tolerant=True) == [unknown]
    assert payments.upcast(future, tolerant=True) == [future]
    with pytest.raises(chronik.UpcastError, match="KeyError"):
        payments.upcast(stored("Payment", 1, {"cust": "x"}), tolerant=True)


def test_a_failing_upcaster_is_named_with_the_event() -> None:
    with pytest.raises(chronik.UpcastError) as info:
        payments.decode(stored("Payment", 1, {"cust": "x", "memo": ""}, version=8))
    message = str(info.value)
    assert "upcaster Payment v1 (payment_v1) raised KeyError" in message
    assert "'pay-1' version 8" in message and "'Payment' v1" in message
    cause = info.value.__cause__
    assert cause is not None and isinstance(cause.__cause__, KeyError)  # the upcaster's own


def test_an_upcaster_returning_what_it_did_not_declare_is_an_error() -> None:
    reg = EventRegistry()

    @reg.event("New")
    @dataclass(frozen=True)
    class New:
        x: int

    @reg.upcaster("Old", from_version=1, to="New")
    def wrong(data: dict[str, Any]) -> Any:
        return data  # a dict means Old v2, which it does not declare

    @reg.upcaster("Older", from_version=1, to="New")
    def wrong_type(data: dict[str, Any]) -> Any:
        return Upcast("Other", data)

    @reg.upcaster("Oldest", from_version=1, to="New")
    def nonsense(data: dict[str, Any]) -> Any:
        return 42

    with pytest.raises(chronik.UpcastError, match="returned a dict"):
        reg.decode(stored("Old", 1, {"x": 1}))
    with pytest.raises(chronik.UpcastError, match="'Other'"):
        reg.decode(stored("Older", 1, {"x": 1}))
    with pytest.raises(chronik.UpcastError, match="returned int"):
        reg.decode(stored("Oldest", 1, {"x": 1}))

    @reg.upcaster("Odd", from_version=1, to="New")
    def misfit(data: dict[str, Any]) -> Any:
        return Upcast("New", {"x": "not an int"})

    with pytest.raises(chronik.UpcastError, match="does not fit New v1") as info:
        reg.decode(stored("Odd", 1, {}))
    assert info.value.event_type == "Odd" and info.value.stream_id == "pay-1"


def test_validation_is_lazy_and_the_fast_path_never_pays_for_it() -> None:
    reg = EventRegistry()

    @reg.event("Fine", version=2)
    @dataclass(frozen=True)
    class Fine:
        x: int

    @reg.upcaster("Fine", from_version=1)
    def up(data: dict[str, Any]) -> dict[str, Any]:
        return data

    @reg.upcaster("Gone", from_version=2, to="Fine")
    def broken(data: dict[str, Any]) -> Upcast:
        return Upcast("Fine", data)

    # current versions decode without looking at the chains
    assert reg.decode(stored("Fine", 2, {"x": 1})) == Fine(1)
    with pytest.raises(chronik.RegistryError, match=r"missing step Gone v1"):
        reg.decode(stored("Fine", 1, {"x": 1}))
    with pytest.raises(chronik.RegistryError, match="missing step Gone v1"):
        reg.validate()

    @reg.upcaster("Gone", from_version=1)
    def fix(data: dict[str, Any]) -> dict[str, Any]:
        return data

    reg.validate()  # registering again made it check again
    assert reg.decode(stored("Gone", 1, {"x": 3})) == Fine(3)


def test_two_upcasters_for_one_step_are_refused_at_once() -> None:
    reg = EventRegistry()
    reg.register_upcaster("A", 1, lambda d: d)
    with pytest.raises(chronik.RegistryError, match="two upcasters for one step, A v1"):
        reg.register_upcaster("A", 1, lambda d: d)
    with pytest.raises(chronik.RegistryError, match="version must be an int >= 1"):
        reg.register_upcaster("A", 0, lambda d: d)
    with pytest.raises(chronik.RegistryError, match="to="):
        reg.register_upcaster("B", 1, lambda d: d, to=[3])


def test_downcast_for_consumers_on_the_old_schema() -> None:
    reg = EventRegistry()

    @reg.event("Named", version=2)
    @dataclass(frozen=True)
    class Named:
        first: str
        last: str

    @reg.upcaster("Named", from_version=1)
    def split_name(data: dict[str, Any]) -> dict[str, Any]:
        first, _, last = data["name"].partition(" ")
        return {"first": first, "last": last}

    @reg.downcaster("Named", from_version=2)
    def join_name(data: dict[str, Any]) -> dict[str, Any]:
        return {"name": f"{data['first']} {data['last']}"}

    assert reg.downcast(Named("Ada", "Lovelace"), to_version=1) == {"name": "Ada Lovelace"}
    old = stored("Named", 1, {"name": "Ada Lovelace"})
    assert reg.downcast(old, to_version=1) == {"name": "Ada Lovelace"}  # up, then down again
    assert reg.downcast(old, to_version=2) == {"first": "Ada", "last": "Lovelace"}
    with pytest.raises(chronik.UpcastError, match="between 1 and 2"):
        reg.downcast(old, to_version=3)
    reg2 = EventRegistry()
    reg2.register(Named, "Named", version=2)
    with pytest.raises(chronik.UpcastError, match="no downcaster for Named v2"):
        reg2.downcast(Named("a", "b"), to_version=1)


def test_describe_lists_chains_for_the_cli() -> None:
    by_type = {t["type"]: t for t in payments.describe()}
    assert by_type["PaymentReceived"]["version"] == 2
    assert by_type["PaymentReceived"]["class"] == "PaymentReceived"
    assert by_type["Payment"]["registered"] is False
    kinds = [(s["from_version"], s["kind"]) for s in by_type["Payment"]["steps"]]
    assert kinds == [(1, "upcaster"), (2, "upcaster"), (3, "upcaster"), (4, "upcaster")]
    assert by_type["Payment"]["steps"][3]["to"] == [{"type": "PaymentReceived", "version": 1}]
    assert payments.stored_types(["PaymentReceived"]) == ["Payment", "PaymentReceived"]


# -- chain validation against random registries ---------------------------------------------


@dataclass
class Shape:
    """A random valid registry: registered types with versions and some upcasters, and
    renamed-away types whose chains end in a registered type."""

    registered: dict[str, int]
    steps: dict[tuple[str, int], Any]  # (type, from) -> target (type, version) or None

    def build(self, *, skip: tuple[str, int] | None = None) -> EventRegistry:
        reg = EventRegistry()
        for name, version in self.registered.items():
            cls = make_dataclass(f"C{name}", [("x", int, 0)], frozen=True)
            reg.register(cls, name, version=version)
        for (name, version), target in self.steps.items():
            if (name, version) == skip:
                continue
            if target is None:
                reg.register_upcaster(name, version, _same)
            else:
                reg.register_upcaster(name, version, _rename_to(target), to=target)
        return reg


def _same(data: dict[str, Any]) -> dict[str, Any]:
    return data


def _rename_to(target: tuple[str, int]) -> Any:
    def rename(data: dict[str, Any]) -> Upcast:
        return Upcast(target[0], data, target[1])

    return rename


@st.composite
def shapes(draw: st.DrawFn) -> Shape:
    registered = {f"T{i}": draw(st.integers(1, 5)) for i in range(draw(st.integers(1, 3)))}
    steps: dict[tuple[str, int], Any] = {}
    for name, current in registered.items():
        for version in range(1, current):
            if draw(st.booleans()):
                steps[(name, version)] = None
    for j in range(draw(st.integers(0, 3))):
        old = f"Old{j}"
        last = draw(st.integers(1, 3))
        for version in range(1, last):
            steps[(old, version)] = None
        target = draw(st.sampled_from(sorted(registered)))
        steps[(old, last)] = (target, draw(st.integers(1, registered[target])))
    return Shape(registered, steps)


@settings(max_examples=200)
@given(shape=shapes())
def test_valid_random_registries_pass_and_every_chain_ends(shape: Shape) -> None:
    reg = shape.build()
    assert reg.problems() == []
    reg.validate()
    for (name, version), _ in shape.steps.items():
        (decoded,) = reg.decode_many(stored(name, version, {"x": 1}))
        assert type(decoded).__name__.startswith("CT")


BREAKAGES = ["gap", "cycle", "duplicate", "beyond", "dangling", "too_new", "self_cycle"]


@settings(max_examples=300)
@given(shape=shapes(), breakage=st.sampled_from(BREAKAGES), data=st.data())
def test_chain_validation_rejects_random_broken_registries(
    shape: Shape, breakage: str, data: st.DataObject
) -> None:
    renamed_away = sorted({n for n, _ in shape.steps if n not in shape.registered})
    name = data.draw(st.sampled_from(sorted(shape.registered)))
    current = shape.registered[name]
    if breakage == "gap":
        old = "Gap"
        last = data.draw(st.integers(2, 4))
        for version in range(1, last):
            shape.steps[(old, version)] = None
        shape.steps[(old, last)] = (name, 1)
        hole = data.draw(st.integers(1, last - 1))
        reg = shape.build(skip=(old, hole))
        expected = f"missing step Gap v{hole}"
    elif breakage == "cycle":
        shape.steps[("Ping", 1)] = ("Pong", 1)
        shape.steps[("Pong", 1)] = ("Ping", 1)
        reg = shape.build()
        expected = "cycle: "
    elif breakage == "self_cycle" and renamed_away:
        old = data.draw(st.sampled_from(renamed_away))
        last = max(v for n, v in shape.steps if n == old)
        shape.steps[(old, last)] = (old, 1)
        if last == 1:  # refused at registration
            with pytest.raises(chronik.RegistryError, match=f"{old} v1: a step cannot lead"):
                shape.build()
            return
        reg = shape.build()
        expected = "cycle: "
    elif breakage == "duplicate":
        reg = shape.build()
        if (name, 1) not in shape.steps:
            reg.register_upcaster(name, 1, lambda d: d)
        with pytest.raises(chronik.RegistryError, match=f"two upcasters for one step, {name} v1"):
            reg.register_upcaster(name, 1, lambda d: d)
        return
    elif breakage == "beyond":
        version = data.draw(st.integers(current, current + 2))
        shape.steps[(name, version)] = None
        reg = shape.build()
        expected = f"upcaster {name} v{version}"
    elif breakage == "dangling":
        shape.steps[("Lost", 1)] = ("Ghost", 1)
        reg = shape.build()
        expected = "missing step Ghost v1 (reached from Lost v1)"
    else:  # too_new (and self_cycle without a renamed-away type)
        shape.steps[("Stale", 1)] = (name, current + 1)
        reg = shape.build()
        expected = f"{name} is registered only up to v{current}"
    with pytest.raises(chronik.RegistryError) as info:
        reg.validate()
    assert expected in str(info.value)
    assert any(expected in p for p in reg.problems())
