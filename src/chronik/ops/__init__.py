"""Operating a store: online backup and verified restore, the doctor, the read horizon and
Prometheus metrics (docs/operations.md).

The modules are imported by name (``chronik.ops.backup``, ...); nothing here loads a worker.
"""

from __future__ import annotations

__all__: list[str] = []
