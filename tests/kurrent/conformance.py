"""``make conformance``: the KurrentDB protocol features and how many of their tests passed.

Reads the JSON lines tests/kurrent/conftest.py writes when ``CHRONIK_CONFORMANCE_OUT`` is set
(one line per test: its ``feature`` marker and its outcome) and prints a table. Exits 1 when a
test failed or no result was recorded.

    CHRONIK_CONFORMANCE_OUT=results.jsonl pytest tests/kurrent
    python -m tests.kurrent.conformance results.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path


def summarise(lines: list[str]) -> tuple[list[tuple[str, int, int, int]], bool]:
    """Rows of ``(feature, passed, failed, skipped)`` and whether all ran clean."""
    counts: dict[str, Counter[str]] = {}
    for line in lines:
        if not line.strip():
            continue
        row = json.loads(line)
        counts.setdefault(row["feature"], Counter())[row["outcome"]] += 1
    rows = [
        (feature, c["passed"], c["failed"], c["skipped"]) for feature, c in sorted(counts.items())
    ]
    ok = bool(rows) and all(failed == 0 for _, _, failed, _ in rows)
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else ".conformance.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    rows, ok = summarise(lines)
    width = max([len("feature"), *(len(r[0]) for r in rows)])
    print(f"{'feature':<{width}}  passed  failed  skipped")
    for feature, passed, failed, skipped in rows:
        print(f"{feature:<{width}}  {passed:>6}  {failed:>6}  {skipped:>7}")
    total = [sum(int(r[i]) for r in rows) for i in (1, 2, 3)]
    print(f"{'total':<{width}}  {total[0]:>6}  {total[1]:>6}  {total[2]:>7}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
