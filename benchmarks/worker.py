"""One measurement in a fresh interpreter: ``python -m benchmarks.worker '<json job>'``.

The runner starts one of these per system, workload group and repetition, so no system
inherits another's heap, caches or imports. The last line of stdout is ``RESULT <json>``.
"""

from __future__ import annotations

import sys
from typing import Any

import msgspec

from benchmarks.common import Sizes, System, Target

__all__ = ["Job", "main", "run_job"]

RESULT_PREFIX = "RESULT "


class Job(msgspec.Struct, frozen=True):
    kind: str
    """``chain`` (W1, W4, W6, W6P, W5, W5S), ``w2``, ``w3``, ``w7`` (chronik and the bare
    LISTEN/NOTIFY baseline in one job), ``w8`` (chronik's also measures its sequential
    writer), ``m1_fill`` or ``m1_read``."""
    system: System
    target: Target
    sizes: Sizes
    events: int = 0
    trace: bool = False


def run_job(job: Job) -> dict[str, Any]:
    if job.kind == "m1_fill":
        from benchmarks import memory

        return memory.fill(job.target, job.events)
    if job.kind == "m1_read":
        from benchmarks import memory

        return memory.read(job.target, job.trace)
    if job.kind == "w3":
        from benchmarks import concurrent

        return concurrent.run(job.system, job.target, job.sizes.w3_writers, job.sizes.w3_seconds)
    if job.kind == "w7":
        from benchmarks import chronik_side

        return chronik_side.w7(job.target, job.sizes)
    if job.system == "chronik":
        from benchmarks import chronik_side as side
    elif job.system == "eventsourcing":
        from benchmarks import peer as side  # type: ignore[no-redef]
    elif job.system == "raw":
        from benchmarks import raw as side  # type: ignore[no-redef]
    else:
        from benchmarks import raw_chronik_sql as side  # type: ignore[no-redef]
    if job.kind == "chain":
        return side.chain(job.target, job.sizes)
    if job.kind == "w2":
        return side.w2(job.target, job.sizes)
    if job.kind == "w8":
        if job.system == "raw-chronik-sql":
            raise ValueError("W8 has no raw-chronik-sql baseline")
        return side.w8(job.target, job.sizes)
    raise ValueError(f"unknown job kind {job.kind!r}")


def main(argv: list[str]) -> int:
    job = msgspec.json.decode(argv[0], type=Job)
    result = run_job(job)
    sys.stdout.write(RESULT_PREFIX + msgspec.json.encode(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
