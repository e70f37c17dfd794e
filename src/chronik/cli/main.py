"""``chronik`` — the command line: inspect and operate an event store.

Every command takes ``--store URL`` (default ``$CHRONIK_STORE``, else ``sqlite:///chronik.db``),
``--json`` for machine-readable output and ``--debug`` for tracebacks. Only ``init`` creates
a store; every other command needs one there (``StoreNotFound`` otherwise).

Every error is one line on stderr (with ``--json``, one JSON object:
``{"error": {"type": ..., "message": ...}}``) and an exit status of :data:`EXIT_STATUS`:
0 success, 1 a failure (a chronik error, or problems found), 2 bad usage (arguments or the
store URL), 3 not found (the store or the stream), 4 the store is unavailable, 130
interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import re
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

import msgspec

from chronik.cli._common import Handler, Output, Standalone, at_least, positive_float
from chronik.errors import (
    ChronikError,
    GroupNotFound,
    StoreNotFound,
    StoreUnavailable,
    StreamNotFound,
    UnsupportedStoreUrl,
)
from chronik.events import RecordedEvent
from chronik.store import connect, redact_url, store_url
from chronik.store.protocol import EventStore

__all__ = [
    "EXIT_STATUS",
    "ChronikParser",
    "build_parser",
    "exit_status",
    "main",
    "report_error",
]

EXIT_STATUS = {
    "ok": 0,
    "failure": 1,
    "usage": 2,
    "not_found": 3,
    "unavailable": 4,
    "interrupted": 130,
}
"""The exit statuses of ``chronik`` (documented in docs/cli.md)."""


class UsageError(Exception):
    """The command line does not parse: one line, exit status 2 (see :class:`ChronikParser`)."""


class ChronikParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a :class:`UsageError` naming the command, not
    argparse's usage text and ``sys.exit``; ``main`` prints it as one line."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def exit_status(exc: BaseException) -> int:
    """The exit status for an error (see :data:`EXIT_STATUS`)."""
    if isinstance(exc, UsageError | UnsupportedStoreUrl):
        return EXIT_STATUS["usage"]
    if isinstance(exc, StoreNotFound | StreamNotFound | GroupNotFound):
        return EXIT_STATUS["not_found"]
    if isinstance(exc, StoreUnavailable):
        return EXIT_STATUS["unavailable"]
    return EXIT_STATUS["failure"]


COMMAND_MODULES = [
    "chronik.cli.projections",
    "chronik.cli.snapshots",
    "chronik.cli.debug",
    "chronik.cli.schema",
    "chronik.cli.migrate",
    "chronik.cli.integration",
    "chronik.cli.serve",
    "chronik.cli.tokens",
    "chronik.cli.ops",
    "chronik.cli.workers",
    "chronik.cli.retention",
    "chronik.cli.roles",
    "chronik.cli.archive",
    "chronik.cli.verify",
    "chronik.cli.forget",
    "chronik.cli.groups",
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
    url = redact_url(store_url(args.store))
    if out.as_json:
        out.json({"store": url, "ready": True, "events": stats.events})
    else:
        out.say(("ready", "green"), f" {url} (schema up to date, {stats.events} events)")
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
                out.say(
                    (at, "dim"),
                    " ",
                    (str(pos), "bold"),
                    f" {stream}@{version} ",
                    (type_, "cyan"),
                    f" {data}",
                )
        if not args.follow:
            if not out.as_json and shown == 0:
                out.say(("no events", "dim"))
            return 0
        if not batch:
            await store.wait_for_change(args.interval)


async def cmd_stats(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.store.horizon import read_horizon

    stats = await store.stats()
    horizon = await read_horizon(store)  # PostgreSQL: what readers cannot see yet, and why
    if out.as_json:
        out.json(
            {
                "events": stats.events,
                "streams": stats.streams,
                "head_position": stats.head_position,
                "categories": stats.categories,
                "size_bytes": stats.size_bytes,
                "horizon": horizon.to_dict() if horizon is not None else None,
            }
        )
        return 0
    if horizon is not None and horizon.held:
        out.say(("warning:", "yellow"), f" {horizon.describe()}")
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
    common = ChronikParser(add_help=False)
    common.add_argument(
        "--store",
        default=argparse.SUPPRESS,
        help="store URL (default: $CHRONIK_STORE, else sqlite:///chronik.db)",
    )
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    common.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show the traceback of an error",
    )
    common.add_argument(
        "--wait-for-store",
        action="store_true",
        default=argparse.SUPPRESS,
        help="when the store cannot be reached, wait (retrying) instead of exiting 4",
    )
    parser = ChronikParser(
        prog="chronik", description="Inspect and operate a chronik event store.", parents=[common]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "init",
        parents=[common],
        help="create the store or upgrade its schema (the one command that creates a store)",
    )
    p.set_defaults(handler=cmd_init, create_store=True)

    p = sub.add_parser("streams", parents=[common], help="list streams and their versions")
    p.add_argument("--category", help="only streams of this category (the part before '-')")
    p.add_argument("--limit", type=at_least(1), default=None, help="at most this many streams")
    p.set_defaults(handler=cmd_streams)

    p = sub.add_parser("events", parents=[common], help="show the events of one stream")
    p.add_argument("stream_id")
    p.add_argument("--from-version", type=at_least(0), default=None, help="first version to show")
    p.add_argument("--limit", type=at_least(1), default=None, help="at most this many events")
    p.add_argument("--backwards", action="store_true", help="newest first")
    p.set_defaults(handler=cmd_events)

    p = sub.add_parser("tail", parents=[common], help="show the global log (--follow: live)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--after", type=at_least(0), default=None, help="start after this position")
    start.add_argument("--last", type=at_least(0), default=0, help="start this many positions back")
    p.add_argument("--category", action="append", help="only this category (repeatable)")
    p.add_argument("--type", action="append", help="only this event type (repeatable)")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    p.add_argument("--interval", type=positive_float, default=0.5, help="poll interval in seconds")
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
    create = bool(getattr(args, "create_store", False))  # only `init` creates a store
    if getattr(args, "wait_for_store", False):
        store = await _connect_waiting(args.store, create, out)
        if store is None:  # stopped while waiting: it never got the store
            return EXIT_STATUS["unavailable"]
    else:
        store = await connect(args.store, create=create)
    async with store:
        return await handler(store, args, out)


async def _connect_waiting(url: str, create: bool, out: Output) -> EventStore | None:
    """``connect()``, retried while the store is unavailable (a database still starting, a
    network not up yet), with a line on stderr at the first failure and every 30 s after;
    ``None`` when SIGTERM or SIGINT came first. Other errors (no such store, a bad URL)
    are raised at once: waiting would not change them."""
    from chronik.subscriptions import Backoff

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    backoff = Backoff(first=0.2, most=5.0)
    said = -1e9
    try:
        while not stop.is_set():
            try:
                return await connect(url, create=create)
            except StoreUnavailable as exc:
                if time.monotonic() - said >= 30.0:
                    said = time.monotonic()
                    out.note(f"waiting for the store ({exc}); Ctrl-C or SIGTERM stops")
            await backoff.sleep(stop)
        return None
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def _flag(argv: Sequence[str], flag: str) -> bool:
    """Whether ``flag`` is on the command line before any ``--`` (known before parsing)."""
    end = list(argv).index("--") if "--" in argv else len(argv)
    return flag in argv[:end]


def report_error(exc: BaseException, *, as_json: bool, out: Output) -> int:
    """Print ``exc`` as one line on stderr (JSON with ``as_json``); returns the exit status.

    The line is ``error: TYPE: MESSAGE`` (``error: usage: ...`` for bad arguments); an error
    that is not chronik's says that ``--debug`` shows its traceback.
    """
    kind = "UsageError" if isinstance(exc, UsageError) else type(exc).__name__
    message = re.sub(r"\s*\n\s*", " ", str(exc).strip()) or repr(exc)
    if not isinstance(exc, ChronikError | UsageError):
        message += " (an unexpected error: --debug shows the traceback)"
    if as_json:
        error = {"error": {"type": kind, "message": message}}
        sys.stderr.write(msgspec.json.encode(error).decode() + "\n")
        sys.stderr.flush()
    elif isinstance(exc, UsageError):
        out.note(("error:", "red"), f" usage: {message}")
    else:
        out.note(("error:", "red"), f" {kind}: {message}")
    return exit_status(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``chronik`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    ``--help`` and a command line that does not parse raise ``SystemExit`` as argparse
    does (status 0 and 2); the latter is printed as one line first.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        as_json = _flag(argv, "--json")
        raise SystemExit(report_error(exc, as_json=as_json, out=Output(as_json))) from None
    args.store = getattr(args, "store", None)
    args.json = getattr(args, "json", False)
    out = Output(args.json)
    try:
        return asyncio.run(_run(args, out))
    except KeyboardInterrupt:
        return EXIT_STATUS["interrupted"]
    except Exception as exc:
        if getattr(args, "debug", False):
            traceback.print_exception(exc)
        return report_error(exc, as_json=args.json, out=out)


if __name__ == "__main__":
    sys.exit(main())
