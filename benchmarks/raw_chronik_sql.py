"""The ``raw-chronik-sql`` baseline: the raw driver running chronik's own SQL on chronik's own
tables (the ``raw`` baseline of the runs before issue 13, kept so their numbers stay
comparable). See :mod:`benchmarks.raw` (``_ChronikSqlite``, ``_ChronikPostgres``).
"""

from __future__ import annotations

from benchmarks import raw
from benchmarks.common import Sizes, Target

__all__ = ["chain", "w2"]

Metrics = dict[str, float]


def chain(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    """W1, W4, W6, W6P, W5 and W5S with chronik's statements."""
    return raw.chain(target, sizes, chronik_sql=True)


def w2(target: Target, sizes: Sizes) -> dict[str, Metrics]:
    """W2 with chronik's statements."""
    return raw.w2(target, sizes, chronik_sql=True)
