"""What to snapshot: the state type, its state version, the policy and retention."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from chronik.snapshots.policies import EveryN, SnapshotPolicy

__all__ = ["SnapshotConfig", "stale_versions", "state_version_of"]


def _strip_docs(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {k: _strip_docs(v) for k, v in schema.items() if k not in ("description",)}
    if isinstance(schema, list):
        return [_strip_docs(v) for v in schema]
    return schema


def state_version_of(state_type: Any, version: str | int | None = None) -> str:
    """The state version of snapshots of ``state_type``: a hash of its fields and their types.

    The hash covers the JSON schema msgspec derives from the type (field names, types,
    defaults, nested types; not docstrings), so adding, removing, renaming or retyping a
    field changes it and old snapshots are ignored. An explicit ``version`` is put in front
    (``"3+1a2b..."``): bump it when ``evolve`` changes meaning without the state type
    changing.

    Raises:
        TypeError: msgspec cannot describe the type (and no explicit version was given).
    """
    try:
        schema = msgspec.json.schema(state_type)
    except (TypeError, ValueError) as exc:
        if version is None:
            raise TypeError(
                f"cannot derive a state version from {state_type!r} ({exc}); "
                f"pass version=... explicitly"
            ) from exc
        return str(version)
    canonical = msgspec.json.encode(_strip_docs(schema), order="sorted")
    digest = hashlib.sha256(canonical).hexdigest()[:16]
    return digest if version is None else f"{version}+{digest}"


def _record_fields(state_type: Any) -> tuple[str, ...] | None:
    if isinstance(state_type, type):
        if dataclasses.is_dataclass(state_type):
            return tuple(f.name for f in dataclasses.fields(state_type))
        if issubclass(state_type, msgspec.Struct):
            return tuple(state_type.__struct_fields__)
    return None


class SnapshotConfig:
    """How one kind of stream is snapshotted: state type, state version, policy, retention.

    Args:
        state_type: the type of the state a decider folds (a dataclass, a
            ``msgspec.Struct``, or anything msgspec encodes: ``int``, ``dict[str, int]``...).
            For an :class:`~chronik.Aggregate`, a dataclass or Struct whose fields are the
            aggregate's attributes: those are copied out into the snapshot and back into a
            fresh ``factory()`` object on load (attributes not listed are not kept).
        policy: when snapshots are taken automatically (default ``EveryN(100)``).
        version: an explicit state version, put in front of the type's hash.
        keep: how many snapshots to keep per stream (older ones are deleted on save).
        inline: evaluate the policy in the request path (after loads and appends of a
            :class:`~chronik.CommandHandler` or :class:`~chronik.Repository`); ``False``
            leaves it to a :class:`~chronik.snapshotter.Snapshotter` and ``take_snapshot``.
        clock: seconds since the epoch, read when a policy is evaluated (the age of the
            newest snapshot, for :class:`Periodic`) and for ``created_at`` of a snapshot
            written; ``time.time`` by default (tests and examples move time with it).

    The state must survive a msgspec JSON round trip and compare by value (dataclasses and
    Structs do): a state that does not (``NaN``, a field holding a value of another type
    than declared) is never snapshotted, and a warning says why.
    """

    def __init__(
        self,
        state_type: Any,
        *,
        policy: SnapshotPolicy | None = None,
        version: str | int | None = None,
        keep: int = 3,
        inline: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.state_type = state_type
        self.policy: SnapshotPolicy = policy if policy is not None else EveryN(100)
        self.state_version = state_version_of(state_type, version)
        self.keep = keep
        self.inline = inline
        self.clock = clock
        self._encode = msgspec.json.Encoder().encode
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(state_type)
        self._fields = _record_fields(state_type)

    def __repr__(self) -> str:
        name = getattr(self.state_type, "__qualname__", repr(self.state_type))
        return (
            f"SnapshotConfig({name}, policy={self.policy!r}, "
            f"state_version={self.state_version!r}, keep={self.keep})"
        )

    def _mirrored(self, state: Any) -> bool:
        return self._fields is not None and not isinstance(state, self.state_type)

    def record(self, state: Any) -> Any:
        """The value stored for ``state``: itself, or its field record for an aggregate."""
        if self._mirrored(state):
            assert self._fields is not None
            return self.state_type(**{name: getattr(state, name) for name in self._fields})
        return state

    def encode(self, state: Any) -> bytes:
        return self._encode(self.record(state))

    def decode_record(self, raw: bytes) -> Any:
        return self._decoder.decode(raw)

    def decode(self, raw: bytes, initial_state: Callable[[], Any]) -> Any:
        """The state a snapshot holds (a fresh ``initial_state()`` filled in, for aggregates)."""
        record = self._decoder.decode(raw)
        if self._fields is None:
            return record
        fresh = initial_state()
        if isinstance(fresh, self.state_type):
            return record
        for name in self._fields:
            setattr(fresh, name, getattr(record, name))
        return fresh


def stale_versions(configs: Iterable[tuple[str, SnapshotConfig]]) -> dict[str, str]:
    """Category → current state version, for :meth:`SnapshotStore.prune` (``stale=``)."""
    return {category: config.state_version for category, config in configs}
