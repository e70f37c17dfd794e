"""``chronik projections ...``: run and operate projections."""

from __future__ import annotations

import argparse
from typing import Any

from chronik.app import load_app
from chronik.cli._common import Output, at_least, positive_float, run_until_signal
from chronik.cli.ops import add_metrics_port, serving_metrics
from chronik.errors import ChronikError
from chronik.store import redact_url, store_url
from chronik.store.horizon import events_after, read_horizon
from chronik.store.protocol import EventStore
from chronik.store.truncations import truncation_summary

__all__ = ["load_projections", "register"]


def load_projections(spec: str) -> list[Any]:
    """The projections of ``--app MODULE:OBJECT`` (see :func:`chronik.app.load_app`)."""
    projections = list(load_app(spec).projections)
    if not projections:
        raise ChronikError(f"{spec!r} has no projections")
    return projections


async def cmd_projections_status(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.projections import ProjectionRunner

    if args.app:
        runner = ProjectionRunner(store, load_projections(args.app))
        statuses = [s.to_dict() for s in await runner.status()]
    else:
        from chronik.projections.control import paused_projections

        head = await store.head_position()
        paused = await paused_projections(store)
        statuses = []
        for name, position in sorted((await store.checkpoints()).items()):
            letters = await store.dead_letters(name)
            pause = paused.get(name.partition(":v")[0])
            statuses.append(
                {
                    "name": name,
                    "checkpoint": position,
                    "head": head,
                    "lag_events": (await events_after(store, position)).events,
                    "dead_letters": len(letters),
                    "paused_at": pause.paused_at.isoformat() if pause else None,
                }
            )
        listed = {str(row["name"]).partition(":v")[0] for row in statuses}
        for name, pause in sorted(paused.items()):
            if name not in listed:  # paused before it ever committed a checkpoint
                statuses.append({"name": name, "checkpoint": 0, "head": head,
                                 "lag_events": (await events_after(store, 0)).events,
                                 "dead_letters": 0,
                                 "paused_at": pause.paused_at.isoformat()})  # fmt: skip
    out.records("projections", statuses, empty="no projections have a checkpoint yet")
    horizon = await read_horizon(store)
    if horizon is not None and horizon.held and not out.as_json:
        out.note(("warning:", "yellow"), f" {horizon.describe()}")
    return 0


async def cmd_projections_rebuild(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from chronik.projections import Progress as RebuildProgress
    from chronik.projections import ProjectionRunner

    runner = ProjectionRunner(store, load_projections(args.app), batch_size=args.batch_size)
    removed = await truncation_summary(store)
    if out.as_json:
        applied = await runner.rebuild(args.name)
        truncated = removed.to_dict() if removed.events else None
        out.json({"projection": args.name, "applied": applied, "truncated": truncated})
        return 0
    if removed.events:
        out.note(("note:", "yellow"), f" rebuilding from the retained events: {removed.describe()}")
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} events"),
        TextColumn("{task.fields[rate]:,.0f} ev/s"),
        TimeRemainingColumn(),
        console=out.console,
    ) as bar:
        task = bar.add_task(f"rebuild {escape(args.name)}", total=None, rate=0.0)

        def report(p: RebuildProgress) -> None:
            bar.update(task, completed=p.done, total=p.total, rate=p.rate)

        applied = await runner.rebuild(args.name, progress=report)
    out.say(("rebuilt", "green"), f" {args.name}: {applied} events applied")
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
            out.say(f"retried dead letters: {fixed} fixed, {failing} still failing")
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


async def cmd_projections_pause(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.projections.control import pause_projection

    done = await pause_projection(store, args.name, by=args.by)
    if out.as_json:
        out.json({"name": done.name, "paused": True, "paused_at": done.paused_at.isoformat(),
                  "paused_by": done.by})  # fmt: skip
    else:
        by = f" ({done.by})" if done.by else ""
        out.say(("paused", "yellow"), f" {done.name} since {done.paused_at:%Y-%m-%d %H:%M:%S} "
                f"UTC{by}: its runners hold after the batch in flight")  # fmt: skip
    return 0


async def cmd_projections_resume(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.projections.control import resume_projection

    was = await resume_projection(store, args.name)
    if out.as_json:
        out.json({"name": args.name, "paused": False, "was_paused": was})
    else:
        out.say(("resumed", "green") if was else ("not paused", "yellow"), f" {args.name}")
    return 0


async def cmd_projections_run(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.projections import ProjectionRunner

    projections = load_projections(args.app)
    runner = ProjectionRunner(
        store, projections, batch_size=args.batch_size, poll_interval=args.interval
    )
    names = ", ".join(p.name for p in projections)
    async with serving_metrics(store, args.metrics_port, projections=runner.status):
        code = await run_until_signal(
            [runner], out, f"{names} on {redact_url(store_url(args.store))}"
        )
    statuses = [s.to_dict() for s in await runner.status()]
    if out.as_json:
        out.json(statuses)
    else:
        out.note("stopped: " + ", ".join(f"{s['name']}@{s['checkpoint']}" for s in statuses))
    return code


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    proj = sub.add_parser("projections", parents=[common], help="run and operate projections")
    psub = proj.add_subparsers(dest="action", required=True, metavar="ACTION")
    app_help = "MODULE:OBJECT naming a projection, a list of them, or a function returning them"

    p = psub.add_parser("status", parents=[common], help="checkpoint, head, lag, dead letters")
    p.add_argument("--app", help=app_help + " (without it: stored checkpoints only)")
    p.set_defaults(handler=cmd_projections_status)

    p = psub.add_parser("rebuild", parents=[common], help="replay one projection from zero")
    p.add_argument("name")
    p.add_argument("--app", required=True, help=app_help)
    p.add_argument("--batch-size", type=at_least(1), default=500, help="events per batch")
    p.set_defaults(handler=cmd_projections_rebuild)

    p = psub.add_parser("dead-letters", parents=[common], help="list (or --retry) dead letters")
    p.add_argument("name", nargs="?", help="only this projection")
    p.add_argument("--retry", action="store_true", help="run them through the handlers again")
    p.add_argument("--app", help=app_help + " (needed with --retry)")
    p.set_defaults(handler=cmd_projections_dead_letters)

    p = psub.add_parser("pause", parents=[common], help="pause a projection in every process")
    p.add_argument("name")
    p.add_argument("--by", default="", help="who or why (shown in statuses)")
    p.set_defaults(handler=cmd_projections_pause)

    p = psub.add_parser("resume", parents=[common], help="resume a paused projection")
    p.add_argument("name")
    p.set_defaults(handler=cmd_projections_resume)

    p = psub.add_parser("run", parents=[common], help="run projections until SIGTERM/SIGINT")
    p.add_argument("app", help=app_help)
    p.add_argument("--batch-size", type=at_least(1), default=500, help="events per batch")
    p.add_argument("--interval", type=positive_float, default=0.5, help="poll interval in seconds")
    add_metrics_port(p)
    p.set_defaults(handler=cmd_projections_run)
