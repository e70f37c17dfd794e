"""Golden fixtures: stored v1 and v2 events that every future version must keep reading.

``tests/fixtures/events_v*.json`` hold events as ``chronik events --json`` printed them, and
for each the current type and field values reading it must give (fields added later are
allowed; the listed ones must not change). They are never edited: a new schema version
adds a new file.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from examples import crm_contacts, financial_transactions

import chronik
from chronik import EventRegistry, RecordedEvent
from chronik.projections import ProjectionRunner
from chronik.store import SqlStore, require
from chronik.store.protocol import ImportedEvent

FIXTURES = Path(__file__).parent.parent / "fixtures"
FILES = sorted(FIXTURES.glob("events_v*.json"))
REGISTRIES: dict[str, EventRegistry] = {
    "TransactionRecorded": financial_transactions.registry,
    "ContactRegistered": crm_contacts.registry,
}


def load(path: Path) -> tuple[list[RecordedEvent], dict[str, Any]]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    events = [
        RecordedEvent(
            event_id=uuid.UUID(e["event_id"]),
            stream_id=e["stream_id"],
            version=e["version"],
            position=e["position"],
            type=e["type"],
            schema_version=e["schema_version"],
            raw_data=msgspec.json.encode(e["data"]),
            raw_metadata=msgspec.json.encode(e["metadata"]),
            recorded_at=datetime.fromisoformat(e["recorded_at"]),
        )
        for e in doc["events"]
    ]
    return events, doc["expect"]


def test_there_are_v1_and_v2_fixtures() -> None:
    names = [p.name for p in FILES]
    assert "events_v1.json" in names and "events_v2.json" in names
    versions = {e.schema_version for path in FILES for e in load(path)[0]}
    assert {1, 2} <= versions


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_golden_events_decode_and_upcast_as_recorded(path: Path) -> None:
    events, expect = load(path)
    assert len(events) == len(expect)
    for event in events:
        wanted = expect[str(event.event_id)]
        registry = REGISTRIES[event.type]
        decoded = registry.decode(event)
        assert registry.type_of(decoded).name == wanted["type"]
        for name, value in wanted["fields"].items():
            assert getattr(decoded, name) == value, (event.event_id, name)
        (current,) = registry.upcast(event)
        assert current.type == wanted["type"]
        assert {k: current.data[k] for k in wanted["fields"]} == wanted["fields"]
        assert current.event_id == event.event_id and current.metadata == event.metadata


async def test_golden_events_replay_from_a_store(tmp_path: Path) -> None:
    events = sorted((e for path in FILES for e in load(path)[0]), key=lambda e: e.position)
    async with await chronik.connect(f"sqlite:///{tmp_path}/golden.db") as store:
        async with store.transaction() as tx:
            await tx.import_events([ImportedEvent.of(e) for e in events])
        stored = [e async for e in store.read_all()]
        assert [(e.event_id, e.recorded_at, e.metadata) for e in stored] == [
            (e.event_id, e.recorded_at, e.metadata) for e in events
        ]

        handler = chronik.CommandHandler(
            store, financial_transactions.ledger, registry=financial_transactions.registry
        )
        seven = await handler.load("account-7")
        assert seven.version == 2
        assert seven.state.balances == {"EUR": 130_000, "USD": -3_000}
        eight = await handler.load("account-8")
        assert eight.state.balances == {"EUR": 9_545}

        runner = ProjectionRunner(store, list(financial_transactions.app.projections))
        await runner.catch_up()
        balances = dict(
            await require(store, SqlStore).query("SELECT account_id, cents FROM balances_v1")
        )
        assert balances == {"7": 127_000, "8": 9_545}
        totals = dict(await require(store, SqlStore).query("SELECT currency, cents FROM totals_v1"))
        assert totals == {"EUR": 139_545, "USD": -3_000}

        contacts = [
            crm_contacts.registry.decode(e)
            async for e in store.read_all(types=["ContactRegistered"])
        ]
        assert [c.first_name for c in contacts] == ["Ada", "Plato", "Grace", "Ada"]
        old_shape = [
            crm_contacts.registry.downcast(e, to_version=1)
            async for e in store.read_all(types=["ContactRegistered"])
        ]
        assert old_shape[0] == {"name": "Ada King Lovelace", "email": "ada@example.org"}
        assert old_shape[3] == {"name": "Ada Lovelace", "email": ""}
