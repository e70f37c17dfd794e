"""Typed events: the registry that maps stable type names to classes, and msgspec JSON.

Declare an event once::

    @chronik.event("AccountOpened", version=1)
    @dataclass(frozen=True)
    class AccountOpened:
        owner: str
        currency: str

The stored type name is the string given, never an import path, so moving or renaming the
class never breaks stored data. msgspec validates types when decoding.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from chronik.errors import RegistryError, SerializationError, UnknownEventType
from chronik.events import NewEvent, RecordedEvent, new_event_id

__all__ = ["EventRegistry", "EventType", "default_registry", "event"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class EventType:
    """One registered event type."""

    name: str
    version: int
    cls: type[Any]
    decoder: msgspec.json.Decoder[Any]


class EventRegistry:
    """Maps event type names to classes, encodes events and decodes stored ones.

    Decoders are built once per type at registration, so decoding is one msgspec call.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, EventType] = {}
        self._by_class: dict[type[Any], EventType] = {}
        self._encode = msgspec.json.Encoder().encode

    def register(self, cls: type[T], name: str | None = None, *, version: int = 1) -> type[T]:
        """Register ``cls`` (a dataclass or msgspec Struct) under a stable ``name``.

        Raises:
            RegistryError: the name is taken by another class, the class is registered
                under another name, or it is neither a dataclass nor a Struct.
        """
        name = name if name is not None else cls.__name__
        if not isinstance(name, str) or not name or name != name.strip():
            raise RegistryError(f"event type name must be a non-empty string, not {name!r}")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RegistryError(f"{name}: schema version must be an int >= 1, not {version!r}")
        if not (dataclasses.is_dataclass(cls) or issubclass(cls, msgspec.Struct)):
            raise RegistryError(f"{name}: {cls!r} is neither a dataclass nor a msgspec.Struct")
        existing = self._by_name.get(name)
        if existing is not None and existing.cls is not cls:
            raise RegistryError(
                f"event type {name!r} is registered already, for {existing.cls.__qualname__}"
            )
        other = self._by_class.get(cls)
        if other is not None and other.name != name:
            raise RegistryError(f"{cls.__qualname__} is registered already as {other.name!r}")
        entry = EventType(name, version, cls, msgspec.json.Decoder(cls))
        self._by_name[name] = entry
        self._by_class[cls] = entry
        return cls

    def event(self, name: str | None = None, *, version: int = 1) -> Callable[[type[T]], type[T]]:
        """Class decorator form of :meth:`register`."""

        def decorate(cls: type[T]) -> type[T]:
            return self.register(cls, name, version=version)

        return decorate

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def types(self) -> list[EventType]:
        """Every registered type, by name."""
        return sorted(self._by_name.values(), key=lambda e: e.name)

    def type_of(self, obj: object) -> EventType:
        """The registration of an event object's class."""
        entry = self._by_class.get(type(obj))
        if entry is None:
            raise UnknownEventType(type(obj).__qualname__)
        return entry

    def lookup(self, name: str) -> EventType:
        entry = self._by_name.get(name)
        if entry is None:
            raise UnknownEventType(name)
        return entry

    def to_new_event(
        self,
        obj: object,
        *,
        metadata: Mapping[str, Any] | None = None,
        event_id: uuid.UUID | None = None,
    ) -> NewEvent:
        """Encode a registered event object into a :class:`NewEvent` for ``append``."""
        entry = self.type_of(obj)
        try:
            data = self._encode(obj)
        except (TypeError, ValueError) as exc:
            raise SerializationError(str(exc), event_type=entry.name) from exc
        return NewEvent(
            type=entry.name,
            data=data,
            metadata=metadata,
            event_id=event_id if event_id is not None else new_event_id(),
            schema_version=entry.version,
        )

    def to_new_events(self, objs: Iterable[object]) -> list[NewEvent]:
        return [self.to_new_event(obj) for obj in objs]

    def decode(self, recorded: RecordedEvent) -> Any:
        """Decode a stored event into its registered class.

        Raises:
            UnknownEventType: the stored type is not registered.
            SerializationError: the data does not fit the class, or was written by a newer
                schema version than this code knows.
        """
        entry = self._by_name.get(recorded.type)
        if entry is None:
            raise UnknownEventType(
                recorded.type,
                stream_id=recorded.stream_id,
                version=recorded.version,
                schema_version=recorded.schema_version,
            )
        if recorded.schema_version > entry.version:
            raise SerializationError(
                f"stored schema version {recorded.schema_version} is newer than this code's "
                f"{entry.version}",
                event_type=recorded.type,
                stream_id=recorded.stream_id,
                version=recorded.version,
                schema_version=recorded.schema_version,
            )
        try:
            return entry.decoder.decode(recorded.raw_data)
        except msgspec.DecodeError as exc:
            raise SerializationError(
                f"cannot decode event: {exc}",
                event_type=recorded.type,
                stream_id=recorded.stream_id,
                version=recorded.version,
                schema_version=recorded.schema_version,
            ) from exc


default_registry = EventRegistry()


def event(name: str | None = None, *, version: int = 1) -> Callable[[type[T]], type[T]]:
    """Register an event class in the default registry under a stable type name."""
    return default_registry.event(name, version=version)
