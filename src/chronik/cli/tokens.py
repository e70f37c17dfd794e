"""``chronik tokens ...``: create, list and revoke the API tokens of a store
(docs/security.md). A token's secret is printed once, at creation; the store keeps only its
hash. A revocation holds at the next request of every server on the store."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from chronik.cli._common import Output
from chronik.security import parse_duration, token_store
from chronik.store.protocol import EventStore

__all__ = ["register"]


async def cmd_tokens_create(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    expires = parse_duration(args.expires) if args.expires else None
    info, token = await token_store(store).create(args.name, args.role, expires_in=expires)
    if out.as_json:
        out.json({**info.to_dict(datetime.now(UTC)), "token": token})
        return 0
    out.say(token)
    until = info.expires_at.isoformat() if info.expires_at else "never"
    out.note(
        (f"token {info.name!r} (id {info.id}, roles {', '.join(info.roles)}, expires {until}): ",
         "dim"),
        ("shown once, only its hash is kept", "bold"),
    )  # fmt: skip
    return 0


async def cmd_tokens_list(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    now = datetime.now(UTC)
    tokens = await token_store(store).list()
    if out.as_json:
        out.json([t.to_dict(now) for t in tokens])
        return 0
    if not tokens:
        out.say(("no tokens", "dim"))
        return 0
    out.table(
        "API tokens",
        ["name", "id", "roles", "state", "created (UTC)", "expires (UTC)"],
        [
            [t.name, t.id, ", ".join(t.roles), t.state(now), t.created_at.isoformat(),
             t.expires_at.isoformat() if t.expires_at else ""]
            for t in tokens
        ],
    )  # fmt: skip
    return 0


async def cmd_tokens_revoke(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    info = await token_store(store).revoke(args.token)
    if out.as_json:
        out.json(info.to_dict(datetime.now(UTC)))
        return 0
    out.say(f"revoked token {info.name!r} (id {info.id})")
    return 0


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    tokens = sub.add_parser(
        "tokens", parents=[common], help="create, list and revoke API tokens (docs/security.md)"
    )
    tsub = tokens.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = tsub.add_parser("create", parents=[common], help="a new token, printed once")
    p.add_argument("name", help="a unique name (letters, digits, _ . : @ -)")
    p.add_argument(
        "--role", action="append", required=True, help="a role it holds (repeat for more)"
    )
    p.add_argument("--expires", default=None, help="lifetime: 30d, 12h, 45m, 90s or 2w")
    p.set_defaults(handler=cmd_tokens_create)

    p = tsub.add_parser("list", parents=[common], help="every token (never their secrets)")
    p.set_defaults(handler=cmd_tokens_list)

    p = tsub.add_parser("revoke", parents=[common], help="revoke a token (by name or id)")
    p.add_argument("token", help="the token's name or id")
    p.set_defaults(handler=cmd_tokens_revoke)
