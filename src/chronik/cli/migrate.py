"""``chronik migrate ...``: move a whole store into another (see :mod:`chronik.migrate`):
``copy`` (``--follow`` to keep following the source), ``cutover``, ``unfence``, ``verify``."""

from __future__ import annotations

import argparse
import time
from typing import Any

from chronik.cli._common import Output, at_least, load_object, positive_float, run_until_signal
from chronik.cli.schema import load_registry
from chronik.codec import EventRegistry
from chronik.errors import ChronikError, LoadError
from chronik.migrate import (
    CopyFollower,
    CopyProgress,
    Transform,
    cancel_cutover,
    copy_store,
    cutover,
    verify_copy,
)
from chronik.store import connect, redact_url

__all__ = ["load_transform", "register"]


def load_transform(spec: str) -> Transform:
    """Import ``MODULE:FUNCTION`` (the current folder is importable)."""
    fn = load_object(spec, "--transform")
    if not callable(fn):
        raise LoadError(spec, "--transform", f"{type(fn).__name__} is not a function")
    transform: Transform = fn
    return transform


def _options(args: argparse.Namespace) -> dict[str, Any]:
    if args.source == args.target:
        raise ChronikError("--from and --to name the same store")
    registry: EventRegistry | None = None
    if args.upcast:
        if not args.app:
            raise ChronikError("--upcast needs --app MODULE:OBJECT (the registry's upcasters)")
        registry = load_registry(args.app)
        registry.validate()
    return {
        "registry": registry,
        "upcast": args.upcast,
        "transform": load_transform(args.transform) if args.transform else None,
        "categories": args.categories,
        "tolerant": args.tolerant,
    }


async def cmd_migrate_follow(args: argparse.Namespace, out: Output) -> int:
    """``copy --follow``: catch up, then copy as the source grows, until Ctrl-C/SIGTERM or
    the cut-over; a progress line (a JSON object with ``--json``) at most every second."""
    options = _options(args)
    last = 0.0

    def report(p: CopyProgress) -> None:
        nonlocal last
        if time.monotonic() - last < args.report_interval:
            return
        last = time.monotonic()
        if out.as_json:
            out.json({"event": "progress", **p.to_dict()})
            return
        lag = "?" if p.lag_events is None else f"{p.lag_events:,}"
        seconds = "-" if p.lag_seconds is None else f"{p.lag_seconds:.3f}s"
        out.note(
            ("following", "cyan"),
            f": {p.done:,} events copied, checkpoint {p.checkpoint}, lag {lag} events / {seconds}",
        )

    source_store = await connect(args.source, create=False)
    async with source_store as source, await connect(args.target) as target:
        follower = CopyFollower(
            source,
            target,
            batch_size=args.batch_size,
            poll_interval=args.poll_interval,
            progress=report,
            **options,
        )
        await follower.start()  # a complete migration or a foreign target: one-line error
        code = await run_until_signal(
            [follower], out, f"copy --follow {redact_url(args.source)} -> {redact_url(args.target)}"
        )
    summary = {
        "event": "stopped",
        "copied": follower.copied,
        "checkpoint": follower.checkpoint,
        "lag_events": follower.lag_events,
        "cut_over_at": follower.completed_at,
    }
    if out.as_json:
        out.json(summary)
    elif follower.completed_at is not None:
        out.say(
            ("cut over", "green"),
            f": the migration is complete (cut over at position {follower.completed_at}); "
            f"{follower.copied:,} events copied, checkpoint {follower.checkpoint}",
        )
    else:
        out.say(
            ("stopped", "green"),
            f": {follower.copied:,} events copied, checkpoint {follower.checkpoint} "
            f"(run again to resume)",
        )
    return code


async def cmd_migrate_cutover(args: argparse.Namespace, out: Output) -> int:
    if str(args.target).startswith("memory:"):
        raise ChronikError(
            "refusing to cut over to memory://: it ends with this process, and the source "
            "would stay fenced towards a store that no longer exists"
        )
    options = _options(args)
    source_store = await connect(args.source, create=False)
    async with source_store as source, await connect(args.target, create=False) as target:
        report = await cutover(
            source,
            target,
            moved_to=args.target,
            batch_size=args.batch_size,
            verify=not args.no_verify,
            **options,
        )
    if out.as_json:
        out.json(report.to_dict())
        return 0
    out.say(
        ("fenced", "green"),
        f" {redact_url(args.source)} at position {report.fence.position} (writes go to "
        f"{report.fence.moved_to}); copied the last {report.tail_read:,} events",
    )
    v = report.verification
    if v is not None:
        out.say(
            ("verified", "green"),
            f": {v.target_events:,} events in {v.target_streams:,} streams, ids checksum "
            f"{v.target_checksum[:16]}",
        )
    out.say(
        ("complete", "green"),
        f": cut over at position {report.fence.position}, {report.fenced_seconds:.3f}s "
        f"after the fence",
    )
    return 0


async def cmd_migrate_unfence(args: argparse.Namespace, out: Output) -> int:
    source_store = await connect(args.source, create=False)
    async with source_store as source, await connect(args.target, create=False) as target:
        fence = await cancel_cutover(source, target)
    if out.as_json:
        out.json(
            None
            if fence is None
            else {"moved_to": fence.moved_to, "position": fence.position, "lifted": True}
        )
    elif fence is None:
        out.say(("not fenced", "dim"), f": {redact_url(args.source)} takes writes")
    else:
        out.say(
            ("unfenced", "green"),
            f": {redact_url(args.source)} takes writes again (it was fenced at position "
            f"{fence.position} towards {fence.moved_to})",
        )
    return 0


