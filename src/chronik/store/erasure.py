"""What the database does so erased bytes leave its files (crypto-shredding's forget).

Dialect-specific, so it lives in the store layer:

- SQLite: ``PRAGMA secure_delete`` on the writing connection before the erasing
  transaction (deleted and overwritten cells are zeroed in the pages), and a
  ``wal_checkpoint(TRUNCATE)`` after it, so the write-ahead log no longer holds older
  page images.
- PostgreSQL: nothing here. A ``pg_dump`` never shows a deleted or updated row, but the
  old row versions stay in the data files until vacuum reuses their space, and in WAL
  segments and base backups. The subject key in them is wrapped: rotating the
  key-encryption key (docs/security.md) is what makes those copies useless.
"""

from __future__ import annotations

from chronik.store.capabilities import require, supports
from chronik.store.port import SqlStore, Tx

__all__ = ["clean_free_space", "prepare_erasure"]


async def prepare_erasure(tx: Tx) -> None:
    """Make the transaction's deletes and updates overwrite the old bytes (SQLite)."""
    if tx.dialect == "sqlite":
        await tx.execute("PRAGMA secure_delete = ON")


async def clean_free_space(store: object) -> bool:
    """Drop older page images from the write-ahead log (SQLite); ``True`` when done
    (``False``: a reader held the log, the next forget or checkpoint finishes it)."""
    if not supports(store, SqlStore) or require(store, SqlStore).dialect != "sqlite":
        return True
    rows = await require(store, SqlStore).query("PRAGMA wal_checkpoint(TRUNCATE)")
    return bool(rows) and int(rows[0][0]) == 0
