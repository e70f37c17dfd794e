"""The one migration loader of the SQL backends: one numbering rule, one way to record.

Each SQL backend ships its schema as ``store/sql/<backend>/NNNN_name.sql``: four digits, then
a lower-case name. The numbers run 1..n without gaps and are the same, with the same names,
on every SQL backend (where one dialect needs nothing, its file is a no-op that says why;
``tests/unit/test_sql_backends.py`` checks it). A backend applies the pending migrations in
order, in one transaction under its lock, and records each in ``schema_migrations``
(``version``, ``applied_at``, ``name``) in the same transaction. A store migrated by a newer
chronik (a number this one does not know) is refused.

What differs per backend is only how SQL runs: SQLite splits a file into statements on its
writer thread; PostgreSQL sends it whole, with ``{schema}`` replaced by the quoted schema name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.resources import files

from chronik.errors import SchemaError

__all__ = ["BACKENDS", "Migration", "load", "pending"]

BACKENDS = ("sqlite", "postgres")
"""The folders under ``store/sql/``: one per SQL backend."""

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema change of one backend."""

    number: int
    name: str
    """The file name, ``NNNN_name.sql``: what ``schema_migrations.name`` records."""
    sql: str


def load(backend: str) -> list[Migration]:
    """The migrations shipped for ``backend`` (a folder of :data:`BACKENDS`), in order.

    Raises:
        SchemaError: a file breaks the rule (numbered 1..n, no gaps, no number twice).
    """
    folder = files("chronik").joinpath("store", "sql", backend)
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text("utf-8")))
        elif entry.name.endswith(".sql"):
            raise SchemaError(f"{backend} migration {entry.name!r} is not named NNNN_name.sql")
    found.sort(key=lambda m: m.number)
    for expected, migration in enumerate(found, start=1):
        if migration.number != expected:
            raise SchemaError(f"{backend} migrations are not numbered 1..n: {migration.name}")
    return found


def pending(known: Sequence[Migration], applied: Iterable[int], where: str) -> list[Migration]:
    """The migrations of ``known`` not yet ``applied``, in order.

    Raises:
        SchemaError: ``where`` (a file, a schema) has a migration applied that this chronik
            does not know: it was migrated by a newer chronik.
    """
    done = set(applied)
    newest = max((m.number for m in known), default=0)
    newer = sorted(n for n in done if n > newest)
    if newer:
        raise SchemaError(
            f"{where} has schema version {newer[-1]}, but this chronik knows only up to "
            f"{newest}: upgrade chronik"
        )
    return [m for m in known if m.number not in done]
