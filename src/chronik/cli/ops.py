"""``chronik backup``, ``restore``, ``verify-backup`` and ``doctor`` (docs/operations.md).

Thin: each command calls :mod:`chronik.ops` and prints. Progress goes to stderr every few
seconds; ``--json`` prints one JSON object on stdout at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from chronik.cli._common import Output, at_least, require_extra
from chronik.store import connect, redact_url, store_url
from chronik.store.protocol import EventStore

__all__ = ["add_metrics_port", "register", "serving_metrics"]

PROGRESS_EVERY = 2.0


class _Progress:
    """Prints ``WHAT: N events (R/s)`` on stderr at most every few seconds."""

    def __init__(self, out: Output, what: str) -> None:
        self.out, self.what, self.last = out, what, time.monotonic()

    def __call__(self, p: Any) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY:
            return
        self.last = now
        total = f" of {p.total:,}" if p.total is not None else ""
        rate = p.events / p.seconds if p.seconds > 0 else 0.0
        self.out.note((f"{self.what}:", "dim"), f" {p.events:,}{total} events ({rate:,.0f}/s)")


def _since(text: str) -> int:
    """``--since``: a position, or a backup folder (its manifest's position)."""
    if text.isdigit():
        return int(text)
    from chronik.ops.backup import read_manifest

    return read_manifest(Path(text)).position


async def cmd_backup(args: argparse.Namespace, out: Output) -> int:
    require_extra("zstandard", "chronik backup", "zstandard", "ops")
    from chronik.ops.backup import backup_store

    url = store_url(getattr(args, "store", None))
    since = _since(args.since) if args.since else 0
    manifest = await asyncio.to_thread(
        backup_store, url, Path(args.out), since=since, progress=_Progress(out, "backup")
    )
    if out.as_json:
        out.json({"backup": str(args.out), **manifest.to_dict()})
        return 0
    kind = f"incremental after position {since}" if since else "full"
    rate = manifest.events / manifest.seconds if manifest.seconds else 0.0
    out.say(
        ("backed up", "green"),
        f" {manifest.events:,} events of {redact_url(url)} into {args.out} ({kind}; up to "
        f"position {manifest.position}; {manifest.compressed_bytes / 1024:,.1f} KiB; "
        f"{rate:,.0f} events/s)",
    )
    return 0


async def cmd_verify(args: argparse.Namespace, out: Output) -> int:
    require_extra("zstandard", "chronik verify-backup", "zstandard", "ops")
    from chronik.ops.backup import verify_backup

    manifest = await asyncio.to_thread(
        verify_backup, Path(args.backup), progress=_Progress(out, "verify")
    )
    if out.as_json:
        out.json({"ok": True, "backup": str(args.backup), **manifest.to_dict()})
        return 0
    out.say(
        ("ok", "green"),
        f": {args.backup} holds {manifest.events:,} events of {manifest.streams:,} streams "
        f"({manifest.backend}, positions {manifest.since} < p <= {manifest.position}, "
        f"sha256 {manifest.sha256[:16]}…)",
    )
    return 0


async def cmd_restore(args: argparse.Namespace, out: Output) -> int:
    require_extra("zstandard", "chronik restore", "zstandard", "ops")
    from chronik.ops.restore import restore_backup

    url = store_url(getattr(args, "store", None))
    async with await connect(url, create=False) as store:  # `chronik init` creates it
        report = await restore_backup(
            Path(args.backup),
            store,
            resume=args.resume,
            transaction_events=args.transaction_events,
            progress=_Progress(out, "restore"),
        )
    if out.as_json:
        out.json({"store": redact_url(url), **report.to_dict()})
        return 0
    out.say(
        ("restored", "green"),
        f" {report.restored:,} events into {redact_url(url)} in {report.seconds:,.1f} s "
        f"({report.rate:,.0f} events/s); run chronik check, then start the workers",
    )
    return 0


async def cmd_doctor(args: argparse.Namespace, out: Output) -> int:
    from chronik.ops.doctor import diagnose

    url = store_url(getattr(args, "store", None))
    async with await connect(url, create=False) as store:
        report = await diagnose(store, url)
    if out.as_json:
        out.json(report.to_dict())
        return report.exit_code
    style = {"ok": "green", "warn": "yellow", "error": "red"}
    for f in report.findings:
        if f.level == "ok" and not args.verbose:
            continue
        out.say((f"{f.level:5}", style[f.level]), f" {f.check}: {f.what}")
        if f.why:
            out.say("      why: ", f.why)
        if f.fix:
            out.say("      fix: ", f.fix)
    counts = {lvl: sum(1 for f in report.findings if f.level == lvl) for lvl in style}
    out.say(
        (report.level, style[report.level]),
        f": {counts['ok']} ok, {counts['warn']} warning(s), {counts['error']} error(s)"
        + ("" if args.verbose else " (--verbose shows the ok ones)"),
    )
    return report.exit_code


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "backup",
        parents=[common],
        help="online backup of the log into a new folder (zstd NDJSON + manifest)",
        description="Back up the events of a live store in one consistent snapshot, while "
        "writers go on. Snapshots, checkpoints, read models and saga state are not "
        "included (docs/operations.md).",
    )
    p.add_argument("out", help="the backup folder to create (must not exist)")
    p.add_argument(
        "--since",
        default=None,
        help="incremental: a position, or the folder of the backup this one continues",
    )
    p.set_defaults(standalone=cmd_backup)

    p = sub.add_parser(
        "verify-backup",
        parents=[common],
        help="check a backup folder without restoring it (exit 1 when it does not check)",
    )
    p.add_argument("backup", help="the backup folder")
    p.set_defaults(standalone=cmd_verify)

    p = sub.add_parser(
        "restore",
        parents=[common],
        help="restore a backup into an empty store made by `chronik init` (an incremental "
        "one on top of its base)",
    )
    p.add_argument("backup", help="the backup folder")
    p.add_argument("--resume", action="store_true", help="continue a restore that stopped")
    p.add_argument(
        "--transaction-events",
        type=at_least(1),
        default=500_000,
        help="events per transaction (default 500000; at most 1048576 on PostgreSQL)",
    )
    p.set_defaults(standalone=cmd_restore)

    p = sub.add_parser(
        "doctor",
        parents=[common],
        help="check the store's environment: held read horizon, durability, lag, disk "
        "(exit 0 ok, 5 warnings, 1 errors)",
    )
    p.add_argument("--verbose", "-v", action="store_true", help="show the ok checks too")
    p.set_defaults(standalone=cmd_doctor)


# -- --metrics-port, for every long-running worker command ---------------------------------


def add_metrics_port(parser: argparse.ArgumentParser) -> None:
    """``--metrics-port PORT``: serve Prometheus metrics at ``/metrics`` while running."""
    parser.add_argument(
        "--metrics-port",
        type=at_least(0),
        default=None,
        help="serve Prometheus metrics on this port at /metrics (needs chronik[ops])",
    )


@contextlib.asynccontextmanager
async def serving_metrics(
    store: EventStore, port: int | None, projections: Any = None
) -> AsyncIterator[None]:
    """Metrics of ``store`` on ``port`` (none when ``None``) while the block runs."""
    if port is None:
        yield
        return
    require_extra("prometheus_client", "--metrics-port", "prometheus-client", "ops")
    from chronik.ops.metrics import metrics_server

    async with metrics_server(store, port, projections=projections):
        yield
