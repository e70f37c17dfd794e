"""The seed's CRM: a breaking schema change, served in both shapes during the transition.

``ContactRegistered`` v1 had one ``name`` and one ``email``. Version 2 splits the name into
``first_name``/``last_name`` and allows several ``emails``: a semantic change, so an
upcaster converts v1 events on read. Other services still consume the v1 shape, so for a
transition period the CRM dual-writes:

- integration messages in both shapes: ``crm.contact.v2`` and, made by a *downcaster*,
  ``crm.contact.v1`` (each with a message id derived from the event id, so a broker with
  dedupe, e.g. JetStream's ``Nats-Msg-Id``, drops redelivered copies);
- a secondary store in the old shape, for the legacy reporting that reads it directly
  (appended with the same event ids, so a retried append writes nothing twice).

Then history is rewritten in the new shape without stopping the CRM (the zero-downtime
migration of docs/schema-evolution.md): a :class:`~chronik.migrate.CopyFollower` copies
the store into a new one, upcast, while the CRM keeps writing through a
:class:`~chronik.migrate.MigratingStore`; :func:`~chronik.migrate.cutover` fences the old
store, copies its last events, verifies and marks the migration complete; the CRM's next
write lands in the new store, and the projections move there with their checkpoints mapped
(:func:`~chronik.migrate.map_checkpoint`).

Run it::

    python examples/crm_contacts.py --store sqlite:///crm.db --legacy sqlite:///crm-v1.db \
        --new sqlite:///crm-v2.db
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import chronik
from chronik import NewEvent, RecordedEvent
from chronik.migrate import (
    CopyFollower,
    CopyProgress,
    MigratingStore,
    copy_store,
    cutover,
    map_checkpoint,
)
from chronik.projections import ExternalProjection, ProjectionRunner

registry = chronik.EventRegistry()


@registry.event("ContactRegistered", version=2)
@dataclass(frozen=True)
class ContactRegistered:
    first_name: str
    last_name: str
    emails: list[str]


@registry.upcaster("ContactRegistered", from_version=1)
def split_name(data: dict[str, Any]) -> dict[str, Any]:
    """v1 → v2: "Ada King Lovelace" → first "Ada", last "King Lovelace"; one email → a list."""
    first, _, last = data["name"].strip().partition(" ")
    return {"first_name": first, "last_name": last, "emails": [data["email"]]}


@registry.downcaster("ContactRegistered", from_version=2)
def join_name(data: dict[str, Any]) -> dict[str, Any]:
    """v2 → v1 for consumers not upgraded yet: the first email is the one they know."""
    name = f"{data['first_name']} {data['last_name']}".strip()
    return {"name": name, "email": data["emails"][0] if data["emails"] else ""}


legacy_registry = chronik.EventRegistry()


@legacy_registry.event("ContactRegistered", version=1)
@dataclass(frozen=True)
class ContactRegisteredV1:
    name: str
    email: str


@dataclass
class Bus:
    """Stands in for the message broker: published messages, deduplicated by message id."""

    messages: dict[str, dict[str, Any]]

    def publish(self, subject: str, message_id: str, data: dict[str, Any]) -> None:
        self.messages.setdefault(message_id, {"subject": subject, "data": data})

    def on(self, subject: str) -> list[dict[str, Any]]:
        return [m["data"] for m in self.messages.values() if m["subject"] == subject]


class IntegrationPublisher(ExternalProjection):
    """Publishes every contact in the new shape and, during the transition, the old one."""

    name = "crm_integration"
    event_types = ["ContactRegistered"]
    registry = registry  # v1 events arrive upcast: one code path for both

    def __init__(self, bus: Bus, *, dual_write: bool = True) -> None:
        self.bus = bus
        self.dual_write = dual_write

    async def handle(self, event: RecordedEvent) -> None:
        contact = event.stream_id.partition("-")[2]
        self.bus.publish("crm.contact.v2", f"{event.event_id}", {"id": contact, **event.data})
        if self.dual_write:
            old = registry.downcast(event, to_version=1)
            self.bus.publish("crm.contact.v1", f"{event.event_id}.v1", {"id": contact, **old})


class LegacyMirror(ExternalProjection):
    """Keeps a secondary store in the v1 shape for the legacy reporting that reads it."""

    name = "crm_legacy_mirror"
    event_types = ["ContactRegistered"]
    registry = registry

    def __init__(self, legacy: chronik.EventStore) -> None:
        self.legacy = legacy

    async def handle(self, event: RecordedEvent) -> None:
        old = NewEvent(
            event.type,
            registry.downcast(event, to_version=1),
            metadata=event.metadata,
            event_id=event.event_id,  # a redelivery appends nothing twice
            schema_version=1,
        )
        expected = event.version - 1 if event.version else chronik.NO_STREAM
        await self.legacy.append(event.stream_id, [old], expected_version=expected)


app = chronik.App(registry=registry)


async def run(
    url: str, legacy_url: str, say: Any = print, *, new_url: str | None = None
) -> dict[str, Any]:
    new_url = new_url or url.replace(".db", "-v2.db")
    async with await chronik.connect(url) as store, await chronik.connect(legacy_url) as legacy:
        # last year's CRM wrote v1
        await store.append(
            "contact-1",
            legacy_registry.to_new_events([ContactRegisteredV1("Ada King Lovelace", "ada@x.org")]),
            expected_version=chronik.NO_STREAM,
        )
        # today's CRM writes v2
        await store.append(
            "contact-2",
            registry.to_new_events(
                [ContactRegistered("Grace", "Hopper", ["grace@navy.mil", "gh@x.org"])]
            ),
            expected_version=chronik.NO_STREAM,
        )
        bus = Bus({})
        runner = ProjectionRunner(store, [IntegrationPublisher(bus), LegacyMirror(legacy)])
        await runner.catch_up()
        await runner.catch_up()  # nothing new: nothing published or mirrored twice
        new_shape = bus.on("crm.contact.v2")
        old_shape = bus.on("crm.contact.v1")
        say(f"crm.contact.v2: {new_shape}")
        say(f"crm.contact.v1: {old_shape}")
        mirrored = [e async for e in legacy.read_all()]
        say(
            "legacy store: "
            + ", ".join(f"{e.stream_id} v{e.schema_version} {e.data}" for e in mirrored)
        )
        loaded = [registry.decode(e) async for e in store.read_all()]
        say(f"the CRM itself reads only v2: {loaded}")
        messages = len(bus.messages)
        migration = await migrate_without_downtime(store, new_url, bus, legacy, say)
        return {
            "v2": new_shape,
            "v1": old_shape,
            "legacy": [(e.stream_id, e.schema_version, e.data) for e in mirrored],
            "messages": messages,
            **migration,
        }


async def migrate_without_downtime(
    store: chronik.EventStore, new_url: str, bus: Bus, legacy: chronik.EventStore, say: Any
) -> dict[str, Any]:
    """Rewrite history in the v2 shape into ``new_url`` while the CRM keeps writing."""
    async with await chronik.connect(new_url) as new:
        crm = MigratingStore(store, new, target_url=new_url)  # the CRM's writes go here
        copied, wanted = asyncio.Event(), [1 << 62]

        def progress(p: CopyProgress) -> None:
            if p.checkpoint >= wanted[0]:
                copied.set()

        follower = CopyFollower(
            store, new, registry=registry, upcast=True, poll_interval=0.05, progress=progress
        )
        async with follower:  # `chronik migrate copy --follow --upcast`
            written = await crm.append(
                "contact-3",
                registry.to_new_events([ContactRegistered("Alan", "Turing", ["at@x.org"])]),
                expected_version=chronik.NO_STREAM,
            )
            wanted[0] = written.position
            if follower.checkpoint < written.position:  # copied, upcast, as it happens
                await asyncio.wait_for(copied.wait(), 10)
            # `chronik migrate cutover --upcast`: fence, copy the last events, verify, mark
            report = await cutover(store, new, moved_to=new_url, registry=registry, upcast=True)
            # the old store refuses the next write; the wrapper moves it to the new store
            await crm.append(
                "contact-4",
                registry.to_new_events([ContactRegistered("Edsger", "Dijkstra", ["ewd@x.org"])]),
                expected_version=chronik.NO_STREAM,
            )
            await follower.wait()  # it retires by itself: the migration is complete
        assert crm.switch is not None and report.verification is not None
        say(
            f"cut over at position {report.fence.position}: verified "
            f"{report.verification.target_events} events; write pause "
            f"{crm.switch.pause_seconds:.3f}s"
        )
        try:  # running the copy again says why there is nothing to do
            await copy_store(store, new, registry=registry, upcast=True)
            complete = ""
        except chronik.MigrationComplete as done:
            complete = str(done)
        say(complete)
        # the projections move with their checkpoints mapped to the new store's positions
        moved = {}
        for name, position in (await store.checkpoints()).items():
            if not name.startswith("chronik."):
                moved[name] = await map_checkpoint(store, new, position)
        async with new.transaction() as tx:
            for name, position in moved.items():
                await tx.set_checkpoint(name, position)
        runner = ProjectionRunner(new, [IntegrationPublisher(bus), LegacyMirror(legacy)])
        await runner.catch_up()  # only contacts 3 and 4: nothing published twice
        migrated = [e async for e in new.read_all()]
        say(
            "new store: "
            + ", ".join(f"{e.stream_id} v{e.schema_version} {e.data}" for e in migrated)
        )
        return {
            "migrated": [(e.stream_id, e.schema_version) for e in migrated],
            "pause_seconds": crm.switch.pause_seconds,
            "complete": complete,
            "messages_after": len(bus.messages),
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="sqlite:///crm.db")
    parser.add_argument("--legacy", default="sqlite:///crm-v1.db")
    parser.add_argument("--new", default="sqlite:///crm-v2.db", help="the migrated store")
    args = parser.parse_args(argv)
    asyncio.run(run(args.store, args.legacy, new_url=args.new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
