"""``chronik`` — the command line: inspect and operate an event store.

Every command takes ``--store URL`` (default ``$CHRONIK_STORE``, else ``sqlite:///chronik.db``)
and ``--json`` for machine-readable output. Exit status: 0 success, 1 a chronik error
(printed as one line naming what was wrong), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from chronik.cli._common import Handler, Output, Standalone
from chronik.errors import ChronikError
from chronik.events import RecordedEvent
from chronik.store import connect, store_url
from chronik.store.protocol import EventStore

__all__ = ["build_parser", "main"]

COMMAND_MODULES = [
    "chronik.cli.projections",
    "chronik.cli.snapshots",
    "chronik.cli.debug",
    "chronik.cli.schema",
    "chronik.cli.migrate",
    "chronik.cli.integration",
]
"""Modules adding command groups: each has ``register(subparsers, common_parser)``."""


def _short(data: bytes, width: int = 80) -> str:
    text = data.decode("utf-8", "replace")
    return text if len(text) <= width else text[: width - 1] + "…"


def _event_row(ev: RecordedEvent) -> list[Any]:
    return [
        ev.position,
        ev.stream_id,
        ev.version,
        f"{ev.type} v{ev.schema_version}",
        ev.recorded_at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
        ev.correlation_id or "",
        _short(ev.raw_data),
    ]


_EVENT_COLUMNS = [
    "position",
    "stream",
    "version",
    "type",
    "recorded at (UTC)",
    "correlation",
    "data",
]


async def cmd_init(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    stats = await store.stats()
    url = store_url(args.store)
    if out.as_json:
        out.json({"store": url, "ready": True, "events": stats.events})
    else:
        out.console.print(f"[green]ready[/green] {url} (schema up to date, {stats.events} events)")
    return 0


async def cmd_streams(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    rows = [s async for s in store.streams(category=args.category, limit=args.limit)]
    if out.as_json:
        out.json(
            [
                {"stream_id": s.stream_id, "version": s.version, "last_position": s.last_position}
                for s in rows
            ]
        )
    else:
        out.table(
            f"{len(rows)} stream(s)",
            ["stream", "version", "last position"],
            [[s.stream_id, s.version, s.last_position] for s in rows],
        )
    return 0


async def cmd_events(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    events = [
        e
        async for e in store.read_stream(
            args.stream_id,
            from_version=args.from_version,
            limit=args.limit,
            backwards=args.backwards,
        )
    ]
    if out.as_json:
        out.json([e.to_dict() for e in events])
    else:
        out.table(
            f"{args.stream_id}: {len(events)} event(s)",
            _EVENT_COLUMNS,
            [_event_row(e) for e in events],
        )
    return 0


async def cmd_tail(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    after = args.after
    if after is None:
        after = max(await store.head_position() - args.last, 0) if args.last else 0
    categories = args.category or None
    types = args.type or None
    shown = 0
    while True:
        batch = [e async for e in store.read_all(after=after, categories=categories, types=types)]
        for ev in batch:
            after = ev.position
            shown += 1
            if out.as_json:
                out.json(ev.to_dict())
            else:
                pos, stream, version, type_, at, _corr, data = _event_row(ev)
                out.console.print(
                    f"[dim]{at}[/dim] [bold]{pos}[/bold] {stream}@{version} "
                    f"[cyan]{type_}[/cyan] {data}",
                    markup=True,
                )
        if not args.follow:
            if not out.as_json and shown == 0:
                out.console.print("[dim]no events[/dim]")
            return 0
        if not batch:
            await store.wait_for_change(args.interval)


async def cmd_stats(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    stats = await store.stats()
    if out.as_json:
        out.json(
            {
                "events": stats.events,
                "streams": stats.streams,
                "head_position": stats.head_position,
                "categories": stats.categories,
                "size_bytes": stats.size_bytes,
            }
        )
        return 0
    size = "n/a" if stats.size_bytes is None else f"{stats.size_bytes / 1024:,.1f} KiB"
    out.table(
        "store",
        ["events", "streams", "head position", "size"],
        [[f"{stats.events:,}", f"{stats.streams:,}", stats.head_position, size]],
    )
    out.table(
        "events per category",
        ["category", "events"],
        [[cat, f"{n:,}"] for cat, n in stats.categories.items()],
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--store",
        default=argparse.SUPPRESS,
        help="store URL (default: $CHRONIK_STORE, else sqlite:///chronik.db)",
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    parser = argparse.ArgumentParser(
        prog="chronik", description="Inspect and operate a chronik event store.", parents=[common]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", parents=[common], help="create or upgrade the store's schema")
    p.set_defaults(handler=cmd_init)

    p = sub.add_parser("streams", parents=[common], help="list streams and their versions")
    p.add_argument("--category", help="only streams of this category (the part before '-')")
    p.add_argument("--limit", type=int, default=None, help="at most this many streams")
    p.set_defaults(handler=cmd_streams)

    p = sub.add_parser("events", parents=[common], help="show the events of one stream")
    p.add_argument("stream_id")
    p.add_argument("--from-version", type=int, default=None, help="first version to show")
    p.add_argument("--limit", type=int, default=None, help="at most this many events")
    p.add_argument("--backwards", action="store_true", help="newest first")
    p.set_defaults(handler=cmd_events)

    p = sub.add_parser("tail", parents=[common], help="show the global log (--follow: live)")
    p.add_argument("--after", type=int, default=None, help="start after this position")
    p.add_argument("--last", type=int, default=0, help="start this many positions back")
    p.add_argument("--category", action="append", help="only this category (repeatable)")
    p.add_argument("--type", action="append", help="only this event type (repeatable)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--interval", type=float, default=0.5, help="poll interval in seconds")
    p.set_defaults(handler=cmd_tail)

    p = sub.add_parser("stats", parents=[common], help="events, streams, categories, size")
    p.set_defaults(handler=cmd_stats)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub, common)
    return parser


async def _run(args: argparse.Namespace, out: Output) -> int:
    standalone: Standalone | None = getattr(args, "standalone", None)
    if standalone is not None:  # a command that opens its own stores (or none)
        return await standalone(args, out)
    handler: Handler = args.handler
    async with await connect(args.store) as store:
        return await handler(store, args, out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.store = getattr(args, "store", None)
    args.json = getattr(args, "json", False)
    out = Output(args.json)
    try:
        return asyncio.run(_run(args, out))
    except ChronikError as exc:
        if args.json:
            sys.stdout.write(
                msgspec.json.encode({"error": type(exc).__name__, "message": str(exc)}).decode()
                + "\n"
            )
        else:
            out.err.print(f"[red]error:[/red] {type(exc).__name__}: {exc}", markup=True)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
