"""``chronik retention set|list|clear`` and ``chronik scavenge`` (docs/operations.md).

Thin: each command calls :mod:`chronik.ops.retention` and prints; ``--json`` prints one
JSON object on stdout.
"""

from __future__ import annotations

import argparse
from typing import Any

from chronik.cli._common import Output, at_least
from chronik.ops import retention
from chronik.store.protocol import EventStore

__all__ = ["register"]


def _position(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a position (an integer > 0)")
    return int(text)


async def cmd_set(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    age = None if args.max_age is None else retention.parse_age(args.max_age)
    policy = await retention.set_policy(
        store, args.category, max_age=age, max_count=args.max_count,
        truncate_before=args.truncate_before,
    )  # fmt: skip
    if out.as_json:
        out.json(policy.to_dict())
    else:
        out.say(("retention", "green"), f" {policy.category}: {policy.describe()}")
        out.note("apply it with `chronik scavenge` (--dry-run first shows what would go)")
    return 0


async def cmd_list(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    found = await retention.policies(store)
    if out.as_json:
        out.json({"policies": [p.to_dict() for p in found]})
        return 0
    if not found:
        out.say("no retention policy: every event is kept")
        return 0
    out.table("retention policies", ["category", "policy", "updated"],
              [[p.category, p.describe(), p.updated_at.isoformat() if p.updated_at else ""]
               for p in found])  # fmt: skip
    return 0


async def cmd_clear(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    cleared = await retention.clear_policy(store, args.category)
    if out.as_json:
        out.json({"category": args.category, "cleared": cleared})
    elif cleared:
        out.say(("cleared", "green"), f" {args.category}: its events are kept from now on")
    else:
        out.say(f"{args.category} had no retention policy")
    return 0


async def cmd_scavenge(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    def progress(report: retention.ScavengeReport) -> None:
        if not out.as_json:
            out.note(("scavenge:", "dim"), f" {report.events:,} events removed so far")

    report = await retention.scavenge(
        store, dry_run=args.dry_run, categories=args.category or None,
        batch_size=args.batch_size, progress=progress,
    )  # fmt: skip
    if out.as_json:
        out.json(report.to_dict())
        return 0
    verb = "would remove" if report.dry_run else "removed"
    rows: list[list[Any]] = [
        [c.category, c.policy, f"{c.events:,}", f"{c.streams:,}",
         "" if c.first_position is None else f"{c.first_position}..{c.last_position}",
         f"{c.held_back:,}"]
        for c in report.categories
    ]  # fmt: skip
    if rows:
        out.table(f"scavenge ({verb})", ["category", "policy", "events", "streams",
                                        "positions", "kept for readers"], rows)  # fmt: skip
    if report.held_back and report.held_by is not None:
        out.say(("held back:", "yellow"),
                f" {report.held_back:,} events stay until {report.held_by.describe()} "
                f"moves on (or is deleted)")  # fmt: skip
    if not report.categories:
        out.say("no retention policy: nothing to do (`chronik retention set` adds one)")
    else:
        out.say((verb, "green"), f" {report.events:,} events")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "retention",
        parents=[common],
        help="retention policies per category (applied by `chronik scavenge`)",
    )
    rsub = p.add_subparsers(dest="retention_command", required=True, metavar="COMMAND")
    q = rsub.add_parser(
        "set",
        parents=[common],
        help="keep (replace) a category's policy: any rule that matches lets an event go",
    )
    q.add_argument("category", help="the category (the part of stream ids before the first -)")
    q.add_argument("--max-age", default=None, help="remove events older than this: 90d, 12h, 2w")
    q.add_argument("--max-count", type=at_least(1), default=None,
                   help="keep only the newest N events of each stream")  # fmt: skip
    q.add_argument("--truncate-before", type=_position, default=None,
                   help="remove events below this position")  # fmt: skip
    q.set_defaults(handler=cmd_set)
    q = rsub.add_parser("list", parents=[common], help="the policies kept in the store")
    q.set_defaults(handler=cmd_list)
    q = rsub.add_parser("clear", parents=[common], help="drop a category's policy")
    q.add_argument("category")
    q.set_defaults(handler=cmd_clear)

    p = sub.add_parser(
        "scavenge",
        parents=[common],
        help="apply the retention policies: remove what they allow and no reader still needs",
        description="Remove the events the retention policies allow, never a stream's last "
        "event, the events after its newest snapshot, or anything a checkpoint, dead letter "
        "or consumer group has not processed (the report names who holds removal back). "
        "Each batch is one short transaction recorded in `truncations`: safe to stop and "
        "run again.",
    )
    p.add_argument("--dry-run", action="store_true", help="report what would go; remove nothing")
    p.add_argument("--category", action="append", default=None,
                   help="only this category's policy (repeat for more)")  # fmt: skip
    p.add_argument("--batch-size", type=at_least(1), default=retention.DEFAULT_BATCH,
                   help=f"events per transaction (default {retention.DEFAULT_BATCH})")  # fmt: skip
    p.set_defaults(handler=cmd_scavenge)
