"""Snapshot policies, state versions and the state codec: pure functions, no store."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import chronik
from chronik.snapshots import (
    Adaptive,
    AnyOf,
    EveryN,
    OnDemand,
    Periodic,
    SnapshotConfig,
    StreamStatus,
    state_version_of,
)


def status(
    version: int,
    snapshot_version: int = -1,
    age: float | None = None,
    replay_ms: float = 0.0,
    reads: int = 0,
    writes: int = 0,
) -> StreamStatus:
    return StreamStatus("s-1", version, snapshot_version, age, replay_ms, reads, writes)


def test_every_n_counts_events_since_the_snapshot() -> None:
    p = EveryN(3)
    assert not p.due(status(1))  # 2 events, no snapshot
    assert p.due(status(2))  # 3 events
    assert not p.due(status(4, snapshot_version=2))
    assert p.due(status(5, snapshot_version=2))
    assert not p.due(status(5, snapshot_version=5))


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_every_n_rejects_nonsense(bad: object) -> None:
    with pytest.raises(ValueError):
        EveryN(bad)  # type: ignore[arg-type]


def test_periodic_at_most_once_per_interval_and_only_with_new_events() -> None:
    p = Periodic(timedelta(hours=1))
    assert p.seconds == 3600
    assert p.due(status(0))  # no snapshot yet: at once
    assert not p.due(status(10, snapshot_version=5, age=3599))
    assert p.due(status(10, snapshot_version=5, age=3600))
    assert not p.due(status(5, snapshot_version=5, age=7200))  # nothing new
    assert not Periodic(60, min_events=10).due(status(14, snapshot_version=5, age=100))
    assert Periodic(60, min_events=10).due(status(15, snapshot_version=5, age=100))
    with pytest.raises(ValueError):
        Periodic(0)
    with pytest.raises(ValueError):
        Periodic(timedelta(seconds=-1))


def test_on_demand_is_never_due() -> None:
    assert not OnDemand().due(status(1_000_000))


def test_adaptive_budget_in_events_weighted_by_reads() -> None:
    p = Adaptive(budget_events=100)
    assert not p.due(status(49, reads=1))  # 50 events, one read
    assert p.due(status(49, reads=2))  # 50 events, 2 reads
    assert p.due(status(99, reads=1))
    capped = Adaptive(budget_events=100, read_weight=0)  # any single load <= 100 events
    assert not capped.due(status(49, reads=50))
    assert capped.due(status(99, reads=1))
    assert not p.due(status(5, snapshot_version=5, reads=1000))  # nothing to fold


def test_adaptive_weighs_reads_not_writes() -> None:
    """Writes alone never make a snapshot due before one load would fold the budget."""
    p = Adaptive(budget_events=100)
    assert not p.due(status(98, writes=99))  # 99 writes, no read: 99 events a load
    assert p.due(status(99, writes=100))
    assert p.due(status(9, writes=10, reads=10))  # 10 events x 10 reads
    assert not Adaptive(budget_ms=5.0).due(status(99, replay_ms=4.9, writes=100))


def test_adaptive_budget_in_milliseconds() -> None:
    p = Adaptive(budget_ms=5.0, read_weight=0.5)
    assert not p.due(status(10, replay_ms=4.0, reads=1))
    assert p.due(status(10, replay_ms=4.0, reads=2))  # 4 ms * 1.5
    assert p.due(status(10, replay_ms=5.0, reads=1))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"budget_ms": 0}, {"budget_events": 0}, {"budget_ms": 1.0, "read_weight": -1}],
)
def test_adaptive_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Adaptive(**kwargs)  # type: ignore[arg-type]


def test_any_of() -> None:
    p = AnyOf(EveryN(100), Periodic(60))
    assert p.due(status(99))
    assert p.due(status(10, snapshot_version=5, age=61))
    assert not p.due(status(10, snapshot_version=5, age=59))
    with pytest.raises(ValueError):
        AnyOf()


@given(
    version=st.integers(-1, 10_000),
    snap=st.integers(-1, 10_000),
    reads=st.integers(0, 1000),
    ms=st.floats(0, 1e6),
)
def test_no_policy_is_due_without_new_events(
    version: int, snap: int, reads: int, ms: float
) -> None:
    if version > snap:
        return
    s = status(version, snap, age=1e9, replay_ms=ms, reads=reads)
    for p in (EveryN(1), Periodic(1), OnDemand(), Adaptive(budget_ms=1e-9, budget_events=1)):
        assert not p.due(s), p


# -- state versions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class V1:
    """A state."""

    total: int = 0
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class V1Documented:
    """The same fields; only the docstring differs."""

    total: int = 0
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class V2Added:
    total: int = 0
    names: tuple[str, ...] = ()
    count: int = 0


@dataclass(frozen=True)
class V2Retyped:
    total: Decimal = Decimal(0)
    names: tuple[str, ...] = ()


class S1(msgspec.Struct, frozen=True):
    total: int = 0


class S2(msgspec.Struct, frozen=True):
    total: int = 0
    extra: list[int] = msgspec.field(default_factory=list)


def test_state_version_follows_the_fields_not_the_docs() -> None:
    v1 = state_version_of(V1)
    assert v1 == state_version_of(V1)  # stable
    assert len(v1) == 16
    assert state_version_of(V2Added) != v1
    assert state_version_of(V2Retyped) != v1
    assert state_version_of(S1) != state_version_of(S2)
    assert state_version_of(int) != state_version_of(str)
    assert state_version_of(dict[str, int]) != state_version_of(dict[str, float])


def test_docstrings_do_not_change_the_state_version() -> None:
    first = dataclasses.make_dataclass("Same", [("total", int, 0)], frozen=True)
    first.__doc__ = "One docstring."
    second = dataclasses.make_dataclass("Same", [("total", int, 0)], frozen=True)
    second.__doc__ = "Another docstring."
    assert state_version_of(first) == state_version_of(second)


def test_renaming_a_field_changes_the_state_version() -> None:
    before = dataclasses.make_dataclass("State", [("total", int, 0)], frozen=True)
    after = dataclasses.make_dataclass("State", [("sum", int, 0)], frozen=True)
    assert state_version_of(before) != state_version_of(after)


def test_explicit_version_goes_in_front_of_the_hash() -> None:
    digest = state_version_of(V1)
    assert state_version_of(V1, 3) == f"3+{digest}"
    assert state_version_of(V1, "2024-06") == f"2024-06+{digest}"
    assert (
        SnapshotConfig(V1, version=1).state_version != SnapshotConfig(V1, version=2).state_version
    )


def test_a_type_msgspec_cannot_describe_needs_an_explicit_version() -> None:
    class Opaque:
        pass

    with pytest.raises(TypeError, match="explicitly"):
        state_version_of(Opaque)
    assert state_version_of(Opaque, 7) == "7"


# -- the state codec ----------------------------------------------------------------------


def test_config_round_trips_dataclasses_and_structs() -> None:
    config = SnapshotConfig(V2Retyped)
    state = V2Retyped(Decimal("10.05"), ("a", "b"))
    raw = config.encode(state)
    assert config.decode(raw, V2Retyped) == state
    struct_config = SnapshotConfig(S2)
    assert struct_config.decode(struct_config.encode(S2(3, [1, 2])), S2) == S2(3, [1, 2])
    assert SnapshotConfig(int).decode(b"42", int) == 42


class Counter(chronik.Aggregate):
    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.seen: list[str] = []
        self.cache: dict[str, int] = {}  # not part of the snapshot

    def apply(self, event: object) -> None:
        pass


@dataclass
class CounterFields:
    total: int = 0
    seen: list[str] = field(default_factory=list)


def test_an_aggregate_is_snapshotted_through_a_record_of_its_attributes() -> None:
    config = SnapshotConfig(CounterFields)
    agg = Counter()
    agg.total = 5
    agg.seen = ["x"]
    agg.cache = {"ignored": 1}
    raw = config.encode(agg)
    assert msgspec.json.decode(raw) == {"total": 5, "seen": ["x"]}
    back = config.decode(raw, Counter)
    assert isinstance(back, Counter)
    assert (back.total, back.seen, back.cache) == (5, ["x"], {})
    assert config.record(back) == config.record(agg)


def test_policy_defaults_and_validation() -> None:
    config = SnapshotConfig(V1)
    assert config.policy == EveryN(100)
    assert config.keep == 3 and config.inline
    assert "V1" in repr(config)
    with pytest.raises(ValueError):
        SnapshotConfig(V1, keep=0)
