"""``chronik sagas ...`` and ``chronik relay ...``: saga workers and the JetStream outbox relay."""

from __future__ import annotations

import argparse
from typing import Any

from chronik.cli._common import (
    Output,
    at_least,
    is_async_callable,
    load_object,
    positive_float,
    require_extra,
    run_until_signal,
)
from chronik.cli.ops import add_metrics_port, serving_metrics
from chronik.errors import LoadError
from chronik.store import EventStore, SqlStore, redact_url, require

__all__ = ["register"]


async def cmd_sagas_run(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    factory = load_object(args.workers, "sagas run")
    if not callable(factory):
        raise LoadError(args.workers, "sagas run", "not a function taking the store")
    workers = list(factory(store))
    async with serving_metrics(store, args.metrics_port):
        return await run_until_signal(workers, out, f"{len(workers)} saga workers")


async def cmd_sagas_status(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.sagas.status import saga_counts

    counts = await saga_counts(require(store, SqlStore))
    data = {
        "instances": [{"saga": s, "status": st, "count": n} for s, st, n in counts.instances],
        "commands": [{"saga": s, "status": st, "count": n} for s, st, n in counts.commands],
        "deadlines": [{"saga": s, "count": n} for s, n in counts.deadlines.items()],
    }
    if out.as_json:
        out.json(data)
        return 0
    for title, rows in data.items():
        out.records(title, rows, empty=f"no {title}")
    return 0


async def cmd_relay_run(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    require_extra("nats", "chronik relay run", "nats-py", "nats")  # fail now, not retry forever
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
        subject_partitions=args.subject_partitions,
    )
    if args.create_stream:
        await relay.connect()
        await ensure_stream(
            relay._js, args.stream, [f"{args.prefix}.>"], duplicate_window=args.duplicate_window
        )
    async with serving_metrics(store, args.metrics_port):
        return await run_until_signal(
            [relay], out, f"relay to {args.stream} at {redact_url(args.nats)}"
        )


async def cmd_relay_status(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    """One row per ``relay:NAME`` checkpoint. A relay's filters are not stored, so the lag
    counts every event after the checkpoint unless ``--category``/``--type`` say otherwise."""
    categories = args.category or None
    types = args.type or None
    lag_filter = (
        None if categories is None and types is None else {"categories": categories, "types": types}
    )
    head = await store.head_position()
    rows: list[dict[str, Any]] = []
    for checkpoint, position in sorted((await store.checkpoints()).items()):
        name = checkpoint.removeprefix("relay:")
        if name == checkpoint or (args.name and name not in args.name):
            continue
        rows.append(
            {
                "name": name,
                "checkpoint": position,
                "head": head,
                "lag_events": await store.count_events(
                    after=position, categories=categories, types=types
                ),
                "lag_filter": lag_filter,
                "dead_letters": len(await store.dead_letters(checkpoint)),
            }
        )
    columns = ["name", "checkpoint", "head", "lag_events", "dead_letters"]
    out.records("relays", rows, empty="no relay has a checkpoint yet", columns=columns)
    if out.as_json or not rows:
        return 0
    if lag_filter is None:
        out.say(
            (
                "lag: every event after the checkpoint (unfiltered); pass the relay's "
                "--category/--type to count only what it publishes",
                "dim",
            )
        )
    else:
        out.say(
            (
                f"lag: events of categories {', '.join(categories or ['any'])}, "
                f"types {', '.join(types or ['any'])}",
                "dim",
            )
        )
    return 0


async def cmd_inbox_dead_letters(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    """List an inbox's dead letters, retry them with a fixed handler, or discard one."""
    require_extra("nats", "chronik inbox dead-letters", "nats-py", "nats")
    from chronik.errors import InvalidArgument
    from chronik.nats import (
        discard_inbox_dead_letter,
        inbox_dead_letters,
        retry_inbox_dead_letters,
        stored_payload,
    )

    if (args.retry or args.discard) and not args.name:
        raise InvalidArgument("name", "--retry and --discard need the inbox's NAME")
    if args.retry and args.discard:
        raise InvalidArgument("--discard", "give --retry or --discard, not both")
    if args.appends and not args.retry:
        raise InvalidArgument("--appends", "applies with --retry only")
    if args.discard:
        found = await discard_inbox_dead_letter(store, args.name, args.discard)
        if out.as_json:
            out.json({"discarded": found})
        else:
            out.say(f"discarded {args.discard}" if found else f"no dead letter {args.discard}")
        return 0 if found else 1
    if args.retry:
        handler = load_object(args.retry, "inbox dead-letters --retry")
        if not is_async_callable(handler):
            raise LoadError(args.retry, "inbox dead-letters --retry", "not an async function")
        given: dict[str, Any] = {"append_handler" if args.appends else "handler": handler}
        fixed, failing = await retry_inbox_dead_letters(store, args.name, **given)
        if out.as_json:
            out.json({"fixed": fixed, "still_failing": failing})
        else:
            out.say(f"retried dead letters of {args.name}: {fixed} fixed, {failing} still failing")
        return 0 if failing == 0 else 1
    rows = [
        {
            "consumer": d.consumer,
            "message_id": d.message_id,
            "subject": d.subject,
            "deliveries": d.deliveries,
            "error": d.error,
            "created_at": d.created_at,
            "headers": d.headers,
            "data": stored_payload(d.data),  # text, or base64:... when it is not
        }
        for d in await inbox_dead_letters(store, args.name)
    ]
    columns = ["consumer", "message_id", "subject", "deliveries", "error"]
    out.records(f"{len(rows)} dead letter(s)", rows, empty="no dead letters", columns=columns)
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    sagas = sub.add_parser("sagas", parents=[common], help="run and inspect sagas")
    ssub = sagas.add_subparsers(dest="subcommand", required=True)
    p = ssub.add_parser("run", parents=[common], help="run saga workers until SIGTERM/SIGINT")
    p.add_argument(
        "workers",
        help="MODULE:OBJECT, a function taking the store and returning workers "
        "(SagaRunner, CommandDispatcher, DeadlineWorker)",
    )
    add_metrics_port(p)
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
    p.add_argument("--batch-size", type=at_least(1), default=500, help="events per batch")
    p.add_argument("--subject-partitions", type=at_least(1), metavar="N",
                   help="put a partition token (of N, by stream) after the prefix: "
                   "PREFIX.P.category.type, for `workers inbox --partitions N`")  # fmt: skip
    p.add_argument("--create-stream", action="store_true", help="create/update the stream")
    p.add_argument(
        "--duplicate-window",
        type=positive_float,
        default=120.0,
        help="JetStream's duplicate window in seconds",
    )
    add_metrics_port(p)
    p.set_defaults(handler=cmd_relay_run)
    p = rsub.add_parser(
        "status", parents=[common], help="checkpoint, head, lag and dead letters of each relay"
    )
    p.add_argument("name", nargs="*", help="only these relays (the NAME of relay:NAME)")
    p.add_argument(
        "--category", action="append", help="count lag in this category only (repeatable)"
    )
    p.add_argument("--type", action="append", help="count lag of this type only (repeatable)")
    p.set_defaults(handler=cmd_relay_status)

    inbox = sub.add_parser("inbox", parents=[common], help="JetStream inbox dead letters")
    isub = inbox.add_subparsers(dest="subcommand", required=True)
    p = isub.add_parser(
        "dead-letters", parents=[common],
        help="list an inbox's dead letters, --retry them with a fixed handler, or --discard one",
    )  # fmt: skip
    p.add_argument("name", nargs="?", help="the inbox's name (default: every inbox's)")
    p.add_argument(
        "--retry", metavar="MODULE:FUNCTION",
        help="run each through this (fixed) handler; applied ones are removed",
    )  # fmt: skip
    p.add_argument(
        "--appends", action="store_true",
        help="the --retry handler appends to the store itself (idempotent ids)",
    )  # fmt: skip
    p.add_argument("--discard", metavar="MESSAGE_ID", help="drop this dead letter")
    p.set_defaults(handler=cmd_inbox_dead_letters)
