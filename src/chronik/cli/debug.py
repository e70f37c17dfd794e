"""``chronik replay``, ``chronik trace`` and ``chronik check``: the debugging toolkit."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

import msgspec
from rich.text import Text
from rich.tree import Tree

from chronik.app import load_app
from chronik.cli._common import Output, at_least
from chronik.debugging import Replay, Trace, TraceNode, format_delta, replay, to_plain, trace
from chronik.integrity import CHECKS, Problem, check
from chronik.store.protocol import EventStore

__all__ = ["register"]

APP_HELP = "MODULE:OBJECT naming a chronik.App (its registry and deciders by category)"


def parse_time(value: str) -> datetime:
    """ISO 8601 (``2024-05-01T12:00:00Z``, ``2024-05-01 12:00``); without a zone: UTC."""
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {value!r} (like 2024-05-01T12:00:00Z)"
        ) from exc
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _compact(value: Any, width: int = 400) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


# -- replay -------------------------------------------------------------------------------------


async def cmd_replay(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    app = load_app(args.app)
    decider = app.decider_for(args.stream_id)
    result = await replay(
        store,
        args.stream_id,
        decider,
        registry=app.registry,
        to_version=args.to_version,
        as_of=args.as_of,
    )
    if out.as_json:
        out.json(result.to_dict())
        return 0
    _print_replay(out, result, args)
    return 0


def _print_replay(out: Output, result: Replay, args: argparse.Namespace) -> None:
    upto = f"up to version {result.version}" if result.steps else "before its first event"
    if args.as_of is not None:
        upto += f" (as of {args.as_of.isoformat()})"
    title = (
        f"{result.stream_id}: {len(result.steps)} event(s) replayed, {upto}; "
        f"the stream is at version {result.stream_version}"
    )
    if args.diff:
        rows = [
            [
                s.event.version,
                s.event.position,
                s.event.type,
                _time(s.event.recorded_at),
                "\n".join(c.describe() for c in s.changes) or "(no change)",
                _compact(to_plain(s.decoded[0] if len(s.decoded) == 1 else s.decoded), 200),
            ]
            for s in result.steps
        ]
        columns = ["version", "position", "type", "recorded at (UTC)", "changes", "event data"]
        out.table(title, columns, rows)
    else:
        rows = [
            [s.event.version, s.event.position, s.event.type, _compact(s.state)]
            for s in result.steps
        ]
        out.table(title, ["version", "position", "type", "state after"], rows)
    final = result.steps[-1].state if result.steps else result.initial
    out.say(f"state at version {result.version}: {_compact(final, 2000)}")


# -- trace --------------------------------------------------------------------------------------


async def cmd_trace(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    tree = await trace(store, args.correlation_id, limit=args.limit)
    if out.as_json:
        out.json(tree.to_dict())
    elif args.format == "mermaid":
        out.raw(tree.to_mermaid())
    elif args.format == "dot":
        out.raw(tree.to_dot())
    else:
        _print_tree(out, tree)
    return 0 if tree.events else 1


def _label(node: TraceNode) -> Text:
    ev = node.event
    text = Text.assemble(
        (ev.stream_id, "bold"),
        f" v{ev.version} ",
        (ev.type, "cyan"),
        f"  {_compact(ev.data, 60)}  ",
        (f"position {ev.position} · {_time(ev.recorded_at)}", "dim"),
    )
    if node.parent is not None:
        text.append("  ").append(format_delta(node.since_parent), "green")
    if node.missing_parent is not None:
        text.append(f"  orphan: cause {node.missing_parent} not found", "yellow")
    elif node.cycle:
        text.append("  orphan: its causation ids form a cycle", "yellow")
    return text


def _print_tree(out: Output, tree: Trace) -> None:
    if not tree.events:
        out.say(f"no events with correlation id {tree.correlation_id!r}")
        return
    streams = len({e.stream_id for e in tree.events})
    root = Tree(
        Text.assemble(
            "correlation ",
            (tree.correlation_id, "bold"),
            f": {len(tree.events)} event(s) in {streams} stream(s), {len(tree.orphans)} orphan(s)",
        )
    )
    branches: dict[int, Tree] = {}
    for node, _depth in tree.walk():
        parent = root if node.parent is None else branches[id(node.parent)]
        branches[id(node)] = parent.add(_label(node))
    out.console.print(root)


# -- check --------------------------------------------------------------------------------------


async def cmd_check(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.snapshots.worker import snapshot_targets

    app = load_app(args.app) if args.app else None
    report = await check(
        store,
        registry=app.registry if app is not None else None,
        decode=not args.no_decode,
        max_details=args.max_details,
        snapshots=snapshot_targets(app) if app and app.extras.get("snapshots") else None,
    )
    if out.as_json:
        out.json(report.to_dict())
        return 0 if report.ok else 1
    rows: list[list[Any]] = []
    for name, description in CHECKS.items():
        if name in report.skipped:
            status = Text(f"skipped: {report.skipped[name]}", "dim")
        elif report.counts.get(name):
            status = Text(f"{report.counts[name]:,} problem(s)", "red")
        else:
            status = Text("ok", "green")
        rows.append([name, description, status])
    title = f"check: {report.events:,} events in {report.streams:,} streams" + (
        f", {report.decoded:,} decoded" if report.decoded else ""
    )
    out.table(title, ["check", "looks for", "result"], rows)
    for name, per_type in report.breakdown.items():
        listed = ", ".join(f"{k}: {v:,}" for k, v in per_type.items())
        out.say(f"{name} by type: {listed}")
    if report.problems:
        out.table(
            "first problems (up to --max-details per check with --json)",
            ["check", "problem"],
            [[p.check, p.message] for p in _first(report.problems, 5)],
        )
    for warning in report.warnings:
        out.say(("warning:", "yellow"), f" {warning}")
    if report.truncated is not None and report.truncated.events:
        out.say(("retention:", "cyan"), f" {report.truncated.describe()}: by policy, not gaps")
    out.say(("no problems found", "green") if report.ok else ("problems found", "red"))
    return 0 if report.ok else 1


def _first(problems: list[Problem], per_check: int) -> list[Problem]:
    seen: dict[str, int] = {}
    kept = []
    for problem in problems:
        seen[problem.check] = seen.get(problem.check, 0) + 1
        if seen[problem.check] <= per_check:
            kept.append(problem)
    return kept


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "replay",
        parents=[common],
        help="rebuild a stream's state event by event and show what each event changed",
    )
    p.add_argument("stream_id")
    p.add_argument("--app", required=True, help=APP_HELP)
    when = p.add_mutually_exclusive_group()
    when.add_argument(
        "--to-version", type=at_least(0), default=None, help="stop after this version"
    )
    when.add_argument(
        "--as-of",
        type=parse_time,
        default=None,
        metavar="TIME",
        help="stop after the last event recorded at or before TIME (ISO 8601; no zone: UTC)",
    )
    p.add_argument("--diff", action="store_true", help="show what changed instead of states")
    p.set_defaults(handler=cmd_replay)

    p = sub.add_parser(
        "trace",
        parents=[common],
        help="every event of a correlation id, as the causal tree of their causation ids",
    )
    p.add_argument("correlation_id")
    p.add_argument(
        "--format",
        choices=["tree", "mermaid", "dot"],
        default="tree",
        help="tree (default), or a Mermaid / Graphviz picture",
    )
    p.add_argument("--limit", type=at_least(1), default=None, help="at most this many events")
    p.set_defaults(handler=cmd_trace)

    p = sub.add_parser(
        "check", parents=[common], help="read-only integrity checks; exit 1 on any problem"
    )
    p.add_argument("--app", help=APP_HELP + " (needed for the type and decoding checks)")
    p.add_argument("--no-decode", action="store_true", help="do not decode every event (faster)")
    p.add_argument(
        "--max-details",
        type=at_least(0),
        default=20,
        help="problems listed per check (all are counted)",
    )
    p.set_defaults(handler=cmd_check)
