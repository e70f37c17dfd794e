"""Moving a whole store into another: copy (upcast or transformed), follow, cut over.

- :mod:`chronik.migrate.copy` — :func:`copy_store` and :func:`verify_copy`: the resumable,
  verified copy (``chronik migrate copy`` / ``verify``).
- :mod:`chronik.migrate.cutover` — :class:`CopyFollower` (``copy --follow``),
  :func:`cutover` (fence, copy the tail, verify, mark complete), :class:`MigratingStore`
  (the writers' side), :func:`cancel_cutover`, :func:`map_checkpoint`.

The procedure is docs/schema-evolution.md, "Zero-downtime migration".
"""

from __future__ import annotations

from chronik.migrate.copy import (
    CHECKPOINT_PREFIX,
    COMPLETE_PREFIX,
    CUTOVER_HEAD_PREFIX,
    CopyProgress,
    CopyReport,
    Transform,
    Verification,
    copy_store,
    verify_copy,
)
from chronik.migrate.cutover import (
    CopyFollower,
    CutoverReport,
    MigratingStore,
    Switch,
    cancel_cutover,
    cutover,
    map_checkpoint,
)

__all__ = [
    "CHECKPOINT_PREFIX",
    "COMPLETE_PREFIX",
    "CUTOVER_HEAD_PREFIX",
    "CopyFollower",
    "CopyProgress",
    "CopyReport",
    "CutoverReport",
    "MigratingStore",
    "Switch",
    "Transform",
    "Verification",
    "cancel_cutover",
    "copy_store",
    "cutover",
    "map_checkpoint",
    "verify_copy",
]
