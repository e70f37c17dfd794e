"""Typed events: the registry that maps stable type names to classes, and msgspec JSON.

Declare an event once::

    @chronik.event("AccountOpened", version=1)
    @dataclass(frozen=True)
    class AccountOpened:
        owner: str
        currency: str

The stored type name is the string given, never an import path, so moving or renaming the
class never breaks stored data. msgspec validates types when decoding.

Old shapes are read through upcasters registered with the same registry (see
:mod:`chronik.upcasting` and docs/schema-evolution.md)::

    @registry.upcaster("AccountOpened", from_version=1)
    def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "currency": "EUR"}

An event stored at the registered version decodes with one msgspec call; only older ones go
through their chain.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import msgspec.inspect

from chronik.errors import RegistryError, SerializationError, UnknownEventType, UpcastError
from chronik.events import NewEvent, RecordedEvent, find_non_finite, new_event_id
from chronik.upcasting import UpcasterFn, Upcasters, UpcastFailure, split_event_id

__all__ = ["EventRegistry", "EventType", "default_registry", "event"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode


@dataclass(frozen=True, slots=True)
class EventType:
    """One registered event type."""

    name: str
    version: int
    cls: type[Any]
    decoder: msgspec.json.Decoder[Any]
    personal: tuple[str, ...] = ()
    """Top-level fields holding personal data: stored encrypted under the key of the data
    subject named by :attr:`subject` (see :mod:`chronik.security.shredding`)."""
    subject: str | None = None
    """The field naming the data subject (kept in clear: use a pseudonymous id)."""
    erased: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """What a personal field reads as once its subject is forgotten (default ``None``)."""


class EventRegistry:
    """Maps event type names to classes, encodes events and decodes stored ones.

    Decoders are built once per type at registration, so decoding is one msgspec call.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, EventType] = {}
        self._by_class: dict[type[Any], EventType] = {}
        self._encode = msgspec.json.Encoder().encode
        self._upcasters = Upcasters()
        self._checked = False
        self._current: dict[str, int] = {}
        self._direct: dict[str, int] = {}
        self._floats: dict[str, bool] = {}  # by name: may the class hold a float?

    def register(
        self,
        cls: type[T],
        name: str | None = None,
        *,
        version: int = 1,
        personal: Iterable[str] = (),
        subject: str | None = None,
        erased: Mapping[str, Any] | None = None,
    ) -> type[T]:
        """Register ``cls`` (a dataclass or msgspec Struct) under a stable ``name``.

        ``personal`` names top-level fields holding personal data and ``subject`` the field
        naming their data subject: a store wrapped by
        :class:`chronik.security.ShreddingStore` keeps those fields encrypted under the
        subject's key, and ``erased`` gives what each reads as once the subject is
        forgotten (default ``None``; give a value the field's type accepts).

        Raises:
            RegistryError: the name is taken by another class, the class is registered
                under another name, or it is neither a dataclass nor a Struct; a personal,
                subject or erased field the class does not have, or a subject also personal.
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
        personal_fields, subject_field, replacements = _personal(
            name, cls, personal, subject, erased
        )
        entry = EventType(
            name,
            version,
            cls,
            msgspec.json.Decoder(cls),
            personal_fields,
            subject_field,
            replacements,
        )
        self._by_name[name] = entry
        self._by_class[cls] = entry
        self._floats[name] = _may_hold_float(cls)
        self._checked = False
        return cls

    def event(
        self,
        name: str | None = None,
        *,
        version: int = 1,
        personal: Iterable[str] = (),
        subject: str | None = None,
        erased: Mapping[str, Any] | None = None,
    ) -> Callable[[type[T]], type[T]]:
        """Class decorator form of :meth:`register`."""

        def decorate(cls: type[T]) -> type[T]:
            return self.register(
                cls, name, version=version, personal=personal, subject=subject, erased=erased
            )

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
        """Encode a registered event object into a :class:`NewEvent` for ``append``.

        Raises:
            UnknownEventType: the object's class is not registered.
            SerializationError: it cannot be encoded as JSON, or holds a NaN or an infinite
                float (which JSON cannot hold: msgspec would write ``null``).
        """
        entry = self.type_of(obj)
        try:
            data = self._encode(obj)
        except (TypeError, ValueError) as exc:
            raise SerializationError(str(exc), event_type=entry.name) from exc
        if b"null" in data and self._floats.get(entry.name, True):
            path = find_non_finite(msgspec.to_builtins(obj))
            if path is not None:
                raise SerializationError(
                    f"holds NaN or Infinity at {path}, which JSON cannot hold",
                    event_type=entry.name,
                )
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
        """Decode a stored event into its registered class, upcasting an older schema version.

        Raises:
            UnknownEventType: the stored type is not registered and no upcaster knows it.
            UpcastError: the stored schema version is newer than this code's, a step of its
                chain fails or is missing, or it upcasts into several events or none (read
                those with :meth:`decode_many`).
            SerializationError: the data does not fit the class.
            RegistryError: the upcaster chains are broken (checked on first use).
        """
        entry = self._by_name.get(recorded.type)
        if entry is not None and recorded.schema_version == entry.version:
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
        events = self._decode_slow(recorded, entry)
        if len(events) != 1:
            raise self._error(
                recorded,
                f"upcasts into {len(events)} events, not one: read it with decode_many()",
            )
        return events[0]

    def decode_many(self, recorded: RecordedEvent) -> list[Any]:
        """Decode a stored event into the events its upcaster chain makes of it: usually one,
        several after a split, none when an upcaster drops it. Raises as :meth:`decode`."""
        entry = self._by_name.get(recorded.type)
        if entry is not None and recorded.schema_version == entry.version:
            return [self.decode(recorded)]
        return self._decode_slow(recorded, entry)

    # -- upcasting ------------------------------------------------------------------------

    def upcaster(self, type: str, from_version: int, *, to: object = None) -> Callable[[F], F]:
        """Register the decorated function as the upcaster of one step.

        It gets the stored data of ``type`` at ``from_version`` as a fresh dict and returns
        a dict (``type`` at ``from_version + 1``), an :class:`~chronik.upcasting.Upcast` or a
        list of them, or ``None`` to drop the event. ``to`` declares any other result: a
        type name (a rename, at its version 1), a ``(name, version)`` pair, or a list of
        these (a split). See :mod:`chronik.upcasting`.

        Raises:
            RegistryError: another upcaster has this step, or the arguments are malformed.
        """

        def decorate(fn: F) -> F:
            self.register_upcaster(type, from_version, fn, to=to)
            return fn

        return decorate

    def register_upcaster(
        self, type: str, from_version: int, fn: UpcasterFn, *, to: object = None
    ) -> None:
        """Function form of :meth:`upcaster`."""
        self._upcasters.add(type, from_version, fn, to)
        self._checked = False

    def downcaster(self, type: str, from_version: int) -> Callable[[F], F]:
        """Register the decorated function as making ``from_version - 1`` data of ``type``
        out of ``from_version`` data: the old shape for consumers not upgraded yet."""

        def decorate(fn: F) -> F:
            self._upcasters.add_downcaster(type, from_version, fn)
            self._checked = False
            return fn

        return decorate

    @property
    def has_upcasters(self) -> bool:
        """Whether any upcaster is registered (one may split or drop events)."""
        return bool(self._upcasters)

    @property
    def upcasters(self) -> Upcasters:
        """The registered steps (read-only use: register through :meth:`upcaster`)."""
        return self._upcasters

    def problems(self) -> list[str]:
        """What is wrong with the upcaster chains, one line per problem naming its step."""
        return self._upcasters.problems({n: e.version for n, e in self._by_name.items()})

    def validate(self) -> None:
        """Check every upcaster chain: no gap, no cycle, nothing beyond a registered version.

        Runs by itself before the first event is upcast; call it at start-up to fail early.

        Raises:
            RegistryError: listing each problem with the step it concerns.
        """
        if self._checked:
            return
        current = {n: e.version for n, e in self._by_name.items()}
        self._upcasters.validate(current)
        self._current = current
        self._direct = self._upcasters.direct_from(current)
        self._checked = True

    def describe(self) -> list[dict[str, Any]]:
        """Every known type with its version, class and chain (JSON-ready, by name)."""
        out = self._upcasters.describe({n: e.version for n, e in self._by_name.items()})
        for item in out:
            entry = self._by_name.get(item["type"])
            item["class"] = None if entry is None else entry.cls.__qualname__
        return out

    def stored_types(self, types: Iterable[str]) -> list[str]:
        """The stored type names whose events upcast into one of ``types`` (for filters:
        a reader that wants ``OrderSubmitted`` must also read ``OrderPlaced`` it was renamed
        from)."""
        wanted = list(types)
        if not self._upcasters:
            return wanted
        self.validate()
        return sorted(self._upcasters.sources_of(wanted, self._current))

    def upcast(self, recorded: RecordedEvent, *, tolerant: bool = False) -> list[RecordedEvent]:
        """The stored event as the events the code knows today, for readers of dicts.

        An event at its registered version comes back as it is (the same object). An older
        one comes back upcast, validated against its class and encoded again (so fields
        added since carry their defaults), with the stored event's stream, version, position,
        metadata and time; the parts of a split share them, the first keeps the event id
        and the others get ids derived from it (:func:`chronik.upcasting.split_event_id`).

        With ``tolerant``, an event of a type the code does not know, or of a newer schema
        version, comes back raw instead of raising.

        Raises:
            UnknownEventType, UpcastError, SerializationError: as :meth:`decode`.
        """
        entry = self._by_name.get(recorded.type)
        if entry is not None and recorded.schema_version == entry.version:
            return [recorded]
        try:
            parts = self._parts(recorded, entry)
        except UnknownEventType:
            if tolerant:
                return [recorded]
            raise
        except _Newer as newer:
            if tolerant:
                return [recorded]
            raise newer.error from None
        out: list[RecordedEvent] = []
        for index, (kind, obj) in enumerate(parts):
            try:
                raw = self._encode(_plain(obj))
            except (TypeError, ValueError) as exc:  # pragma: no cover - decoded just before
                raise self._error(recorded, f"cannot encode the upcast event: {exc}") from exc
            out.append(
                RecordedEvent.from_stored(
                    recorded.position,
                    recorded.stream_id,
                    recorded.version,
                    split_event_id(recorded.event_id, index),
                    kind.name,
                    kind.version,
                    raw,
                    recorded.raw_metadata,
                    recorded.recorded_at,
                )
            )
        return out

    def downcast(self, event: object, *, to_version: int) -> dict[str, Any]:
        """The data of ``event`` in the shape of schema version ``to_version`` of its type.

        ``event`` is a registered event object, or a stored event (upcast to the current
        version first). For consumers still on the old schema during a transition.

        Raises:
            UpcastError: a downcaster is missing or fails, or the stored event upcasts into
                several events or none.
        """
        if isinstance(event, RecordedEvent):
            parts = self.upcast(event)
            if len(parts) != 1:
                raise self._error(event, f"upcasts into {len(parts)} events, not one")
            current = parts[0]
            name, version = current.type, current.schema_version
            data = _decode_dict(current.raw_data)
        else:
            entry = self.type_of(event)
            name, version = entry.name, entry.version
            data = _decode_dict(self._encode(_plain(event)))
        try:
            return self._upcasters.run_down(name, version, to_version, data)
        except UpcastFailure as exc:
            if isinstance(event, RecordedEvent):
                raise self._error(event, str(exc)) from exc
            raise UpcastError(str(exc), event_type=name, schema_version=version) from exc

    # -- the slow path: stored versions below the registered one --------------------------

    def _error(self, recorded: RecordedEvent, message: str) -> UpcastError:
        return UpcastError(
            message,
            event_type=recorded.type,
            stream_id=recorded.stream_id,
            version=recorded.version,
            schema_version=recorded.schema_version,
        )

    def _decode_slow(self, recorded: RecordedEvent, entry: EventType | None) -> list[Any]:
        try:
            return [obj for _, obj in self._parts(recorded, entry)]
        except _Newer as newer:
            raise newer.error from None

    def _parts(
        self, recorded: RecordedEvent, entry: EventType | None
    ) -> list[tuple[EventType, Any]]:
        """Run the chain of a stored event and decode each result into its class."""
        if not self._checked:
            self.validate()
        sv = recorded.schema_version
        if entry is not None and self._direct.get(entry.name, entry.version) <= sv < entry.version:
            return [(entry, self._decode_into(recorded, entry, recorded.raw_data))]
        try:
            data = _decode_dict(recorded.raw_data)
        except msgspec.DecodeError as exc:
            raise SerializationError(
                f"cannot decode event: {exc}",
                event_type=recorded.type,
                stream_id=recorded.stream_id,
                version=recorded.version,
                schema_version=sv,
            ) from exc
        try:
            results = self._upcasters.run(recorded.type, sv, data, self._current)
        except UpcastFailure as exc:
            if exc.unknown:
                raise UnknownEventType(
                    recorded.type,
                    stream_id=recorded.stream_id,
                    version=recorded.version,
                    schema_version=sv,
                ) from None
            error = self._error(recorded, str(exc))
            if exc.newer:
                raise _Newer(error) from None
            raise error from exc
        out: list[tuple[EventType, Any]] = []
        for name, _version, result in results:
            kind = self._by_name[name]
            try:
                raw = self._encode(result)
            except (TypeError, ValueError) as exc:
                raise self._error(
                    recorded, f"the upcast {name} data cannot be encoded: {exc}"
                ) from exc
            out.append((kind, self._decode_into(recorded, kind, raw, upcast=True)))
        return out

    def _decode_into(
        self, recorded: RecordedEvent, kind: EventType, raw: bytes, *, upcast: bool = False
    ) -> Any:
        try:
            return kind.decoder.decode(raw)
        except msgspec.DecodeError as exc:
            if upcast:
                raise self._error(
                    recorded, f"the upcast data does not fit {kind.name} v{kind.version}: {exc}"
                ) from exc
            raise SerializationError(
                f"cannot decode event as {kind.name} v{kind.version}: {exc}",
                event_type=recorded.type,
                stream_id=recorded.stream_id,
                version=recorded.version,
                schema_version=recorded.schema_version,
            ) from exc


def _field_names(cls: type[Any]) -> set[str]:
    """The encoded field names of a dataclass or Struct (a Struct may rename them)."""
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    return set(getattr(cls, "__struct_encode_fields__", ()))


def _personal(
    name: str,
    cls: type[Any],
    personal: Iterable[str],
    subject: str | None,
    erased: Mapping[str, Any] | None,
) -> tuple[tuple[str, ...], str | None, dict[str, Any]]:
    """Check a personal-data declaration against the class: every field must exist."""
    if isinstance(personal, str):
        raise RegistryError(f"{name}: personal must be a list of field names, not a string")
    fields = tuple(personal)
    replacements = dict(erased or {})
    if not fields:
        if subject is not None or replacements:
            raise RegistryError(f"{name}: subject/erased given without personal fields")
        return (), None, {}
    known = _field_names(cls)
    for field_name in (*fields, *replacements):
        if not isinstance(field_name, str) or field_name not in known:
            raise RegistryError(f"{name}: {cls.__qualname__} has no field {field_name!r}")
    if len(set(fields)) != len(fields):
        raise RegistryError(f"{name}: a personal field is named twice")
    for field_name in replacements:
        if field_name not in fields:
            raise RegistryError(f"{name}: erased value for {field_name!r}, not a personal field")
    if subject is None or subject not in known:
        raise RegistryError(f"{name}: personal fields need subject=<a field of the class>")
    if subject in fields:
        raise RegistryError(f"{name}: the subject field {subject!r} cannot be personal")
    for field_name in fields:
        replacements.setdefault(field_name, _default_erased(cls, field_name))
    return fields, subject, replacements


def _default_erased(cls: type[Any], field_name: str) -> Any:
    """``"[erased]"`` for a field typed ``str``, else ``None``."""
    try:
        info = msgspec.inspect.type_info(cls)
    except Exception:
        return None
    for field in getattr(info, "fields", ()):
        if field.encode_name == field_name and isinstance(field.type, msgspec.inspect.StrType):
            return "[erased]"
    return None


_FLOATING = (msgspec.inspect.FloatType, msgspec.inspect.AnyType, msgspec.inspect.CustomType)


def _may_hold_float(cls: type[Any]) -> bool:
    """Whether an event class can hold a float anywhere: only then can its encoded JSON hold
    a NaN or an Infinity written as ``null``, which :meth:`EventRegistry.to_new_event` looks
    for. ``True`` when msgspec cannot tell."""
    try:
        root = msgspec.inspect.type_info(cls)
    except Exception:  # a type msgspec cannot describe: look into each event
        return True
    seen: set[int] = set()
    todo: list[Any] = [root]
    while todo:
        kind = todo.pop()
        if id(kind) in seen:
            continue
        seen.add(id(kind))
        if isinstance(kind, _FLOATING):
            return True
        todo.extend(getattr(kind, name, None) for name in ("item_type", "key_type", "value_type"))
        todo.extend(getattr(kind, "types", ()) or ())
        todo.extend(getattr(kind, "item_types", ()) or ())
        todo.extend(field.type for field in getattr(kind, "fields", ()) or ())
    return False


def _plain(obj: Any) -> Any:
    """``obj`` ready to encode with every field: a dataclass that msgspec decoded leaves
    fields at their (class-level) defaults out of ``__dict__``, and the encoder skips them."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    return obj


class _Newer(Exception):
    """Carries the UpcastError of a schema version newer than the code's (tolerant readers
    take the raw event instead)."""

    def __init__(self, error: UpcastError) -> None:
        self.error = error


default_registry = EventRegistry()


def event(
    name: str | None = None,
    *,
    version: int = 1,
    personal: Iterable[str] = (),
    subject: str | None = None,
    erased: Mapping[str, Any] | None = None,
) -> Callable[[type[T]], type[T]]:
    """Register an event class in the default registry under a stable type name
    (``personal``/``subject``/``erased``: see :meth:`EventRegistry.register`)."""
    return default_registry.event(
        name, version=version, personal=personal, subject=subject, erased=erased
    )
