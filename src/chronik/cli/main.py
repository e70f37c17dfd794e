"""``chronik`` — the command line: inspect and operate an event store.

Every command takes ``--store URL`` (default ``$CHRONIK_STORE``, else ``sqlite:///chronik.db``)
and ``--json`` for machine-readable output. Exit status: 0 success, 1 a chronik error
(printed as one line naming what was wrong), 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from chronik.errors import ChronikError
from chronik.events import RecordedEvent
from chronik.store import connect, store_url
from chronik.store.protocol import EventStore

__all__ = ["main"]

Handler = Callable[[EventStore, argparse.Namespace, "Output"], Awaitable[int]]


class Output:
    """Writes rich tables for people and JSON for programs."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        probe = Console()
        width = None if probe.is_terminal else 160
        self.console = Console(highlight=False, soft_wrap=False, width=width)
        self.err = Console(stderr=True, highlight=False)

    def json(self, value: Any) -> None:
        sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
        sys.stdout.flush()

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        table = Table(title=title, title_justify="left")
        for index, col in enumerate(columns):
            last = index == len(columns) - 1
            table.add_column(col, overflow="fold", no_wrap=not last)
        for row in rows:
            table.add_row(*(str(v) for v in row))
        self.console.print(table)


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
            wait = getattr(store, "wait_for_change", None)
            if wait is not None:
                await wait(args.interval)
            else:
                await asyncio.sleep(args.interval)


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


def load_projections(spec: str) -> list[Any]:
    """Import ``MODULE:OBJECT``: a projection, a list of them, or a callable returning either."""
    import importlib
    import os

    from chronik.projections import ExternalProjection, Projection

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ChronikError(f"--app must be MODULE:OBJECT, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
        obj = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ChronikError(f"cannot load {spec!r}: {exc}") from exc
    if callable(obj) and not isinstance(obj, (Projection, ExternalProjection, type)):
        obj = obj()
    items = list(obj) if isinstance(obj, (list, tuple)) else [obj]
    for item in items:
        if not isinstance(item, (Projection, ExternalProjection)):
            raise ChronikError(f"{spec!r} gave {item!r}, not a Projection")
    return items


async def cmd_projections_status(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.projections import ProjectionRunner

    if args.app:
        runner = ProjectionRunner(store, load_projections(args.app))
        statuses = [s.to_dict() for s in await runner.status()]
    else:
        head = await store.head_position()
        statuses = []
        for name, position in sorted((await store.checkpoints()).items()):
            letters = await store.dead_letters(name)
            statuses.append(
                {
                    "name": name,
                    "checkpoint": position,
                    "head": head,
                    "lag_events": await store.count_events(after=position),
                    "dead_letters": len(letters),
                }
            )
    if out.as_json:
        out.json(statuses)
        return 0
    if not statuses:
        out.console.print("[dim]no projections have a checkpoint yet[/dim]")
        return 0
    columns = list(statuses[0])
    out.table("projections", columns, [[s[c] for c in columns] for s in statuses])
    return 0


async def cmd_projections_rebuild(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from chronik.projections import Progress as RebuildProgress
    from chronik.projections import ProjectionRunner

    runner = ProjectionRunner(store, load_projections(args.app), batch_size=args.batch_size)
    if out.as_json:
        applied = await runner.rebuild(args.name)
        out.json({"projection": args.name, "applied": applied})
        return 0
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} events"),
        TextColumn("{task.fields[rate]:,.0f} ev/s"),
        TimeRemainingColumn(),
        console=out.console,
    ) as bar:
        task = bar.add_task(f"rebuild {args.name}", total=None, rate=0.0)

        def report(p: RebuildProgress) -> None:
            bar.update(task, completed=p.done, total=p.total, rate=p.rate)

        applied = await runner.rebuild(args.name, progress=report)
    out.console.print(f"[green]rebuilt[/green] {args.name}: {applied} events applied")
    return 0


async def cmd_projections_dead_letters(
    store: EventStore, args: argparse.Namespace, out: Output
) -> int:
    from chronik.projections import ProjectionRunner

    if args.retry:
        if not args.app:
            raise ChronikError("--retry needs --app MODULE:OBJECT (the fixed handlers)")
        runner = ProjectionRunner(store, load_projections(args.app))
        fixed, failing = await runner.retry_dead_letters(args.name)
        if out.as_json:
            out.json({"fixed": fixed, "still_failing": failing})
        else:
            out.console.print(f"retried dead letters: {fixed} fixed, {failing} still failing")
        return 0 if failing == 0 else 1
    letters = await store.dead_letters()
    if args.name:
        letters = [d for d in letters if d.subscription.split(":v")[0] == args.name]
    rows = [
        {
            "id": d.id,
            "subscription": d.subscription,
            "position": d.position,
            "event_id": str(d.event_id),
            "stream_id": d.stream_id,
            "version": d.version,
            "type": d.type,
            "attempts": d.attempts,
            "error": d.error,
            "created_at": d.created_at,
        }
        for d in letters
    ]
    if out.as_json:
        out.json(rows)
    else:
        cols = [
            "id",
            "subscription",
            "position",
            "stream_id",
            "version",
            "type",
            "attempts",
            "error",
        ]
        out.table(f"{len(rows)} dead letter(s)", cols, [[r[c] for c in cols] for r in rows])
    return 0


async def cmd_projections_run(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    import signal

    from chronik.projections import ProjectionRunner

    projections = load_projections(args.app)
    runner = ProjectionRunner(
        store, projections, batch_size=args.batch_size, poll_interval=args.interval
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    names = ", ".join(p.name for p in projections)
    if not out.as_json:
        out.err.print(f"running {names} on {store_url(args.store)} (Ctrl-C or SIGTERM stops)")
    await runner.run_until_stopped(stop)
    statuses = [s.to_dict() for s in await runner.status()]
    if out.as_json:
        out.json(statuses)
    else:
        out.err.print("stopped: " + ", ".join(f"{s['name']}@{s['checkpoint']}" for s in statuses))
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

    proj = sub.add_parser("projections", parents=[common], help="run and operate projections")
    psub = proj.add_subparsers(dest="action", required=True, metavar="ACTION")
    app_help = "MODULE:OBJECT naming a projection, a list of them, or a function returning them"

    p = psub.add_parser("status", parents=[common], help="checkpoint, head, lag, dead letters")
    p.add_argument("--app", help=app_help + " (without it: stored checkpoints only)")
    p.set_defaults(handler=cmd_projections_status)

    p = psub.add_parser("rebuild", parents=[common], help="replay one projection from zero")
    p.add_argument("name")
    p.add_argument("--app", required=True, help=app_help)
    p.add_argument("--batch-size", type=int, default=500)
    p.set_defaults(handler=cmd_projections_rebuild)

    p = psub.add_parser("dead-letters", parents=[common], help="list (or --retry) dead letters")
    p.add_argument("name", nargs="?", help="only this projection")
    p.add_argument("--retry", action="store_true", help="run them through the handlers again")
    p.add_argument("--app", help=app_help + " (needed with --retry)")
    p.set_defaults(handler=cmd_projections_dead_letters)

    p = psub.add_parser("run", parents=[common], help="run projections until SIGTERM/SIGINT")
    p.add_argument("app", help=app_help)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--interval", type=float, default=0.5, help="poll interval in seconds")
    p.set_defaults(handler=cmd_projections_run)
    return parser


async def _run(args: argparse.Namespace, out: Output) -> int:
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
