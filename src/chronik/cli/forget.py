"""``chronik forget SUBJECT``: forget a data subject (crypto-shredding, docs/security.md).

Destroys the subject's key, deletes the snapshots of its streams and records the erasure
event; projections scrub their rows when they handle that event. Needs no key-encryption
key. Running it again is harmless (and completes an interrupted run)."""

from __future__ import annotations

import argparse
from typing import Any

from chronik.cli._common import Output
from chronik.security.shredding import forget
from chronik.store.protocol import EventStore

__all__ = ["register"]


async def cmd_forget(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    result = await forget(store, args.subject)
    if out.as_json:
        out.json(result.to_dict())
        return 0
    done = "key destroyed" if result.key_destroyed else "key was already destroyed or absent"
    out.say(f"forgot subject {result.subject!r}: {done}")
    out.note(
        (f"{len(result.streams)} stream(s), {result.snapshots_deleted} snapshot(s) deleted, "
         f"erasure event in {result.erasure_stream}", "dim"),
    )  # fmt: skip
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "forget",
        parents=[common],
        help="forget a data subject: destroy its key, record the erasure (docs/security.md)",
    )
    p.add_argument("subject", help="the data subject's id (the event types' subject field)")
    p.set_defaults(handler=cmd_forget)
