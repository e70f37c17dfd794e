"""``chronik workers ...``: partitioned workers across processes (docs/scale-out.md)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from chronik.cli._common import (
    Output,
    at_least,
    is_async_callable,
    positive_float,
    run_until_signal,
)
from chronik.cli.projections import load_projections
from chronik.errors import ChronikError, InvalidArgument
from chronik.scaleout.status import GroupStatus
from chronik.store import redact_url, store_url
from chronik.store.protocol import EventStore

__all__ = ["register"]


async def cmd_workers_status(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.scaleout import workers_status

    groups = await workers_status(store, args.group)
    if (args.nats is None) != (args.stream is None):
        raise InvalidArgument("--nats", "give --nats and --stream together (an inbox's lag)")
    if args.stream is not None:
        from chronik.cli._common import require_extra

        require_extra("nats", "chronik workers status --nats", "nats-py", "nats")
        groups = [await _with_inbox_lag(g, args.nats, args.stream, out) for g in groups]
    if out.as_json:
        out.json([g.to_dict() for g in groups])
        return 0
    if not groups:
        out.note("no partitioned worker groups in this store")
        return 0
    for g in groups:
        cols = ["partition", "owner", "epoch", "expires_in", "checkpoint", "position", "lag"]
        rows = [
            [f"{x.partition}/{x.partitions}", x.owner or "-", x.epoch,
             "-" if x.expires_in is None else x.expires_in, x.checkpoint, x.position,
             "-" if x.lag is None else x.lag]
            for x in g.partitions
        ]  # fmt: skip
        out.table(f"{g.name}: {len(g.members)} live member(s)", cols, rows)
    return 0


async def _with_inbox_lag(
    group: GroupStatus, servers: str, stream: str, out: Output
) -> GroupStatus:
    """An inbox group with each partition's lag: what JetStream holds for it unacked. When
    the broker cannot say (unreachable, no such stream), a line on stderr says why and the
    lag stays unknown: the store's side of the status is still shown."""
    import dataclasses

    from chronik.nats import StreamMissing
    from chronik.scaleout.inbox import inbox_pending
    from chronik.subscriptions import describe

    kind, _, name = group.name.partition(":")
    if kind != "inbox" or not group.partitions:
        return group
    try:
        pending = await inbox_pending(servers, stream, name, group.partitions[0].partitions)
    except StreamMissing:
        out.note(f"{group.name}: lag unknown: no JetStream stream {stream!r} at {servers}")
        return group
    except Exception as exc:  # the broker's answer, not the store's: shown, not fatal
        out.note(f"{group.name}: lag unknown: {describe(exc)}")
        return group
    parts = [dataclasses.replace(x, lag=pending.get(x.partition)) for x in group.partitions]
    return dataclasses.replace(group, partitions=parts)


