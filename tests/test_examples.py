"""The examples run as documented (make demo runs the first one)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

from examples import bank_account, iot_devices, loyalty, player_profiles

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


def test_iot_devices_snapshotted_hourly_by_the_snapshotter(tmp_path: Path) -> None:
    lines: list[str] = []
    result = asyncio.run(iot_devices.run(f"sqlite:///{tmp_path}/iot.db", say=lines.append))
    # 3 devices x 3 simulated hours: one snapshot per device and hour, the first at once
    assert result["snapshots"] == 9
    assert result["device-1"] == {"version": 36, "snapshot_version": 25}
    assert "loaded from the snapshot at version 25 + 11 events; same state" in lines[1]


def test_player_profiles_periodic_and_on_demand(tmp_path: Path) -> None:
    lines: list[str] = []
    url = f"sqlite:///{tmp_path}/games.db"
    result = asyncio.run(player_profiles.run(url, say=lines.append))
    assert result == {"version": 41, "snapshot_version": 41, "level": 8, "wins": 26}
    assert "at most one per 10 minutes" in lines[0]
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "chronik",
            "--store",
            url,
            "snapshots",
            "take",
            "player-ada",
            "--app",
            "examples.player_profiles:app",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "snapshot player-ada at version 41" in out


def test_order_fulfillment_stuck_order_found_by_trace_and_replay(tmp_path: Path) -> None:
    import json

    from examples import order_fulfillment

    url = f"sqlite:///{tmp_path}/orders.db"
    lines: list[str] = []
    result = asyncio.run(order_fulfillment.run(url, say=lines.append))
    assert result == {
        "order-1001": "shipped",
        "order-1002": "payment_failed",
        "payment-1002": [
            "PaymentRequested",
            "PaymentRequested",
            "PaymentAuthorized",
            "PaymentDeclined",
        ],
    }

    def chronik_json(*args: str) -> dict[str, object]:
        out = subprocess.run(
            [sys.executable, "-m", "chronik", "--store", url, *args, "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        value: dict[str, object] = json.loads(out)
        return value

    # chronik trace: the stale decline of attempt 1 caused the PaymentFailed
    traced = chronik_json("trace", "checkout-1002")
    nodes = {n["event_id"]: n for n in traced["nodes"]}  # type: ignore[attr-defined]
    assert traced["events"] == 9 and traced["orphans"] == 0
    (failed,) = [n for n in nodes.values() if n["type"] == "PaymentFailed"]
    declined = nodes[failed["parent_id"]]
    assert (declined["stream_id"], declined["type"]) == ("payment-1002", "PaymentDeclined")
    assert nodes[declined["parent_id"]]["type"] == "PaymentRequested"
    assert nodes[declined["parent_id"]]["version"] == 0, "attempt 1's request"

    # chronik replay --diff: that event turned a paid order back into an unpaid one
    replayed = chronik_json(
        "replay", "order-1002", "--diff", "--app", "examples.order_fulfillment:app"
    )
    steps = {s["type"]: s for s in replayed["steps"]}  # type: ignore[attr-defined]
    assert {"path": "paid", "kind": "changed", "before": True, "after": False} in steps[
        "PaymentFailed"
    ]["changes"]
    assert steps["PaymentFailed"]["data"] == {"attempt": 1, "reason": "issuer timeout"}
    assert steps["PaymentConfirmed"]["data"] == {"attempt": 2}
    assert replayed["final_state"]["status"] == "payment_failed"  # type: ignore[index]


def test_financial_transactions_v1_events_replay_after_v2(tmp_path: Path) -> None:
    from examples import financial_transactions

    lines: list[str] = []
    url = f"sqlite:///{tmp_path}/ledger.db"
    result = asyncio.run(financial_transactions.run(url, say=lines.append))
    assert result == {
        "balances": {"EUR": 125_450, "USD": -3_000},
        "version": 3,
        "projection_cents": 122_450,
        "totals": {"EUR": 125_450, "USD": -3_000},
        "stored_versions": [1, 1, 1],
    }
    assert "replayed 3 old events" in lines[1]
    check = subprocess.run(
        [sys.executable, "-m", "chronik", "--store", url, "schema", "check", "--app",
         "examples.financial_transactions:app"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert "ok: 4 events, 0 failed" in check.stdout


def test_crm_contacts_dual_write_serves_both_shapes(tmp_path: Path) -> None:
    from examples import crm_contacts

    lines: list[str] = []
    result = asyncio.run(
        crm_contacts.run(
            f"sqlite:///{tmp_path}/crm.db", f"sqlite:///{tmp_path}/crm-v1.db", say=lines.append
        )
    )
    assert result["v1"] == [
        {"id": "1", "name": "Ada King Lovelace", "email": "ada@x.org"},
        {"id": "2", "name": "Grace Hopper", "email": "grace@navy.mil"},
    ]
    assert result["v2"][0] == {
        "id": "1",
        "first_name": "Ada",
        "last_name": "King Lovelace",
        "emails": ["ada@x.org"],
    }
    assert result["v2"][1]["emails"] == ["grace@navy.mil", "gh@x.org"]
    assert result["messages"] == 4  # two contacts, two shapes, nothing twice
    assert [(s, v) for s, v, _ in result["legacy"]] == [("contact-1", 1), ("contact-2", 1)]
    # the zero-downtime migration: history upcast into the new store, writes moved there
    assert result["migrated"] == [(f"contact-{n}", 2) for n in (1, 2, 3, 4)]
    assert result["pause_seconds"] > 0
    assert "this migration is complete (cut over at position" in result["complete"]
    assert result["messages_after"] == 8  # contacts 3 and 4 published once, both shapes


def test_funds_transfer_completes_and_compensates(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "examples/funds_transfer.py", str(tmp_path / "transfer.db")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "t1 before the saga runs: pending" in out
    assert "'t1': 'completed', 't2': 'compensated'" in out
    assert "'alice': '70', 'bob': '30', 'carol': '0'" in out
