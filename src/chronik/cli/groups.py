"""``chronik groups create|update|delete|list|info|parked|replay-parked`` (consumer groups,
docs/scale-out.md).

Thin: each command calls :class:`chronik.scaleout.groups.ConsumerGroup` and prints;
``--json`` prints one JSON value on stdout. A missing group exits 3 (not found).
"""

from __future__ import annotations

import argparse
from typing import Any

from chronik.cli._common import Output, at_least, positive_float
from chronik.errors import GroupNotFound
from chronik.scaleout.groups import ConsumerGroup, GroupMessage
from chronik.store.protocol import EventStore

__all__ = ["register"]


def _settings(args: argparse.Namespace, old: ConsumerGroup | None) -> dict[str, Any]:
    """The group's settings from the command line, the old group's where not given."""
    categories = args.category or None
    stream_id = args.stream
    if old is not None and categories is None and stream_id is None:
        categories, stream_id = old.categories, old.stream_id
    return {
        "categories": categories,
        "stream_id": stream_id,
        "strategy": args.strategy or (old.strategy if old else "round_robin"),
        "max_retries": args.max_retries or (old.max_retries if old else 10),
        "message_timeout": args.message_timeout or (old.message_timeout if old else 30.0),
        "settings": old.settings if old else None,
    }


def _show(out: Output, facts: dict[str, Any]) -> None:
    covers = facts["stream_id"] or ", ".join(facts["categories"] or []) or "(all)"
    out.table(
        f"consumer group {facts['name']}",
        ["covers", "strategy", "max retries", "timeout s", "position", "pending", "in flight",
         "parked"],
        [[covers, facts["strategy"], facts["max_retries"], facts["message_timeout"],
          facts["position"], facts["pending"], facts["in_flight"], facts["parked"]]],
    )  # fmt: skip


async def cmd_create(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    group = ConsumerGroup(store, args.name, **_settings(args, None))
    start = await store.head_position() if args.from_end else 0
    await group.create(exist_ok=False, start_after=start)
    facts = await group.info()
    if out.as_json:
        out.json(facts)
    else:
        out.say(("created", "green"), f" consumer group {group.name}")
        _show(out, facts)
    return 0


async def cmd_update(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    old = await ConsumerGroup.load(store, args.name)
    group = ConsumerGroup(store, args.name, **_settings(args, old))
    await group.update()
    facts = await group.info()
    if out.as_json:
        out.json(facts)
    else:
        out.say(("updated", "green"), f" consumer group {group.name}")
        _show(out, facts)
    return 0


async def cmd_delete(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    if not await ConsumerGroup(store, args.name).delete():
        raise GroupNotFound(args.name)
    if out.as_json:
        out.json({"name": args.name, "deleted": True})
    else:
        out.say(("deleted", "green"), f" consumer group {args.name} and its messages")
    return 0


async def cmd_list(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    rows = [await g.info() for g in await ConsumerGroup.all(store)]
    if out.as_json:
        out.json({"groups": rows})
        return 0
    out.records(
        "consumer groups",
        [{"name": r["name"], "covers": r["stream_id"] or ",".join(r["categories"] or []) or
          "(all)", "strategy": r["strategy"], "pending": r["pending"],
          "in flight": r["in_flight"], "parked": r["parked"]} for r in rows],
        empty="no consumer group (`chronik groups create` adds one)",
    )  # fmt: skip
    return 0


async def cmd_info(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    facts = await (await ConsumerGroup.load(store, args.name)).info()
    if out.as_json:
        out.json(facts)
    else:
        _show(out, facts)
    return 0


def _parked_row(m: GroupMessage) -> dict[str, Any]:
    return {"position": m.position, "stream_id": m.stream_id, "version": m.version,
            "event_id": m.event_id, "type": m.type, "attempts": m.attempts,
            "error": m.error}  # fmt: skip


async def cmd_parked(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    group = await ConsumerGroup.load(store, args.name)
    rows = [_parked_row(m) for m in (await group.parked())[: args.limit]]
    out.records(f"parked messages of {args.name}", rows, empty="no parked message")
    return 0


async def cmd_replay(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    group = await ConsumerGroup.load(store, args.name)
    n = await group.replay_parked(limit=args.limit)
    if out.as_json:
        out.json({"name": args.name, "replayed": n})
    else:
        out.say(("replayed", "green"), f" {n} parked messages of {args.name}: handed out again")
    return 0


def _group_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--category",
        action="append",
        default=None,
        help="a category the group covers (repeat for more; default: all)",
    )
    p.add_argument("--stream", default=None, help="cover only this stream")
    p.add_argument(
        "--strategy",
        choices=["round_robin", "pinned"],
        default=None,
        help="round_robin (default) or pinned (per-stream order)",
    )
    p.add_argument(
        "--max-retries",
        type=at_least(1),
        default=None,
        help="deliveries before a message is parked (default 10)",
    )
    p.add_argument(
        "--message-timeout",
        type=positive_float,
        default=None,
        help="seconds to ack before a message is handed out again (default 30)",
    )


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "groups",
        parents=[common],
        help="consumer groups: competing consumers with ack, retry and parking",
        description="Consumer groups (docs/scale-out.md): the same groups that the HTTP face "
        "and the KurrentDB face's persistent subscriptions serve.",
    )
    gsub = p.add_subparsers(dest="groups_command", required=True, metavar="COMMAND")
    q = gsub.add_parser("create", parents=[common], help="create a group")
    q.add_argument("name")
    _group_options(q)
    q.add_argument(
        "--from-end",
        action="store_true",
        help="take only events appended from now on (default: the whole log)",
    )
    q.set_defaults(handler=cmd_create)
    q = gsub.add_parser(
        "update",
        parents=[common],
        help="change a group's settings (its position and messages stay)",
    )
    q.add_argument("name")
    _group_options(q)
    q.set_defaults(handler=cmd_update)
    q = gsub.add_parser("delete", parents=[common], help="delete a group and its messages")
    q.add_argument("name")
    q.set_defaults(handler=cmd_delete)
    q = gsub.add_parser("list", parents=[common], help="the groups and their counts")
    q.set_defaults(handler=cmd_list)
    q = gsub.add_parser("info", parents=[common], help="a group's settings and counts")
    q.add_argument("name")
    q.set_defaults(handler=cmd_info)
    q = gsub.add_parser("parked", parents=[common], help="a group's parked messages")
    q.add_argument("name")
    q.add_argument("--limit", type=at_least(1), default=100, help="at most N (default 100)")
    q.set_defaults(handler=cmd_parked)
    q = gsub.add_parser(
        "replay-parked", parents=[common], help="hand a group's parked messages out again"
    )
    q.add_argument("name")
    q.add_argument("--limit", type=at_least(1), default=None, help="only the oldest N")
    q.set_defaults(handler=cmd_replay)
