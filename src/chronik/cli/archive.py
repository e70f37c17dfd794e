"""``chronik archive`` (move old events into files, read through), ``chronik archive list``
and ``chronik archive restore`` (docs/operations.md).

Thin: each command calls :mod:`chronik.ops.archive` and prints; ``--json`` prints one JSON
object on stdout.
"""

from __future__ import annotations

import argparse
from typing import Any

from chronik.cli._common import Output, at_least
from chronik.errors import InvalidArgument
from chronik.ops import archive, retention
from chronik.store.protocol import EventStore

__all__ = ["register"]

DEFAULT_DIR = "chronik-archive"


def _position(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a position (an integer > 0)")
    return int(text)


async def cmd_archive(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    command = getattr(args, "archive_command", None)
    if command == "list":
        return await cmd_list(store, args, out)
    if command == "restore":
        return await cmd_restore(store, args, out)
    if args.category is None or (args.before is None) == (args.older_than is None):
        raise InvalidArgument(
            "archive", "needs --category and one of --before POSITION and --older-than AGE"
        )
    age = None if args.older_than is None else retention.parse_age(args.older_than)
    report = await archive.archive_category(
        store, args.category, args.dir, before=args.before, older_than=age,
        closed_streams=args.closed_streams, batch_size=args.batch_size,
    )  # fmt: skip
    if out.as_json:
        out.json(report.to_dict())
        return 0
    if report.finished:
        out.say(("finished", "yellow"), f" half-done segments {report.finished}")
    rows = [[s.id, s.file, f"{s.events:,}", f"{s.first_position}..{s.last_position}",
             f"{s.bytes:,}"] for s in report.segments]  # fmt: skip
    if rows:
        out.table("archived", ["segment", "file", "events", "positions", "bytes"], rows)
    if report.held_by is not None:
        out.note(("held back:", "yellow"), f" events above {report.held_by} stay")
    out.say(("archived", "green"), f" {report.events:,} events of {report.category}")
    return 0


async def cmd_list(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    found = await archive.segments(store)
    if out.as_json:
        out.json({"segments": [s.to_dict() for s in found]})
        return 0
    if not found:
        out.say("no archived segment")
        return 0
    out.table("archived segments", ["segment", "category", "state", "events", "positions",
                                    "file"],
              [[s.id, s.category, s.state, f"{s.events:,}",
                f"{s.first_position}..{s.last_position}", s.file] for s in found])  # fmt: skip
    return 0


async def cmd_restore(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    report = await archive.restore_archive(
        store, category=args.restore_category, segment_ids=args.segment or None,
        batch_size=args.batch_size,
    )  # fmt: skip
    if out.as_json:
        out.json(report.to_dict())
    else:
        out.say(("restored", "green"),
                f" {report.events:,} events from segments {report.segments}")  # fmt: skip
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "archive",
        parents=[common],
        help="move a category's old events into compressed files that reads go through",
        description="Move the events of a category below a position (--before) or older "
        "than an age (--older-than) into zstd NDJSON files with a manifest, record them in "
        "the store, then delete the rows in short transactions. Reads (read_stream, "
        "read_all, rebuilds) go through the files. Never a stream's last event, never what "
        "a reader has not processed. `chronik archive restore` puts them back.",
    )
    p.add_argument("--category", default=None, help="the category to archive")
    p.add_argument("--before", type=_position, default=None,
                   help="archive events below this position")  # fmt: skip
    p.add_argument("--older-than", default=None, help="archive events older than: 365d, 2w")
    p.add_argument("--closed-streams", action="store_true",
                   help="only streams whose last event is itself that old")  # fmt: skip
    p.add_argument("--dir", default=DEFAULT_DIR,
                   help=f"the archive directory (default ./{DEFAULT_DIR})")  # fmt: skip
    p.add_argument("--batch-size", type=at_least(1), default=archive.DEFAULT_BATCH,
                   help=f"rows per transaction (default {archive.DEFAULT_BATCH})")  # fmt: skip
    p.set_defaults(handler=cmd_archive)
    asub = p.add_subparsers(dest="archive_command", required=False, metavar="COMMAND")
    q = asub.add_parser("list", parents=[common], help="the archived segments")
    q.set_defaults(handler=cmd_archive)
    q = asub.add_parser(
        "restore", parents=[common], help="put archived events back (same positions, ids)"
    )
    q.add_argument("--category", dest="restore_category", default=None,
                   help="only this category's segments")  # fmt: skip
    q.add_argument("--segment", type=at_least(1), action="append", default=None,
                   help="only this segment (repeat for more)")  # fmt: skip
    q.add_argument("--batch-size", type=at_least(1), default=archive.DEFAULT_BATCH)
    q.set_defaults(handler=cmd_archive)
