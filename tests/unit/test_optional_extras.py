"""A missing optional extra fails at once with the install command, not later or forever."""

from __future__ import annotations

import sys

import pytest

import chronik
from chronik.nats import Inbox, OutboxRelay
from chronik.store.memory import MemoryEventStore


async def _handle(message: object, tx: object) -> None: ...


def test_nats_workers_without_nats_py_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nats", None)  # `import nats` now raises ImportError
    store, url = MemoryEventStore(), "nats://127.0.0.1:4222"
    with pytest.raises(chronik.MissingDependency, match=r"pip install 'chronik\[nats\]'"):
        OutboxRelay(store, url, name="x", stream="S", prefix="p")
    with pytest.raises(chronik.MissingDependency, match=r"pip install 'chronik\[nats\]'"):
        Inbox(store, url, name="x", stream="S", subject="p.x", handler=_handle)
