"""A writer process for the zero-downtime migration tests: appends continuously (single
events and batches, with expected versions) through :class:`chronik.migrate.MigratingStore`,
or dual-writes (source first, then the same events with the same ids into the target).

Usage::

    python -m tests.integration.migrate_writer SOURCE TARGET HISTORY STOPFILE WRITER [dual]

Every attempt goes to the JSONL ``HISTORY``: ``{"op": "invoke"|"ok"|"fail"|"info", ...}``
with its event ids, so a checker can compare what was attempted, acknowledged and stored
(docs: RELIABILITY.md). A refused append (StoreFenced, a conflict) wrote nothing and is
retried with the same ids; an indeterminate one (a lost connection) is retried with the
same ids too (idempotent). At the end it writes ``HISTORY.switch.json``: when the wrapper
switched and the write pause it saw.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import uuid
from pathlib import Path
from typing import Any

from chronik import NewEvent
from chronik.errors import ConcurrencyError, StoreFenced
from chronik.migrate import MigratingStore

STREAMS = 6


def _events(writer: str, counter: int, size: int) -> list[NewEvent]:
    out = []
    for k in range(size):
        n = counter + k
        data = {
            "account_id": f"{writer}-{n % STREAMS}",
            "amount_cents": (n * 37) % 5000 - 2000,
            "description": f"{writer} #{n}",
        }
        out.append(
            NewEvent(
                "TransactionRecorded",
                data,
                metadata={"writer": writer, "n": n},
                event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{writer}/{n}"),
            )
        )
    return out


async def write(
    source_url: str, target_url: str, history: Path, stop: Path, writer: str, dual: bool
) -> None:
    rng = random.Random(writer)
    versions: dict[str, int] = {}
    log = history.open("a", buffering=1)

    def record(op: str, **fields: Any) -> None:
        log.write(json.dumps({"op": op, **fields}) + "\n")

    store = await MigratingStore.open(source_url, target_url, switch_timeout=20.0)
    target = store.target
    counter = 0
    try:
        while not stop.exists():
            stream = f"account-{writer}-{rng.randrange(STREAMS)}"
            size = 1 if rng.random() < 0.6 else rng.randint(2, 5)
            events = _events(writer, counter, size)
            counter += size
            ids = [str(e.event_id) for e in events]
            expected = versions.get(stream, -1)
            while True:
                record("invoke", stream=stream, ids=ids, expected=expected)
                try:
                    if dual:
                        result = await store.source.append(
                            stream, events, expected_version=expected
                        )
                    else:
                        result = await store.append(stream, events, expected_version=expected)
                except StoreFenced:
                    record("fail", stream=stream, ids=ids, error="StoreFenced", retryable=True)
                    if dual:
                        return  # the dual-write test ends at the fence
                    await asyncio.sleep(0.01)
                    continue
                except ConcurrencyError as exc:
                    record("fail", stream=stream, ids=ids, error=type(exc).__name__)
                    raise
                except Exception as exc:
                    record("info", stream=stream, ids=ids, error=f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(0.05)
                    continue
                record(
                    "ok",
                    stream=stream,
                    ids=ids,
                    version=result.version,
                    switched=store.switched,
                )
                break
            versions[stream] = result.version
            if dual:  # the same events, same ids, right after what the copy has of the stream
                try:
                    await target.append(stream, events, expected_version=expected)
                    record("dual", stream=stream, ids=ids)
                except ConcurrencyError:
                    pass  # the copy is not there yet: it brings them
            await asyncio.sleep(rng.uniform(0.0, 0.004))
    finally:
        switch = store.switch
        (history.parent / (history.name + ".switch.json")).write_text(
            json.dumps(
                None
                if switch is None
                else {
                    "fenced_at": switch.fenced_at.isoformat(),
                    "switched_at": switch.switched_at.isoformat(),
                    "pause_seconds": switch.pause_seconds,
                }
            )
        )
        log.close()
        await store.close()


if __name__ == "__main__":
    source, target, history_path, stop_path, writer_id, *mode = sys.argv[1:]
    asyncio.run(
        write(source, target, Path(history_path), Path(stop_path), writer_id, mode == ["dual"])
    )
