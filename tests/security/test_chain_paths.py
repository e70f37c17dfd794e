"""Every path that writes events keeps the chain valid: concurrent and grouped appends,
appends cancelled at any await, hostile payloads, the migration's backfill of events stored
before it, retention (a stream that starts above version 0), and the import paths (migrate
copy, backup and restore) whose target recomputes the chain. Plus ``chronik verify`` on the
command line (exit status, JSON, HMAC and Ed25519 keys)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chronik
from chronik import NewEvent
from chronik.cli.main import main
from chronik.ops import retention
from chronik.ops.chain import ChainKey, sign_checkpoint, verify
from tests.conftest import PG_URL

KEY = ChainKey.hmac(b"chronik test chain key, 32 bytes or more")


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/chain.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(url: str) -> AsyncIterator[Any]:
    async with await chronik.connect(url) as s:
        yield s


async def hashes(store: Any) -> list[tuple[str, int, bytes]]:
    rows = await store.query("SELECT stream_id, version, hash FROM events ORDER BY position")
    return [(str(s), int(v), bytes(h)) for s, v, h in rows]


# -- concurrency and cancellation ------------------------------------------------------------------


async def test_eight_concurrent_writers_with_group_commit_chain(store: Any) -> None:
    store.appends_in_flight = 1  # everything behind the first append groups

    async def writer(w: int) -> int:
        written = 0
        for n in range(25):
            batch = [NewEvent("Deposited", {"w": w, "n": n, "i": i}) for i in range(1 + n % 3)]
            await store.append(f"acct-{w}-{n % 4}", batch)
            written += len(batch)
        return written

    written = sum(await asyncio.gather(*(writer(w) for w in range(8))))
    assert store.largest_group > 1  # appends shared statements / transactions
    report = await verify(store)
    assert report.ok and report.events == written, report.to_dict()
    # one shared stream, raced with expected_version=ANY: its chain is one line
    await asyncio.gather(*(store.append("hot-1", [NewEvent("Hit", {"w": w}), NewEvent("Hit", {})])
                           for w in range(8)))  # fmt: skip
    assert (await verify(store)).ok


async def test_appends_cancelled_at_any_await_leave_a_valid_chain(store: Any) -> None:
    versions: dict[str, int] = {}
    for k in range(60):
        stream = f"acct-{k % 5}"
        task = asyncio.ensure_future(
            store.append(
                stream, [NewEvent("Deposited", {"k": k, "i": i}) for i in range(k % 4 + 1)]
            )
        )
        for _ in range(k % 15):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        else:
            versions[stream] = versions.get(stream, -1) + k % 4 + 1
        if k % 10 == 9:  # the store still appends and the chain holds after each round
            await store.append("after-1", [NewEvent("Ok", {"k": k})])
            assert (await verify(store)).ok
    await asyncio.sleep(0.2)  # a write that ran to its end after the cancel has committed
    report = await verify(store)
    assert report.ok, report.to_dict()
    assert report.events == sum(1 for _ in await hashes(store))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    payload=st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                     max_size=4),
        max_leaves=12,
    ),
    stream=st.text(alphabet=st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1,
                   max_size=12).filter(lambda s: s.strip() == s and "-" not in s),
)  # fmt: skip
async def test_hostile_payloads_chain_or_are_refused(store: Any, payload: Any, stream: str) -> None:
    before = len(await hashes(store))
    stored = 1
    try:
        await store.append(
            f"p-{stream}", [NewEvent("Any", {"v": payload}, metadata={"m": payload})]
        )
    except chronik.ChronikError:
        stored = 0  # refused by validation (a typed error): nothing stored
    report = await verify(store)
    assert report.ok, report.to_dict()
    assert report.events == before + stored


# -- events stored before the migration --------------------------------------------------------


async def test_the_migration_backfills_events_stored_before_it(tmp_path: Path, pg_url: str) -> None:
    for url in (f"sqlite:///{tmp_path}/old.db", pg_url):
        async with await chronik.connect(url) as s:
            for n in range(12):
                await s.append(f"acct-{n % 3}", [NewEvent("Deposited", {"n": n, "t": "é"})] * 1)
            before = await hashes(s)
        # undo 0017 and store events as an older chronik would (no hash)
        if url.startswith("sqlite"):
            with sqlite3.connect(f"{tmp_path}/old.db") as conn:
                conn.execute("DROP TRIGGER events_chained")
                conn.execute("DROP TABLE chain_checkpoints")
                conn.execute("ALTER TABLE events DROP COLUMN hash")
                conn.execute("DELETE FROM schema_migrations WHERE name = '0017_event_chain.sql'")
        else:
            schema = url.split("schema=")[1]
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP TRIGGER events_chain ON "{schema}".events')
                conn.execute(f'DROP TABLE "{schema}".chain_checkpoints')
                conn.execute(f'ALTER TABLE "{schema}".events DROP COLUMN hash')
                conn.execute(f"""DELETE FROM "{schema}".schema_migrations
                                 WHERE name = '0017_event_chain.sql'""")
        async with await chronik.connect(url) as s:  # applies 0017 again: backfill
            assert await hashes(s) == before
            await s.append("acct-0", [NewEvent("Deposited", {"n": 99})])
            assert (await verify(s)).ok


# -- retention --------------------------------------------------------------------------------


async def test_a_stream_truncated_by_retention_verifies_and_an_unrecorded_gap_does_not(
    store: Any,
) -> None:
    for n in range(6):
        await store.append("order-1", [NewEvent("Placed", {"n": n})])
        await store.append("note-1", [NewEvent("Noted", {"n": n})])
    await sign_checkpoint(store, KEY)
    await retention.set_policy(store, "order", max_count=2)
    removed = await retention.scavenge(store)
    assert removed.events == 4
    report = await verify(store, key=KEY)
    assert report.ok and report.anchored_streams == 1, report.to_dict()
    assert report.reanchored_checkpoints == 1
    await store.append("order-1", [NewEvent("Placed", {"n": 6})])
    await sign_checkpoint(store, KEY)
    assert (await verify(store, key=KEY)).ok
    # negative control: the same kind of gap without a retention record is a deletion
    async with store.transaction() as tx:
        await tx.execute("DELETE FROM events WHERE stream_id = 'note-1' AND version < 2")
    report = await verify(store)
    assert not report.ok and report.first_break is not None
    assert (report.first_break.what, report.first_break.stream_id) == ("deleted", "note-1")


# -- import paths: the target recomputes --------------------------------------------------------


async def test_copy_and_restore_targets_have_valid_chains(tmp_path: Path, pg_url: str) -> None:
    from chronik.migrate import copy_store

    source_url = f"sqlite:///{tmp_path}/source.db"
    async with await chronik.connect(source_url) as source:
        for n in range(40):
            await source.append(f"acct-{n % 6}", [NewEvent("Deposited", {"n": n, "x": "ü"})])
        async with await chronik.connect(pg_url) as target:
            assert (await copy_store(source, target)).written == 40
            assert (await verify(target)).ok
            # same stored bytes, same recorded times: the same hashes on both backends
            assert await hashes(target) == await hashes(source)
    pytest.importorskip("zstandard")
    from chronik.ops.backup import backup_store
    from chronik.ops.restore import restore_backup

    await asyncio.to_thread(backup_store, source_url, tmp_path / "b")
    async with await chronik.connect(f"sqlite:///{tmp_path}/restored.db") as restored:
        await restore_backup(tmp_path / "b", restored)
        assert (await verify(restored)).ok
        assert len(await hashes(restored)) == 40


# -- the command line --------------------------------------------------------------------------


def cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    code = main(argv)
    out = capsys.readouterr().out
    return code, json.loads(out) if "--json" in argv and out.strip() else out


def test_cli_verify_signs_checks_and_exits_6_on_a_break(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/cli.db"

    async def fill() -> None:
        async with await chronik.connect(url) as s:
            for n in range(5):
                await s.append(f"acct-{n % 2}", [NewEvent("Deposited", {"n": n})])

    asyncio.run(fill())
    monkeypatch.setenv("CHRONIK_CHAIN_KEY", "ab" * 32)
    code, signed = cli(["verify", "--store", url, "--sign", "--json"], capsys)
    assert code == 0 and signed["signed"]["events"] == 5
    code, report = cli(["verify", "--store", url, "--json"], capsys)
    assert code == 0 and report["ok"] and report["signatures_checked"]
    # Ed25519: the private key signs, the public key checks
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    (tmp_path / "k.pem").write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))  # fmt: skip
    (tmp_path / "k.pub").write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    monkeypatch.delenv("CHRONIK_CHAIN_KEY")
    code, _ = cli(
        ["verify", "--store", url, "--sign", "--key-file", str(tmp_path / "k.pem")], capsys
    )
    assert code == 0
    code, report = cli(["verify", "--store", url, "--key-file", str(tmp_path / "k.pub"), "--json"],
                       capsys)  # fmt: skip
    # the first checkpoint was signed with the HMAC key: another key is a break
    assert code == 6 and "signed by key" in report["first_break"]["message"]
    code, report = cli(["verify", "--store", url, "--since", str(report["first_break"]
                        ["through_position"]), "--key-file", str(tmp_path / "k.pub"), "--json"],
                       capsys)  # fmt: skip
    assert code == 0 and report["ok"], report
    code, _ = cli(
        ["verify", "--store", url, "--sign", "--key-file", str(tmp_path / "k.pub")], capsys
    )
    assert code == 1  # a public key cannot sign (InvalidArgument): nothing written
    with sqlite3.connect(f"{tmp_path}/cli.db") as conn:
        conn.execute("DROP TRIGGER events_no_update")
        conn.execute("UPDATE events SET data = '{\"n\": 100}' WHERE stream_id = 'acct-1' "
                     "AND version = 1")  # fmt: skip
    code, report = cli(["verify", "--store", url, "--json"], capsys)
    assert code == 6 and not report["ok"]
    assert report["first_break"] == {
        "what": "changed", "stream_id": "acct-1", "version": 1, "position": 4,
        "through_position": None, "message": "its stored bytes do not give its hash",
    }  # fmt: skip
    code, text = cli(["verify", "--store", url], capsys)
    assert code == 6 and "changed at position 4, stream acct-1 version 1" in text
    code, _ = cli(["verify", "--store", url, "--sign"], capsys)
    assert code == 1  # no key (InvalidArgument)

    # --sign checks what it signs (the events since the last checkpoint; the earlier break
    # stays a break of the earlier checkpoints): a tampered new event is not signed
    async def one_more() -> None:
        async with await chronik.connect(url) as s:
            await s.append("acct-9", [NewEvent("Deposited", {"n": 9})])

    asyncio.run(one_more())
    with sqlite3.connect(f"{tmp_path}/cli.db") as conn:
        conn.execute("UPDATE events SET type = 'Forged' WHERE stream_id = 'acct-9'")
    monkeypatch.setenv("CHRONIK_CHAIN_KEY", "ab" * 32)
    code, refused = cli(["verify", "--store", url, "--sign", "--json"], capsys)
    assert code == 6 and refused["signed"] is None and "position 6" in refused["error"]


async def test_the_memory_store_keeps_no_chain_and_says_so() -> None:
    async with await chronik.connect("memory://") as store:
        with pytest.raises(chronik.MissingCapability):
            await verify(store)
