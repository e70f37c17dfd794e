"""Eight writer processes on one hot stream and on many streams: nothing lost, nothing twice.

Writers are processes, not threads (the GIL hides races). The checker is known to be able to
fail: ``test_checker_catches_broken_histories`` feeds it doctored stores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.writers import Stored, check, read_everything, run_writers

WRITERS = 8


def _assert_clean(history: list[dict[str, object]], stored: list[Stored]) -> None:
    verdict = check(history, stored)
    assert verdict.ok > 0
    assert verdict.indeterminate == 0, [h for h in history if h["type"] == "info"][:3]
    assert verdict.clean, verdict
    # every acknowledged event is stored exactly once; conflicts wrote nothing
    acked = sum(len(h["ids"]) for h in history if h["type"] == "ok")  # type: ignore[arg-type,misc]
    assert len(stored) == acked


@pytest.mark.slow
@pytest.mark.parametrize("mode,attempts", [("hot", 40), ("spread", 60)])
async def test_sqlite_writer_processes(tmp_path: Path, mode: str, attempts: int) -> None:
    url = f"sqlite:///{tmp_path}/concurrent.db"
    import chronik

    async with await chronik.connect(url):
        pass  # create the schema once, before the writers race
    history = run_writers(url, mode, WRITERS, attempts, tmp_path)
    _assert_clean(history, await read_everything(url))
    if mode == "hot":
        assert any(h["type"] == "conflict" for h in history), "no contention was produced"


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("mode,attempts", [("hot", 60), ("spread", 100)])
async def test_postgres_writer_processes(
    pg_url: str, tmp_path: Path, mode: str, attempts: int
) -> None:
    import chronik

    async with await chronik.connect(pg_url):
        pass
    history = run_writers(pg_url, mode, WRITERS, attempts, tmp_path)
    _assert_clean(history, await read_everything(pg_url))
    if mode == "hot":
        assert any(h["type"] == "conflict" for h in history), "no contention was produced"


def _history() -> tuple[list[dict[str, object]], list[Stored]]:
    history: list[dict[str, object]] = [
        {
            "writer": 0,
            "counter": 0,
            "stream": "a-1",
            "expected": -1,
            "ids": ["e1", "e2"],
            "type": "ok",
            "version": 1,
            "position": 2,
        },
        {
            "writer": 1,
            "counter": 0,
            "stream": "a-1",
            "expected": -1,
            "ids": ["e3"],
            "type": "conflict",
        },
        {
            "writer": 1,
            "counter": 1,
            "stream": "a-1",
            "expected": 1,
            "ids": ["e4"],
            "type": "ok",
            "version": 2,
            "position": 3,
        },
    ]
    stored = [Stored("e1", "a-1", 0, 1), Stored("e2", "a-1", 1, 2), Stored("e4", "a-1", 2, 3)]
    return history, stored


def test_checker_passes_a_correct_history() -> None:
    history, stored = _history()
    assert check(history, stored).clean


@pytest.mark.parametrize(
    "doctor,field",
    [
        (lambda s: s[:-1], "lost"),
        (lambda s: [*s, Stored("zz", "a-1", 3, 9)], "unexpected"),
        (lambda s: [*s, Stored("e4", "a-1", 3, 9)], "duplicated"),
        (lambda s: [*s, Stored("e3", "a-1", 3, 9)], "failed_but_stored"),
        (lambda s: [s[0], s[2]], "partial_batches"),
        (lambda s: [s[0], s[1], Stored("e4", "a-1", 5, 3)], "version_gaps"),
        (lambda s: [s[1], s[0], s[2]], "position_disorder"),
    ],
)
def test_checker_catches_broken_histories(doctor: object, field: str) -> None:
    history, stored = _history()
    verdict = check(history, doctor(stored))  # type: ignore[operator]
    assert not verdict.clean
    assert getattr(verdict, field)


def test_checker_catches_a_reused_expected_version() -> None:
    history, stored = _history()
    history.append(
        {
            "writer": 2,
            "counter": 0,
            "stream": "a-1",
            "expected": 1,
            "ids": ["e5"],
            "type": "ok",
            "version": 3,
            "position": 4,
        }
    )
    stored.append(Stored("e5", "a-1", 3, 4))
    verdict = check(history, stored)
    assert verdict.reused_expected == [("a-1", 1)]
