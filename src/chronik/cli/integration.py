"""``chronik sagas ...`` and ``chronik relay ...``: saga workers and the JetStream outbox relay."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import signal
import sys
from typing import Any

from chronik.cli.main import Output
from chronik.errors import ChronikError
from chronik.store.protocol import EventStore

__all__ = ["register"]


def _load(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ChronikError(f"expected MODULE:OBJECT, not {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ChronikError(f"cannot load {spec!r}: {exc}") from exc


async def _run_until_signal(workers: list[Any], out: Output, what: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    out.err.print(f"running {what} (Ctrl-C or SIGTERM stops)")
    tasks = [asyncio.ensure_future(w.run()) for w in workers]
    stopper = asyncio.ensure_future(stop.wait())
    await asyncio.wait({*tasks, stopper}, return_when=asyncio.FIRST_COMPLETED)
    for w in workers:
        w.stop()
    stopper.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    for err in errors:
        out.err.print(f"[red]worker failed:[/red] {err!r}")
    return 1 if errors else 0


async def cmd_sagas_run(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    factory = _load(args.workers)
    workers = list(factory(store))
    return await _run_until_signal(workers, out, f"{len(workers)} saga workers")


async def cmd_sagas_status(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    instances = await store.query(
        "SELECT saga, status, count(*) FROM saga_instances GROUP BY saga, status "
        "ORDER BY saga, status"
    )
    commands = await store.query(
        "SELECT saga, status, count(*) FROM saga_commands GROUP BY saga, status "
        "ORDER BY saga, status"
    )
    deadlines = await store.query("SELECT saga, count(*) FROM saga_deadlines GROUP BY saga")
    data = {
        "instances": [{"saga": s, "status": st, "count": int(n)} for s, st, n in instances],
        "commands": [{"saga": s, "status": st, "count": int(n)} for s, st, n in commands],
        "deadlines": [{"saga": s, "count": int(n)} for s, n in deadlines],
    }
    if out.as_json:
        out.json(data)
        return 0
    for title, rows in data.items():
        if rows:
            columns = list(rows[0])
            out.table(title, columns, [[r[c] for c in columns] for r in rows])
        else:
            out.console.print(f"[dim]no {title}[/dim]")
    return 0


async def cmd_relay_run(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.nats import OutboxRelay, ensure_stream

    relay = OutboxRelay(
        store,
        args.nats,
        name=args.name or args.stream,
        stream=args.stream,
        prefix=args.prefix,
        categories=args.category or None,
        types=args.type or None,
        batch_size=args.batch_size,
    )
    if args.create_stream:
        await relay.connect()
        await ensure_stream(
            relay._js, args.stream, [f"{args.prefix}.>"], duplicate_window=args.duplicate_window
        )
    return await _run_until_signal([relay], out, f"relay to {args.stream} at {args.nats}")


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    sagas = sub.add_parser("sagas", parents=[common], help="run and inspect sagas")
    ssub = sagas.add_subparsers(dest="subcommand", required=True)
    p = ssub.add_parser("run", parents=[common], help="run saga workers until SIGTERM/SIGINT")
    p.add_argument(
        "workers",
        help="MODULE:OBJECT, a function taking the store and returning workers "
        "(SagaRunner, CommandDispatcher, DeadlineWorker)",
    )
    p.set_defaults(handler=cmd_sagas_run)
    p = ssub.add_parser("status", parents=[common], help="instances, commands and deadlines")
    p.set_defaults(handler=cmd_sagas_status)

    relay = sub.add_parser("relay", parents=[common], help="outbox relay to NATS JetStream")
    rsub = relay.add_subparsers(dest="subcommand", required=True)
    p = rsub.add_parser("run", parents=[common], help="publish events until SIGTERM/SIGINT")
    p.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    p.add_argument("--stream", required=True, help="JetStream stream name")
    p.add_argument("--prefix", required=True, help="subject prefix: PREFIX.category.type")
    p.add_argument("--name", help="checkpoint name (default: the stream name)")
    p.add_argument("--category", action="append", help="publish this category (repeatable)")
    p.add_argument("--type", action="append", help="publish this event type (repeatable)")
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--create-stream", action="store_true", help="create/update the stream")
    p.add_argument("--duplicate-window", type=float, default=120.0, help="seconds")
    p.set_defaults(handler=cmd_relay_run)
