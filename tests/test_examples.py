"""The examples run as documented (make demo runs the first one)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from examples import bank_account, loyalty

ROOT = Path(__file__).parent.parent


def test_bank_account_story(tmp_path: Path) -> None:
    lines: list[str] = []
    result = asyncio.run(bank_account.run(f"sqlite:///{tmp_path}/bank.db", say=lines.append))
    assert result == {"balance": Decimal("95.00"), "version": 4, "attempts": 2}
    text = "\n".join(lines)
    assert "refused: withdrawing 500.00" in text
    assert "2 attempts" in text
    assert "a stale write is rejected" in text


def test_bank_account_script_with_fresh_file(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    for _ in range(2):  # --fresh makes it repeatable
        out = subprocess.run(
            [sys.executable, "examples/bank_account.py", "--store", f"sqlite:///{db}", "--fresh"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "balance 95.00 at version 4" in out


def test_loyalty_points_pending_then_fresh(tmp_path: Path) -> None:
    lines: list[str] = []
    result = asyncio.run(loyalty.run(f"sqlite:///{tmp_path}/loyalty.db", say=lines.append))
    assert "points updating" in lines[0]
    assert result == {"points": 525}
    assert "carol has 525 points" in lines[1]