async def cmd_migrate_copy(args: argparse.Namespace, out: Output) -> int:
    if args.follow:
        return await cmd_migrate_follow(args, out)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    options = _options(args)
    source_store = await connect(args.source, create=False)  # a missing source creates nothing
    async with source_store as source, await connect(args.target) as target:
        if out.as_json:
            report = await copy_store(
                source,
                target,
                batch_size=args.batch_size,
                verify=not args.no_verify,
                **options,
            )
            out.json(report.to_dict())
            return 0
        with Progress(
            TextColumn("[bold]copy"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("events"),
            TextColumn("{task.fields[rate]:,.0f} ev/s"),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=out.err,
        ) as bar:
            task = bar.add_task("copy", total=None, rate=0.0)

            def report_progress(p: CopyProgress) -> None:
                bar.update(task, completed=p.done, total=p.total, rate=p.rate)

            report = await copy_store(
                source,
                target,
                batch_size=args.batch_size,
                verify=not args.no_verify,
                progress=report_progress,
                **options,
            )
    start = f"after position {report.resumed_after}" if report.resumed_after else "from the start"
    out.say(
        ("copied", "green"),
        f" {report.read:,} events ({report.written:,} written) {start} "
        f"in {report.seconds:.1f}s, {report.rate:,.0f} events/s; checkpoint {report.checkpoint}",
    )
    v = report.verification
    if v is not None:
        out.say(
            ("verified", "green"),
            f": {v.target_events:,} events in {v.target_streams:,} "
            f"streams, ids checksum {v.target_checksum[:16]}",
        )
    return 0


async def cmd_migrate_verify(args: argparse.Namespace, out: Output) -> int:
    options = _options(args)
    source_store = await connect(args.source, create=False)
    async with source_store as source, await connect(args.target, create=False) as target:
        v = await verify_copy(source, target, **options)
    if out.as_json:
        out.json(v.to_dict())
    else:
        verdict = ("ok", "green") if v.ok else ("DIFFERENT", "red")
        out.say(
            verdict,
            f": up to source position {v.upto}, expected {v.expected_events:,} events "
            f"in {v.expected_streams:,} streams, found {v.target_events:,} in "
            f"{v.target_streams:,}",
        )
        for line in v.differences:
            out.say(f"  {line}")
    return 0 if v.ok else 1


def _copy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", required=True, metavar="URL", help="source store")
    p.add_argument("--to", dest="target", required=True, metavar="URL", help="target store")
    p.add_argument(
        "--upcast", action="store_true", help="bring every event to its current schema version"
    )
    p.add_argument(
        "--transform",
        metavar="MODULE:FUNCTION",
        help="a function applied to each (upcast) event: returns it, a dict, an Upcast, a "
        "list of these, or None to drop it",
    )
    p.add_argument("--app", metavar="MODULE:OBJECT", help="the App or EventRegistry --upcast uses")
    p.add_argument("--categories", nargs="+", metavar="CATEGORY", help="only these categories")
    p.add_argument(
        "--tolerant",
        action="store_true",
        help="with --upcast: copy events of unknown types or newer versions raw",
    )


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    mig = sub.add_parser(
        "migrate", parents=[common], help="copy a whole store into another (offline migration)"
    )
    msub = mig.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = msub.add_parser(
        "copy",
        parents=[common],
        help="copy every event, keeping ids, versions, time and metadata; resumable",
    )
    _copy_options(p)
    p.add_argument(
        "--batch-size", type=at_least(1), default=5000, help="events per target transaction"
    )
    p.add_argument("--no-verify", action="store_true", help="skip the final check")
    p.add_argument(
        "--follow",
        action="store_true",
        help="after the catch-up, keep copying as the source grows (until Ctrl-C, SIGTERM "
        "or the cut-over), reporting the lag",
    )
    p.add_argument(
        "--poll-interval",
        type=positive_float,
        default=1.0,
        help="with --follow: longest wait for a change the source cannot signal (seconds)",
    )
    p.add_argument(
        "--report-interval",
        type=positive_float,
        default=1.0,
        help="with --follow: at most one progress line per this many seconds",
    )
    p.set_defaults(standalone=cmd_migrate_copy)

    p = msub.add_parser(
        "cutover",
        parents=[common],
        help="fence the source, copy its last events, verify, mark the migration complete",
    )
    _copy_options(p)
    p.add_argument(
        "--batch-size", type=at_least(1), default=5000, help="events per target transaction"
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the check before marking complete (run `migrate verify` afterwards)",
    )
    p.set_defaults(standalone=cmd_migrate_cutover)

    p = msub.add_parser(
        "unfence",
        parents=[common],
        help="give writes back to the source after a cut-over that did not complete",
    )
    p.add_argument("--from", dest="source", required=True, metavar="URL", help="source store")
    p.add_argument("--to", dest="target", required=True, metavar="URL", help="target store")
    p.set_defaults(standalone=cmd_migrate_unfence)

    p = msub.add_parser(
        "verify", parents=[common], help="compare a copy with its source (read-only)"
    )
    _copy_options(p)
    p.set_defaults(standalone=cmd_migrate_verify)
