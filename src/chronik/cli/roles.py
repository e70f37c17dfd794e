"""``chronik roles setup``: the least-privilege ``chronik_runtime`` role on PostgreSQL
(docs/security.md "Database roles")."""

from __future__ import annotations

import argparse
from typing import Any

from chronik.cli._common import Output
from chronik.store.protocol import EventStore
from chronik.store.roles import RUNTIME_ROLE, grant_runtime_role

__all__ = ["register"]


async def cmd_setup(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    granted = await grant_runtime_role(store)
    if out.as_json:
        out.json({"role": RUNTIME_ROLE, "granted": granted})
    elif granted:
        out.say(("granted", "green"), f" {RUNTIME_ROLE}: read and append events, run workers; "
                "no update or delete of events")  # fmt: skip
        out.note(f"log in as a member: CREATE ROLE app LOGIN PASSWORD '...' IN ROLE {RUNTIME_ROLE}")
    else:
        out.say(("not granted", "red"), f": {RUNTIME_ROLE} is missing and this role may not "
                "create it; run this as a superuser (or a role with CREATEROLE)")  # fmt: skip
    return 0 if granted else 1


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "roles",
        parents=[common],
        help="PostgreSQL least privilege: the chronik_runtime role (docs/security.md)",
    )
    rsub = p.add_subparsers(dest="roles_command", required=True, metavar="COMMAND")
    q = rsub.add_parser(
        "setup",
        parents=[common],
        help="create chronik_runtime if missing and grant it the store's tables: read and "
        "append events, run workers; never update or delete events (run as the owner)",
    )
    q.set_defaults(handler=cmd_setup)
