"""Transforms for the ``chronik migrate copy --transform`` tests (imported by the CLI)."""

from __future__ import annotations

import os
from typing import Any

from chronik import RecordedEvent, Upcast


def cents_to_units(event: RecordedEvent) -> Any:
    """A custom migration: amounts in whole units, the type renamed; ``poison`` breaks it
    until ``CHRONIK_TEST_FIXED`` is set (the fix, deployed before resuming)."""
    if event.type != "TransactionRecorded":
        return event
    data = dict(event.data)
    if data["description"] == "poison" and not os.environ.get("CHRONIK_TEST_FIXED"):
        raise ValueError("cannot convert a poisoned amount")
    units = data.pop("amount_cents") / 100
    return Upcast("Transaction", {**data, "amount": units}, 1)


def split_fees(event: RecordedEvent) -> Any:
    """Every transaction over 1000 cents also records a 1 % fee, as a second event."""
    if event.type != "TransactionRecorded" or abs(event.data["amount_cents"]) <= 1000:
        return event
    fee = {**event.data, "amount_cents": -abs(event.data["amount_cents"]) // 100}
    return [event, Upcast("FeeCharged", fee, 1)]


def broken_registry() -> Any:
    """A registry with a gap in a renamed-away type's chain (for ``chronik schema``)."""
    from dataclasses import dataclass

    from chronik import EventRegistry

    registry = EventRegistry()

    @registry.event("OrderSubmitted")
    @dataclass(frozen=True)
    class OrderSubmitted:
        total: int

    @registry.upcaster("OrderPlaced", from_version=2, to="OrderSubmitted")
    def renamed(data: dict[str, Any]) -> Upcast:
        return Upcast("OrderSubmitted", data)

    return registry


broken = broken_registry()
