"""Writer processes that append through the KurrentDB protocol (kurrentdbclient), recording
the same history as tests/integration/writers.py so its set-algebra checker judges them.

A module of its own so ``spawn`` can import it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import time
from pathlib import Path
from typing import Any


def wire_writer(uri: str, writer: int, mode: str, attempts: int, out: str, seed: int) -> None:
    from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
    from kurrentdbclient.exceptions import WrongCurrentVersionError

    rng = random.Random(seed * 1000 + writer)
    lines = []
    with KurrentDBClient(uri) as client:
        for counter in range(attempts):
            stream = "hot-1" if mode == "hot" else f"acct-{rng.randrange(40)}"
            size = 1 if mode == "hot" else rng.randint(1, 5)
            try:
                current = client.get_current_version(stream)
            except WrongCurrentVersionError:  # pragma: no cover - reads do not conflict
                raise
            except Exception:  # the server is away (a crash test): nothing was attempted
                time.sleep(0.05)
                continue
            expected = -1 if current is StreamState.NO_STREAM else int(current)
            events = [
                NewEvent(
                    type="Wrote",
                    data=json.dumps(
                        {"writer": writer, "counter": counter, "part": p, "nonce": rng.random()}
                    ).encode(),
                )
                for p in range(size)
            ]
            entry: dict[str, Any] = {
                "writer": writer,
                "counter": counter,
                "stream": stream,
                "expected": expected,
                "ids": [str(e.id) for e in events],
            }
            try:
                position = client.append_to_stream(
                    stream,
                    events=events,
                    current_version=StreamState.NO_STREAM if expected < 0 else expected,
                )
            except WrongCurrentVersionError:
                entry["type"] = "conflict"
            except Exception as exc:  # indeterminate: record, never guess
                entry["type"] = "info"
                entry["error"] = repr(exc)
            else:
                entry["type"] = "ok"
                entry["version"] = expected + size
                entry["position"] = position
            lines.append(json.dumps(entry))
    Path(out).write_text("\n".join(lines) + "\n")


def start_wire_writers(
    uri: str, mode: str, writers: int, attempts: int, folder: Path
) -> list[tuple[Any, Path]]:
    ctx = multiprocessing.get_context("spawn")
    seed = int.from_bytes(os.urandom(2), "big")
    procs = []
    for w in range(writers):
        out = folder / f"wire-{mode}-{w}.jsonl"
        p = ctx.Process(target=wire_writer, args=(uri, w, mode, attempts, str(out), seed))
        p.start()
        procs.append((p, out))
    return procs


def join_history(procs: list[tuple[Any, Path]]) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    for p, out in procs:
        p.join(timeout=240)
        assert p.exitcode == 0, f"writer process failed with exit code {p.exitcode}"
        history.extend(json.loads(line) for line in out.read_text().splitlines() if line)
    return history
