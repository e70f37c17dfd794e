"""``chronik snapshots ...``: inspect, take, prune snapshots, and run the snapshotter."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from chronik.app import App, load_app
from chronik.cli._common import Output, at_least, positive_float, run_until_signal
from chronik.cli.ops import add_metrics_port, serving_metrics
from chronik.errors import ChronikError
from chronik.events import category_of
from chronik.store import redact_url, store_url
from chronik.store.protocol import EventStore

__all__ = ["register"]

APP_HELP = (
    'MODULE:OBJECT naming a chronik.App whose extras["snapshots"] maps categories to '
    "SnapshotConfig (the current folder is importable)"
)


def _age(at: datetime, now: datetime) -> str:
    seconds = max((now - at).total_seconds(), 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


async def cmd_snapshots_stats(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.snapshots import snapshot_store

    now = datetime.now(UTC)
    stats = await snapshot_store(store).stats()
    if out.as_json:
        out.json([s.to_dict(now) for s in stats])
        return 0
    if not stats:
        out.say(("no snapshots", "dim"))
        return 0
    out.table(
        "snapshots per category",
        ["category", "snapshots", "streams", "bytes", "oldest", "newest"],
        [
            [
                s.category,
                f"{s.snapshots:,}",
                f"{s.streams:,}",
                f"{s.bytes:,}",
                _age(s.oldest, now) if s.oldest else "",
                _age(s.newest, now) if s.newest else "",
            ]
            for s in stats
        ],
    )
    return 0


async def cmd_snapshots_list(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.snapshots import snapshot_store

    rows = await snapshot_store(store).find(args.stream_id)
    if out.as_json:
        out.json([s.to_dict() for s in rows])
        return 0
    out.table(
        f"{args.stream_id}: {len(rows)} snapshot(s)",
        ["version", "state version", "bytes", "created at (UTC)"],
        [[s.version, s.state_version, f"{len(s.state):,}", s.created_at.isoformat()] for s in rows],
    )
    return 0


async def cmd_snapshots_take(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.snapshots import snapshot_targets, take_snapshot

    app = load_app(args.app)
    targets = snapshot_targets(app)
    category = category_of(args.stream_id)
    if category not in targets:
        known = ", ".join(sorted(targets))
        raise ChronikError(
            f"no snapshot configuration for category {category!r} of stream "
            f"{args.stream_id!r} (configured: {known})"
        )
    decider, config = targets[category]
    snapshot = await take_snapshot(
        store,
        args.stream_id,
        evolve=decider.evolve,
        initial_state=decider.initial_state,
        config=config,
        registry=app.registry,
    )
    if snapshot is None:
        raise ChronikError(
            f"{args.stream_id}: the state does not survive a JSON round trip; not snapshotted "
            "(see the warning logged by chronik.snapshots)"
        )
    if out.as_json:
        out.json(snapshot.to_dict())
    else:
        out.say(
            ("snapshot", "green"),
            f" {snapshot.stream_id} at version {snapshot.version} "
            f"({len(snapshot.state):,} bytes, state version {snapshot.state_version})",
        )
    return 0


async def cmd_snapshots_prune(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.snapshots import snapshot_store, snapshot_targets, stale_versions

    if args.stale and not args.app:
        raise ChronikError("--stale needs --app MODULE:OBJECT (the current state versions)")
    app = load_app(args.app) if args.app else None
    targets = snapshot_targets(app) if app is not None else None
    snapshots = snapshot_store(store)
    invalid = 0
    if args.invalid:
        invalid = await _prune_invalid(store, app, args, out)
    keep = args.keep if args.keep is not None else (None if args.invalid else 1)
    deleted = 0
    if keep is not None or args.stale:
        stale = None
        if args.stale:
            assert targets is not None
            stale = stale_versions((cat, config) for cat, (_, config) in targets.items())
        deleted = await snapshots.prune(
            keep=keep if keep is not None else 2**31 - 1,
            stream_id=args.stream,
            category=args.category,
            stale=stale,
        )
    if out.as_json:
        out.json({"deleted": deleted + invalid, "invalid": invalid, "keep": keep})
    else:
        kept = f"; at most {keep} kept per stream" if keep is not None else ""
        out.say(f"deleted {deleted + invalid} snapshot(s) ({invalid} invalid){kept}")
    return 0


async def _prune_invalid(
    store: EventStore, app: App | None, args: argparse.Namespace, out: Output
) -> int:
    """Delete the snapshots a loader skips: those that do not match their stream, and with
    ``--app`` also those that do not decode or differ from a replay."""
    from chronik.snapshots import snapshot_store, snapshot_targets, verify_snapshots

    snapshots = snapshot_store(store)
    if app is None:
        problems = await snapshots.invalid()
    else:
        problems = await verify_snapshots(store, snapshot_targets(app), registry=app.registry)
    deleted = 0
    for problem in problems:
        if args.stream is not None and problem.stream_id != args.stream:
            continue
        if args.category is not None and category_of(problem.stream_id) != args.category:
            continue
        if not out.as_json:
            out.note(
                ("invalid", "yellow"),
                f" {problem.stream_id} at version {problem.version}: {problem.reason}",
            )
        deleted += await snapshots.delete(
            problem.stream_id, state_version=problem.state_version, version=problem.version
        )
    return deleted


async def cmd_snapshots_run(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.snapshots import Snapshotter

    snapshotter = Snapshotter.from_app(
        store,
        load_app(args.app),
        name=args.name,
        batch_size=args.batch_size,
        poll_interval=args.interval,
    )
    categories = ", ".join(sorted(snapshotter.targets))
    async with serving_metrics(store, args.metrics_port):
        code = await run_until_signal(
            [snapshotter],
            out,
            f"the snapshotter of {categories} on {redact_url(store_url(args.store))}",
        )
    result: dict[str, Any] = {
        "name": snapshotter.name,
        "checkpoint": snapshotter.checkpoint,
        "taken": snapshotter.taken,
        "failed": snapshotter.failed,
        "last_error": snapshotter.last_error,
    }
    if out.as_json:
        out.json(result)
    else:
        out.note(
            f"stopped at position {result['checkpoint']}: {result['taken']} snapshot(s) taken, "
            f"{result['failed']} failed"
        )
    return code


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    snap = sub.add_parser(
        "snapshots", parents=[common], help="inspect, take and prune snapshots; run the snapshotter"
    )
    ssub = snap.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = ssub.add_parser("stats", parents=[common], help="count, bytes and age per category")
    p.set_defaults(handler=cmd_snapshots_stats)

    p = ssub.add_parser("list", parents=[common], help="the snapshots of one stream")
    p.add_argument("stream_id")
    p.set_defaults(handler=cmd_snapshots_list)

    p = ssub.add_parser("take", parents=[common], help="snapshot one stream now (on demand)")
    p.add_argument("stream_id")
    p.add_argument("--app", required=True, help=APP_HELP)
    p.set_defaults(handler=cmd_snapshots_take)

    p = ssub.add_parser(
        "prune",
        parents=[common],
        help="keep only the newest K per stream; delete stale or invalid ones",
    )
    p.add_argument(
        "--keep",
        type=at_least(1),
        default=None,
        help="snapshots kept per stream (default 1; with --invalid alone: every valid one)",
    )
    p.add_argument("--stream", help="only this stream")
    p.add_argument("--category", help="only this category")
    p.add_argument(
        "--stale", action="store_true", help="also delete snapshots of old state versions"
    )
    p.add_argument(
        "--invalid",
        action="store_true",
        help="delete snapshots that no longer match their stream (ahead of it, another event "
        "at their version); with --app also those that do not decode or differ from a replay",
    )
    p.add_argument("--app", help=APP_HELP + " (needed with --stale)")
    p.set_defaults(handler=cmd_snapshots_prune)

    p = ssub.add_parser("run", parents=[common], help="run the snapshotter until SIGTERM/SIGINT")
    p.add_argument("app", help=APP_HELP)
    p.add_argument("--name", default="default", help="checkpoint name (snapshotter:NAME)")
    p.add_argument("--batch-size", type=at_least(1), default=500, help="events per batch")
    p.add_argument("--interval", type=positive_float, default=0.5, help="poll interval in seconds")
    add_metrics_port(p)
    p.set_defaults(handler=cmd_snapshots_run)