async def cmd_workers_resize(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.scaleout import resize

    group = await resize(store, args.group, args.partitions)
    if out.as_json:
        out.json({"name": group.name, "partitions": group.partitions,
                  "resize_to": group.resize_to, "barrier": group.barrier})  # fmt: skip
    elif group.resize_to is None:
        out.say(("unchanged", "yellow"), f" {group.name} has {group.partitions} partitions")
    else:
        out.say(("resizing", "green"), f" {group.name}: {group.partitions} -> "
                f"{group.resize_to} partitions at position {group.barrier}")  # fmt: skip
    return 0


async def cmd_workers_projections(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.scaleout import PartitionedProjectionRunner

    projections = load_projections(args.app)
    if args.only:
        projections = [p for p in projections if p.name in args.only]
        if not projections:
            raise ChronikError(f"none of {args.only} is a projection of {args.app!r}")
    runners = [
        PartitionedProjectionRunner(
            store,
            p,
            partitions=args.partitions,
            member=args.member,
            lease_ttl=args.lease_ttl,
            batch_size=args.batch_size,
            poll_interval=args.interval,
        )
        for p in projections
    ]
    what = ", ".join(f"{p.name} ({args.partitions} partitions)" for p in projections)
    code = await run_until_signal(runners, out, f"{what} on {redact_url(store_url(args.store))}")
    summary: list[dict[str, Any]] = [
        {"name": r.name, "rebalances": r.rebalances, "leases_lost": r.lost} for r in runners
    ]
    if out.as_json:
        out.json(summary)
    else:
        out.note("stopped: " + ", ".join(f"{s['name']}" for s in summary))
    return code


async def cmd_workers_sagas(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    """The workers of ``sagas run``'s factory, each SagaRunner partitioned (the dispatcher
    and deadline workers run as they are: they claim each command or deadline first)."""
    from chronik.cli._common import load_object
    from chronik.errors import LoadError
    from chronik.sagas import SagaRunner
    from chronik.scaleout import PartitionedSagaRunner
    from chronik.workers import Worker

    factory = load_object(args.workers, "workers sagas")
    if not callable(factory):
        raise LoadError(args.workers, "workers sagas", "not a function taking the store")
    workers: list[Worker] = []
    runners: list[PartitionedSagaRunner] = []
    for w in factory(store):
        if isinstance(w, SagaRunner):
            runner = PartitionedSagaRunner(
                store, w.saga, partitions=args.partitions, member=args.member,
                lease_ttl=args.lease_ttl, batch_size=w.batch_size, poll_interval=w.poll_interval,
            )  # fmt: skip
            runners.append(runner)
            workers.append(runner)
        else:
            workers.append(w)
    if not runners:
        raise ChronikError(f"{args.workers!r} returned no SagaRunner to partition")
    what = ", ".join(f"saga {r.saga.name} ({args.partitions} partitions)" for r in runners)
    code = await run_until_signal(workers, out, f"{what} on {redact_url(store_url(args.store))}")
    summary = [{"name": r.name, "rebalances": r.rebalances, "leases_lost": r.lost} for r in runners]
    if out.as_json:
        out.json(summary)
    else:
        out.note("stopped: " + ", ".join(str(s["name"]) for s in summary))
    return code


def _summary(out: Output, runners: Sequence[Any], code: int) -> int:
    summary = [{"name": r.name, "rebalances": r.rebalances, "leases_lost": r.lost} for r in runners]
    if out.as_json:
        out.json(summary)
    else:
        out.note("stopped: " + ", ".join(str(s["name"]) for s in summary))
    return code


async def cmd_workers_snapshots(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.app import load_app
    from chronik.scaleout import PartitionedSnapshotter

    runner = PartitionedSnapshotter.from_app(
        store, load_app(args.app), name=args.name, partitions=args.partitions,
        member=args.member, lease_ttl=args.lease_ttl, batch_size=args.batch_size,
        poll_interval=args.interval,
    )  # fmt: skip
    what = f"snapshotter {args.name} ({args.partitions} partitions)"
    code = await run_until_signal([runner], out, f"{what} on {redact_url(store_url(args.store))}")
    return _summary(out, [runner], code)


async def cmd_workers_relay(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.cli._common import require_extra

    require_extra("nats", "chronik workers relay", "nats-py", "nats")
    from chronik.scaleout.relay import PartitionedRelay

    runner = PartitionedRelay(
        store, args.nats, name=args.name or args.stream, stream=args.stream, prefix=args.prefix,
        categories=args.category or None, types=args.type or None, partitions=args.partitions,
        member=args.member, lease_ttl=args.lease_ttl, batch_size=args.batch_size,
        subject_partitions=args.subject_partitions,
    )  # fmt: skip
    what = f"relay to {args.stream} at {redact_url(args.nats)} ({args.partitions} partitions)"
    code = await run_until_signal([runner], out, what)
    return _summary(out, [runner], code)


async def cmd_workers_inbox(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    from chronik.cli._common import require_extra

    require_extra("nats", "chronik workers inbox", "nats-py", "nats")

    from chronik.app import load_object
    from chronik.errors import LoadError
    from chronik.scaleout.inbox import PartitionedInbox

    handler = load_object(args.inbox_handler, "workers inbox")
    if not is_async_callable(handler):
        raise LoadError(args.inbox_handler, "workers inbox", "not an async function")
    if args.batch_size is not None and not args.unordered:
        raise InvalidArgument(
            "--batch-size", "applies with --unordered only (an ordered partition fetches one)"
        )
    given: dict[str, Any] = {"append_handler" if args.appends else "handler": handler}
    runner = PartitionedInbox(
        store, args.nats, name=args.name, stream=args.stream, prefix=args.prefix,
        partitions=args.partitions, member=args.member, lease_ttl=args.lease_ttl,
        batch_size=args.batch_size or 100, ordered=not args.unordered,
        max_deliver=args.max_deliver, ack_wait=args.ack_wait, **given,
    )  # fmt: skip
    what = (
        f"inbox {args.name} on {args.stream} ({args.prefix}.<0..{args.partitions - 1}>.>) "
        f"at {redact_url(args.nats)}"
    )
    code = await run_until_signal([runner], out, what)
    return _summary(out, [runner], code)


def _lease_options(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--partitions", type=at_least(1), default=8,
                   help=f"partitions per {what} (the same in every process)")  # fmt: skip
    p.add_argument("--member", help="this process's id in the group (default host:pid:random)")
    p.add_argument("--lease-ttl", type=positive_float, default=10.0,
                   help="seconds a lease lasts without a heartbeat")  # fmt: skip


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    workers = sub.add_parser(
        "workers", parents=[common], help="partitioned workers across processes (leases)"
    )
    wsub = workers.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = wsub.add_parser(
        "status", parents=[common], help="members, and per partition owner, epoch and lag"
    )
    p.add_argument("group", nargs="?", help="only this group (projection:NAME:vN, saga:NAME)")
    p.add_argument("--nats", help="with --stream: an inbox's lag from JetStream (NATS URL)")
    p.add_argument("--stream", help="with --nats: the JetStream stream inbox groups read")
    p.set_defaults(handler=cmd_workers_status)

    p = wsub.add_parser(
        "resize", parents=[common], help="change a group's partition count while it runs"
    )
    p.add_argument("group", help="the group (projection:NAME:vN)")
    p.add_argument("partitions", type=at_least(1), help="the new partition count")
    p.set_defaults(handler=cmd_workers_resize)

    p = wsub.add_parser(
        "projections", parents=[common],
        help="run projections split into partitions; start it in N processes",
    )  # fmt: skip
    p.add_argument("app", help="MODULE:OBJECT naming projections (see `projections run`)")
    p.add_argument("--partitions", type=at_least(1), default=8,
                   help="partitions per projection (the same in every process)")  # fmt: skip
    p.add_argument("--only", action="append", help="only this projection (repeatable)")
    p.add_argument("--member", help="this process's id in the group (default host:pid:random)")
    p.add_argument("--lease-ttl", type=positive_float, default=10.0,
                   help="seconds a lease lasts without a heartbeat")  # fmt: skip
    p.add_argument("--batch-size", type=at_least(1), default=500, help="events per batch")
    p.add_argument("--interval", type=positive_float, default=0.5, help="poll interval in seconds")
    p.set_defaults(handler=cmd_workers_projections)

    p = wsub.add_parser(
        "sagas", parents=[common],
        help="run sagas split into partitions (by instance); start it in N processes",
    )  # fmt: skip
    p.add_argument("workers", help="MODULE:OBJECT, as `sagas run` takes (its SagaRunners are "
                   "partitioned, its other workers run as they are)")  # fmt: skip
    p.add_argument("--partitions", type=at_least(1), default=8,
                   help="partitions per saga (the same in every process)")  # fmt: skip
    p.add_argument("--member", help="this process's id in the group (default host:pid:random)")
    p.add_argument("--lease-ttl", type=positive_float, default=10.0,
                   help="seconds a lease lasts without a heartbeat")  # fmt: skip
    p.set_defaults(handler=cmd_workers_sagas)

    p = wsub.add_parser(
        "snapshots", parents=[common],
        help="run the snapshotter split into partitions (by stream); start it in N processes",
    )  # fmt: skip
    p.add_argument("app", help="MODULE:OBJECT, an App with extras['snapshots']")
    p.add_argument("--name", default="default", help="the snapshotter's name (checkpoint)")
    _lease_options(p, "snapshotter")
    p.add_argument("--batch-size", type=at_least(1), default=500, help="events per batch")
    p.add_argument("--interval", type=positive_float, default=0.5, help="poll interval in seconds")
    p.set_defaults(handler=cmd_workers_snapshots)

    p = wsub.add_parser(
        "relay", parents=[common],
        help="run the outbox relay split into partitions (by stream); start it in N processes",
    )  # fmt: skip
    p.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    p.add_argument("--stream", required=True, help="JetStream stream name")
    p.add_argument("--prefix", required=True, help="subject prefix: PREFIX.category.type")
    p.add_argument("--name", help="checkpoint name (default: the stream name)")
    p.add_argument("--category", action="append", help="publish this category (repeatable)")
    p.add_argument("--type", action="append", help="publish this event type (repeatable)")
    _lease_options(p, "relay")
    p.add_argument("--batch-size", type=at_least(1), default=500, help="events per batch")
    p.add_argument("--subject-partitions", type=at_least(1), metavar="N",
                   help="put a partition token (of N, by stream) after the prefix, for "
                   "`workers inbox --partitions N`")  # fmt: skip
    p.set_defaults(handler=cmd_workers_relay)

    p = wsub.add_parser(
        "inbox", parents=[common],
        help="run a JetStream inbox split into partitions (by subject token); start it in N "
        "processes",
    )  # fmt: skip
    p.add_argument("inbox_handler", metavar="handler",
                   help="MODULE:FUNCTION, async (message, tx) -> None (with "
                   "--appends: async (message) -> None, appending idempotently)")  # fmt: skip
    p.add_argument("--nats", default="nats://127.0.0.1:4222", help="NATS server URL")
    p.add_argument("--stream", required=True, help="JetStream stream name")
    p.add_argument("--prefix", required=True,
                   help="subject prefix before the partition token: PREFIX.P.>")  # fmt: skip
    p.add_argument("--name", required=True, help="the inbox's name (dedupe key, consumers)")
    p.add_argument("--appends", action="store_true",
                   help="the handler appends to the store itself (idempotent ids)")  # fmt: skip
    _lease_options(p, "inbox (the publisher's --subject-partitions)")
    p.add_argument("--unordered", action="store_true",
                   help="many messages in flight per partition: no per-stream order")  # fmt: skip
    p.add_argument("--batch-size", type=at_least(1),
                   help="messages per fetch with --unordered (default 100)")  # fmt: skip
    p.add_argument("--max-deliver", type=at_least(1), default=5,
                   help="deliveries before a failing message is dead-lettered")  # fmt: skip
    p.add_argument("--ack-wait", type=positive_float, default=30.0,
                   help="seconds until a killed owner's unacked messages come again")  # fmt: skip
    p.set_defaults(handler=cmd_workers_inbox)
