"""Concurrent writer processes and the set-algebra checker over their history.

Each writer process records every attempt as JSON lines: ``ok`` (acknowledged), ``conflict``
(ConcurrencyError), ``info`` (anything indeterminate). The checker compares that history with
a full read of the store afterwards; it never looks at in-process state.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import multiprocessing
import os
import random
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import chronik
from chronik import NO_STREAM, ConcurrencyError, NewEvent


def _writer(url: str, writer: int, mode: str, attempts: int, out: str, seed: int) -> None:
    asyncio.run(_write(url, writer, mode, attempts, out, seed))


async def _write(url: str, writer: int, mode: str, attempts: int, out: str, seed: int) -> None:
    rng = random.Random(seed * 1000 + writer)
    lines = []
    async with await chronik.connect(url) as store:
        for counter in range(attempts):
            stream = "hot-1" if mode == "hot" else f"acct-{rng.randrange(40)}"
            size = 1 if mode == "hot" else rng.randint(1, 5)
            current = await store.stream_version(stream)
            expected = NO_STREAM if current is None else current
            events = [
                NewEvent(
                    "Wrote",
                    {"writer": writer, "counter": counter, "part": part, "nonce": rng.random()},
                )
                for part in range(size)
            ]
            entry: dict[str, Any] = {
                "writer": writer,
                "counter": counter,
                "stream": stream,
                "expected": int(expected),
                "ids": [str(e.event_id) for e in events],
            }
            try:
                result = await store.append(stream, events, expected_version=expected)
            except ConcurrencyError:
                entry["type"] = "conflict"
            except Exception as exc:  # indeterminate: record, never guess
                entry["type"] = "info"
                entry["error"] = repr(exc)
            else:
                entry["type"] = "ok"
                entry["version"] = result.version
                entry["position"] = result.position
            lines.append(json.dumps(entry))
    Path(out).write_text("\n".join(lines) + "\n")


def run_writers(
    url: str, mode: str, writers: int, attempts: int, folder: Path
) -> list[dict[str, Any]]:
    """Run ``writers`` processes (spawned, so no shared state) and return the merged history."""
    ctx = multiprocessing.get_context("spawn")
    seed = int.from_bytes(os.urandom(2), "big")
    procs = []
    for w in range(writers):
        out = folder / f"history-{mode}-{w}.jsonl"
        p = ctx.Process(target=_writer, args=(url, w, mode, attempts, str(out), seed))
        p.start()
        procs.append((p, out))
    history: list[dict[str, Any]] = []
    for p, out in procs:
        p.join(timeout=240)
        assert p.exitcode == 0, f"writer process failed with exit code {p.exitcode}"
        history.extend(json.loads(line) for line in out.read_text().splitlines() if line)
    return history


@dataclass
class Stored:
    event_id: str
    stream_id: str
    version: int
    position: int


@dataclass
class Verdict:
    attempted: int = 0
    ok: int = 0
    conflicts: int = 0
    indeterminate: int = 0
    lost: set[str] = field(default_factory=set)
    unexpected: set[str] = field(default_factory=set)
    duplicated: set[str] = field(default_factory=set)
    failed_but_stored: set[str] = field(default_factory=set)
    partial_batches: list[int] = field(default_factory=list)
    version_gaps: dict[str, list[int]] = field(default_factory=dict)
    reused_expected: list[tuple[str, int]] = field(default_factory=list)
    position_disorder: int = 0
    wrong_ack: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (
            self.lost
            or self.unexpected
            or self.duplicated
            or self.failed_but_stored
            or self.partial_batches
            or self.version_gaps
            or self.reused_expected
            or self.position_disorder
            or self.wrong_ack
        )


def check(history: Iterable[dict[str, Any]], stored: list[Stored]) -> Verdict:
    """Set algebra over the history and a full read of the store (see RELIABILITY.md)."""
    history = list(history)
    v = Verdict(attempted=len(history))
    stored_ids = Counter(s.event_id for s in stored)
    by_id = {s.event_id: s for s in stored}
    attempted_ids: set[str] = set()
    ok_ids: set[str] = set()
    failed_ids: set[str] = set()
    used_expected: Counter[tuple[str, int]] = Counter()
    for h in history:
        attempted_ids.update(h["ids"])
        present = [i in stored_ids for i in h["ids"]]
        if any(present) and not all(present):
            v.partial_batches.append(h["counter"])
        if h["type"] == "ok":
            v.ok += 1
            ok_ids.update(h["ids"])
            used_expected[(h["stream"], h["expected"])] += 1
            last = by_id.get(h["ids"][-1])
            if last is not None and (last.version, last.position) != (h["version"], h["position"]):
                v.wrong_ack.append(h["ids"][-1])
        elif h["type"] == "conflict":
            v.conflicts += 1
            failed_ids.update(h["ids"])
        else:
            v.indeterminate += 1
    v.lost = ok_ids - set(stored_ids)
    v.unexpected = set(stored_ids) - attempted_ids
    v.duplicated = {i for i, n in stored_ids.items() if n > 1}
    v.failed_but_stored = failed_ids & set(stored_ids)
    v.reused_expected = [key for key, n in used_expected.items() if n > 1]
    versions: dict[str, list[int]] = defaultdict(list)
    for s in stored:
        versions[s.stream_id].append(s.version)
    for stream, vs in versions.items():
        if sorted(vs) != list(range(len(vs))):
            v.version_gaps[stream] = sorted(vs)
    positions = [s.position for s in stored]
    v.position_disorder = sum(1 for a, b in itertools.pairwise(positions) if b <= a)
    return v


async def read_everything(url: str) -> list[Stored]:
    async with await chronik.connect(url) as store:
        return [
            Stored(str(e.event_id), e.stream_id, e.version, e.position)
            async for e in store.read_all()
        ]
