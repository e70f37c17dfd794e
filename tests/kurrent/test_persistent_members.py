"""Competing readers of one persistent subscription, each a process, killed with -9 while
they read: nothing lost, nothing unexpected, pinned keeps per-stream order, and the parked
count equals the injected poison count (checked over the handling log the members write and
the server's subscription info, never over in-process state)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Literal

import pytest
from kurrentdbclient import KurrentDBClient, NewEvent, StreamState

from tests.kurrent.conftest import ServerThread

pytestmark = pytest.mark.feature("persistent-subscriptions")
ROOT = Path(__file__).resolve().parents[2]


def _member(uri: str, group: str, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.kurrent.persistent_member", uri, group, str(out)],
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(ROOT)])),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def order_violations(lines: list[tuple[str, int]]) -> int:
    """Times a stream's handled version went down (a redelivery repeats a version, never
    goes back to an earlier one when the strategy is pinned)."""
    last: dict[str, int] = {}
    bad = 0
    for stream, version in lines:
        if version < last.get(stream, -1):
            bad += 1
        last[stream] = max(version, last.get(stream, -1))
    return bad


def test_the_order_checker_catches_a_violation() -> None:  # negative control
    assert order_violations([("a", 0), ("a", 1), ("a", 1), ("a", 2)]) == 0
    assert order_violations([("a", 0), ("a", 2), ("a", 1)]) == 1


@pytest.mark.parametrize("strategy", ["Pinned", "RoundRobin"])
def test_competing_members_killed_lose_nothing(
    kurrent: ServerThread,
    client: KurrentDBClient,
    tmp_path: Path,
    strategy: Literal["Pinned", "RoundRobin"],
) -> None:
    rng = random.Random(17)
    streams, per_stream = 20, 10
    good: set[str] = set()
    poison = 0
    for s in range(streams):
        events = []
        for v in range(per_stream):
            event_id = uuid.uuid4()
            if rng.random() < 0.03:
                kind, poison = "Poison", poison + 1
            else:
                kind = "Happened"
                good.add(str(event_id))
            events.append(NewEvent(type=kind, data=json.dumps({"v": v}).encode(), id=event_id))
        client.append_to_stream(f"cg-{s}", events=events, current_version=StreamState.NO_STREAM)
    assert poison > 0
    client.create_subscription_to_all(
        "workers", consumer_strategy=strategy, message_timeout=1.0, max_retry_count=50
    )
    out = tmp_path / "handled.log"
    members = [_member(kurrent.uri, "workers", out) for _ in range(3)]
    kills = 0
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.3, 0.8))
            if kills < 6:
                victim = members.pop(rng.randrange(len(members)))
                victim.kill()  # SIGKILL: no goodbye, acks in its buffer are lost
                victim.wait()
                kills += 1
                members.append(_member(kurrent.uri, "workers", out))
                continue
            seen = (
                {line.split()[2] for line in out.read_text().splitlines()}
                if out.exists()
                else set()
            )
            info = client.get_subscription_info("workers")
            if seen >= good and info.parked_message_count >= poison:
                break
    finally:
        for m in members:
            m.kill()
            m.wait()
    handled = [line.split() for line in out.read_text().splitlines()]
    seen_ids = [h[2] for h in handled]
    assert good - set(seen_ids) == set(), "lost"
    assert set(seen_ids) - good == set(), "unexpected (a poison event was handled)"
    assert client.get_subscription_info("workers").parked_message_count == poison
    assert kills == 6
    if strategy == "Pinned":
        assert order_violations([(h[0], int(h[1])) for h in handled]) == 0
