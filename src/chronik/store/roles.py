"""Least privilege on PostgreSQL: the ``chronik_runtime`` role (migration 0015).

Applications connect as a login role that is a member of ``chronik_runtime``: it reads the
log and appends to it, runs projections, sagas and the other workers, but PostgreSQL refuses
it any ``UPDATE``, ``DELETE`` or ``TRUNCATE`` of events, and any change to retention, its
records, the fence, tokens and the migrations' record. Those run as the schema's owner (the
role that ran the migrations). docs/security.md "Database roles" has the recipe.
"""

from __future__ import annotations

from chronik.errors import ChronikError
from chronik.store.capabilities import require, supports
from chronik.store.port import SqlStore

__all__ = ["RUNTIME_ROLE", "grant_runtime_role"]

RUNTIME_ROLE = "chronik_runtime"


async def grant_runtime_role(store: object) -> bool:
    """(Re)apply the grants of :data:`RUNTIME_ROLE` on the store's schema, creating the role
    when missing; run as the schema's owner (with CREATEROLE, or after a superuser created
    the role). Returns whether the grants are in place.

    Raises:
        ChronikError: the store is not PostgreSQL (SQLite has no roles: protect the file).
    """
    if not supports(store, SqlStore) or getattr(store, "dialect", "") != "postgresql":
        raise ChronikError(
            "database roles are a PostgreSQL feature; a SQLite file is protected by its file "
            "permissions"
        )
    rows = await require(store, SqlStore).query("SELECT chronik_grant_runtime()")
    return bool(rows and rows[0][0])
