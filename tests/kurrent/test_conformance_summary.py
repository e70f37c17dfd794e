"""The conformance summary counts what the test run recorded, and fails on a failure."""

from __future__ import annotations

import json

from tests.kurrent.conformance import summarise


def _line(feature: str, outcome: str) -> str:
    return json.dumps({"feature": feature, "test": "t", "outcome": outcome})


def test_summary_counts_per_feature() -> None:
    rows, ok = summarise(
        [_line("append", "passed"), _line("append", "passed"), _line("gossip", "skipped")]
    )
    assert rows == [("append", 2, 0, 0), ("gossip", 0, 0, 1)] and ok


def test_summary_fails_on_a_failure_or_nothing() -> None:
    assert not summarise([_line("append", "passed"), _line("read-all", "failed")])[1]
    assert not summarise([])[1]
