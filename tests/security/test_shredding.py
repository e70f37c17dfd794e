"""Crypto-shredding (issue 19 item 2): personal fields encrypted per subject, ``forget``.

The canary test writes a canary string for a subject into events (encrypted), a snapshot,
a projection table, and a backup, and looks for it in the raw bytes of every place the
store keeps data before forget (negative control: it must be found) and after (0 times).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chronik.codec import EventRegistry
from chronik.errors import CiphertextError, KeyEncryptionKeyError, RegistryError
from chronik.events import RecordedEvent
from chronik.ops.chain import verify as verify_chain
from chronik.projections import Projection, ProjectionRunner
from chronik.security.keys import LocalKeyEncryptionKey, generate_kek
from chronik.security.shredding import (
    ERASURE_CATEGORY,
    ERASURE_TYPE,
    Shredder,
    ShreddingStore,
    erased_subject,
    erasure_stream,
    forget,
)
from chronik.snapshots import Snapshot, snapshot_store
from chronik.store import connect
from chronik.store.protocol import EventStore, Tx

REG = EventRegistry()
KEK_HEX = os.environ.setdefault("CHRONIK_TEST_SHRED_KEK", generate_kek())  # children inherit it


@REG.event("CustomerRegistered", personal=("email", "name", "profile"), subject="customer_id")
@dataclasses.dataclass(frozen=True)
class CustomerRegistered:
    customer_id: str
    email: str
    name: str
    profile: Any = None


@REG.event("CustomerRenamed", personal=("name",), subject="customer_id", erased={"name": "?"})
@dataclasses.dataclass(frozen=True)
class CustomerRenamed:
    customer_id: str
    name: str
    note: str = ""


def _kek() -> LocalKeyEncryptionKey:
    return LocalKeyEncryptionKey.from_text(KEK_HEX, source="test")


async def _open(url: str, *, ttl: float = 5.0) -> ShreddingStore:
    return ShreddingStore(await connect(url), Shredder(REG, _kek(), cache_ttl=ttl))


def _fold(events: list[Any]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for e in events:
        state.update(dataclasses.asdict(e))
    return state


async def _decoded(store: EventStore, stream_id: str) -> list[Any]:
    return [REG.decode(e) async for e in store.read_stream(stream_id)]


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.db"
    return str(request.getfixturevalue("pg_url"))


async def test_roundtrip_and_forget_reads_replacements(url: str) -> None:
    store = await _open(url)
    try:
        cid = "c-" + uuid.uuid4().hex[:8]
        await store.append(f"customer-{cid}", REG.to_new_events([
            CustomerRegistered(cid, "ann@example.org", "Ann", {"tags": ["ä", 1]}),
            CustomerRenamed(cid, "Anne", note="kept"),
        ]))  # fmt: skip
        raw = [e.raw_data async for e in store.inner.read_stream(f"customer-{cid}")]
        assert all(b"Ann" not in r and b"ann@" not in r for r in raw)
        assert _fold(await _decoded(store, f"customer-{cid}"))["name"] == "Anne"
        result = await store.forget(cid)
        assert result.key_destroyed and result.erasure_recorded
        state = _fold(await _decoded(store, f"customer-{cid}"))
        assert state == {
            "customer_id": cid, "email": "[erased]", "name": "?", "profile": None, "note": "kept"
        }  # fmt: skip
        # the hash chain covers the stored ciphertext: forgetting keeps it green
        assert (await verify_chain(store.inner)).ok
        # forget twice: idempotent, one erasure event
        again = await store.forget(cid)
        assert not again.key_destroyed and not again.erasure_recorded
        erasures = [e async for e in store.read_stream(erasure_stream(cid))]
        assert [(e.type, erased_subject(e)) for e in erasures] == [(ERASURE_TYPE, cid)]
        assert cid.encode() in erasures[0].raw_data and b"Ann" not in erasures[0].raw_data
        # a later write for a forgotten subject stores nothing of the value
        await store.append(f"customer-{cid}", REG.to_new_events([CustomerRenamed(cid, "Zed")]))
        last = [e async for e in store.inner.read_stream(f"customer-{cid}")][-1]
        assert b"Zed" not in last.raw_data
        assert (await _decoded(store, f"customer-{cid}"))[-1].name == "?"
    finally:
        await store.close()


def _count_in_files(paths: list[Path], needle: bytes) -> int:
    import zstandard

    total = 0
    for path in paths:
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.suffix == ".zst":
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        total += data.count(needle)
    return total


async def _write_canary(store: ShreddingStore, cid: str, canary: str) -> None:
    stream = f"customer-{cid}"
    await store.append(stream, REG.to_new_events([
        CustomerRegistered(cid, f"{canary}@example.org", canary, {"nested": [canary]}),
    ]))  # fmt: skip
    state = _fold(await _decoded(store, stream))
    snaps = snapshot_store(store.inner)
    await snaps.save(Snapshot(stream, 0, "v1", msgspec.json.encode(state), datetime.now(UTC)))
    async with store.transaction() as tx:
        await tx.execute("CREATE TABLE IF NOT EXISTS customers (id TEXT PRIMARY KEY, name TEXT)")
        await tx.execute(
            "INSERT INTO customers (id, name) VALUES (:id, :name)", {"id": cid, "name": canary}
        )


async def _scrub(subject: str, tx: Tx) -> None:
    await tx.execute("UPDATE customers SET name = '[erased]' WHERE id = :id", {"id": subject})


def _pg_dump(url: str) -> bytes:
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    schema = parse_qs(parts.query)["schema"][0]
    dsn = url.split("?")[0]
    return subprocess.run(
        ["pg_dump", "--schema", schema, dsn], check=True, capture_output=True
    ).stdout


async def test_canary_gone_after_forget_everywhere(url: str, tmp_path: Path) -> None:
    canary = "Canary" + uuid.uuid4().hex[:12]
    needle = canary.encode()
    cid = "c-" + uuid.uuid4().hex[:8]
    store = await _open(url)
    sqlite_files = [Path(url.removeprefix("sqlite:///") + s) for s in ("", "-wal")]
    try:
        await _write_canary(store, cid, canary)
        # events hold ciphertext only, even before forget
        assert not any([needle in e.raw_data async for e in store.inner.read_all()])
        # negative control: the checker finds the canary in the snapshot and read model
        if url.startswith("sqlite"):
            assert _count_in_files(sqlite_files, needle) > 0
        else:
            assert _pg_dump(url).count(needle) > 0
        await store.forget(cid, scrubbers=[_scrub])
        state = _fold(await _decoded(store, f"customer-{cid}"))  # the fold still works
        assert state["name"] == "[erased]" and state["profile"] is None
        assert await snapshot_store(store.inner).find(f"customer-{cid}") == []
        assert (await store.query("SELECT name FROM customers"))[0][0] == "[erased]"
        if url.startswith("sqlite"):
            assert _count_in_files(sqlite_files, needle) == 0
        else:
            assert _pg_dump(url).count(needle) == 0
    finally:
        await store.close()
    from chronik.ops.backup import backup_store

    out = tmp_path / "backup"
    await asyncio.to_thread(backup_store, url, out)
    files = list(out.rglob("*"))
    assert files and _count_in_files(files, needle) == 0


async def test_tampered_or_moved_ciphertext_is_a_typed_error(url: str) -> None:
    store = await _open(url)
    try:
        cid = "c-" + uuid.uuid4().hex[:8]
        await store.append(f"customer-{cid}", REG.to_new_events([
            CustomerRegistered(cid, "a@b", "Ann"), CustomerRenamed(cid, "Bea"),
        ]))  # fmt: skip
        first, second = [e async for e in store.inner.read_stream(f"customer-{cid}")]
        data = msgspec.json.decode(first.raw_data)
        flipped = dict(data)
        sealed = data["name"]["chronik.pii"]
        flipped["name"] = {
            **data["name"],
            "chronik.pii": ("A" if sealed[0] != "A" else "B") + sealed[1:],
        }
        moved = msgspec.json.decode(second.raw_data)
        moved["name"] = data["name"]  # the same field, from another event
        swapped = dict(data, email=data["name"])  # another field of the same event
        for bad, where in ((flipped, first), (moved, second), (swapped, first)):
            forged = RecordedEvent.from_stored(
                where.position, where.stream_id, where.version, where.event_id, where.type,
                where.schema_version, msgspec.json.encode(bad), where.raw_metadata,
                where.recorded_at,
            )  # fmt: skip
            with pytest.raises(CiphertextError) as info:
                await store.shredder.decrypt(store._sql, forged)
            assert "Ann" not in str(info.value) and "Bea" not in str(info.value)
    finally:
        await store.close()


async def test_wrong_or_missing_kek_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/e.db"
    store = await _open(url)
    await store.append("customer-1", REG.to_new_events([CustomerRegistered("c1", "a@b", "Ann")]))
    await store.close()
    other = LocalKeyEncryptionKey.from_text(generate_kek(), source="file /etc/other-kek")
    wrong = ShreddingStore(await connect(url), Shredder(REG, other))
    try:
        with pytest.raises(KeyEncryptionKeyError, match="/etc/other-kek"):
            await _decoded(wrong, "customer-1")
    finally:
        await wrong.close()
    monkeypatch.delenv("CHRONIK_TEST_KEK", raising=False)
    with pytest.raises(KeyEncryptionKeyError, match=r"CHRONIK_TEST_KEK.*not set"):
        LocalKeyEncryptionKey.from_env("CHRONIK_TEST_KEK")
    monkeypatch.setenv("CHRONIK_TEST_KEK", "abc")
    with pytest.raises(KeyEncryptionKeyError, match="CHRONIK_TEST_KEK"):
        LocalKeyEncryptionKey.from_env("CHRONIK_TEST_KEK")
    with pytest.raises(KeyEncryptionKeyError, match="missing-kek"):
        LocalKeyEncryptionKey.from_file(tmp_path / "missing-kek")
    (tmp_path / "kek").write_text(KEK_HEX + "\n")
    assert LocalKeyEncryptionKey.from_file(tmp_path / "kek").key_id == _kek().key_id


def test_declaration_errors() -> None:
    reg = EventRegistry()

    @dataclasses.dataclass(frozen=True)
    class E:
        sid: str
        email: str

    with pytest.raises(RegistryError, match="no field 'mail'"):
        reg.register(E, "E", personal=("mail",), subject="sid")
    with pytest.raises(RegistryError, match="subject"):
        reg.register(E, "E", personal=("email",))
    with pytest.raises(RegistryError, match="cannot be personal"):
        reg.register(E, "E", personal=("email", "sid"), subject="sid")
    with pytest.raises(RegistryError, match="string"):
        reg.register(E, "E", personal="email", subject="sid")


async def test_forget_cancelled_at_each_await_then_rerun_completes(url: str) -> None:
    store = await _open(url)
    try:
        for k in range(0, 60, 3):
            cid = f"c-{k}-" + uuid.uuid4().hex[:6]
            await store.append(f"customer-{cid}", REG.to_new_events([
                CustomerRegistered(cid, "a@b", "Ann")]))  # fmt: skip
            task = asyncio.create_task(store.forget(cid))
            for _ in range(k):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
                finished = True
            except asyncio.CancelledError:
                finished = False
            store.shredder.forget_cached()
            name = (await _decoded(store, f"customer-{cid}"))[0].name
            assert name in ("Ann", "[erased]")  # intact or forgotten, nothing in between
            await store.forget(cid)
            assert (await _decoded(store, f"customer-{cid}"))[0].name == "[erased]"
            assert len([e async for e in store.read_stream(erasure_stream(cid))]) == 1
            if finished:
                assert name == "[erased]"
    finally:
        await store.close()


_CHILD = """
import asyncio, sys
sys.path.insert(0, {tests!r})
from tests.security.test_shredding import _open, forget
async def main():
    store = await _open({url!r})
    print("ready", flush=True)
    await store.forget({cid!r})
    await store.close()
asyncio.run(main())
"""


async def test_forget_killed_then_rerun_completes(url: str) -> None:
    import random
    import signal

    store = await _open(url)
    root = str(Path(__file__).resolve().parents[2])
    try:
        rng = random.Random(19)
        for _ in range(4):
            cid = "c-" + uuid.uuid4().hex[:8]
            await store.append(f"customer-{cid}", REG.to_new_events([
                CustomerRegistered(cid, "a@b", "Ann")]))  # fmt: skip
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _CHILD.format(tests=root, url=url, cid=cid),
                stdout=subprocess.PIPE,
            )  # fmt: skip
            assert child.stdout is not None
            await child.stdout.readline()
            await asyncio.sleep(rng.uniform(0.0, 0.05))
            child.send_signal(signal.SIGKILL)
            await child.wait()
            store.shredder.forget_cached()
            assert (await _decoded(store, f"customer-{cid}"))[0].name in ("Ann", "[erased]")
            await store.forget(cid)
            assert (await _decoded(store, f"customer-{cid}"))[0].name == "[erased]"
            assert len([e async for e in store.read_stream(erasure_stream(cid))]) == 1
    finally:
        await store.close()


_READER = """
import asyncio, sys, time
sys.path.insert(0, {tests!r})
from tests.security.test_shredding import _open, _decoded
async def main():
    store = await _open({url!r}, ttl={ttl!r})
    print((await _decoded(store, "customer-x"))[0].name, flush=True)
    sys.stdin.readline()  # the parent forgets the subject meanwhile
    time.sleep({ttl!r} + 0.2)
    print((await _decoded(store, "customer-x"))[0].name, flush=True)
    await store.close()
asyncio.run(main())
"""


async def test_forgotten_key_leaves_another_process_cache_within_ttl(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/e.db"
    store = await _open(url)
    await store.append("customer-x", REG.to_new_events([CustomerRegistered("x", "a@b", "Ann")]))
    root = str(Path(__file__).resolve().parents[2])
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _READER.format(tests=root, url=url, ttl=0.5),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    first = await child.stdout.readline()
    assert first.strip() == b"Ann"  # the child has the key cached
    await forget(store.inner, "x")  # as `chronik forget` would, from elsewhere
    child.stdin.write(b"\n")
    await child.stdin.drain()
    second = await child.stdout.readline()
    assert second.strip() == b"[erased]"  # past the child's cache_ttl (0.5 s)
    assert await child.wait() == 0
    await store.close()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    name=st.text() | st.text(min_size=10_000, max_size=20_000),
    profile=_json,
    subject=st.text(min_size=1, max_size=300).filter(lambda s: "\x00" not in s),
)
def test_hypothesis_values_roundtrip_and_erase(
    tmp_path: Path, name: str, profile: Any, subject: str
) -> None:
    async def run() -> None:
        url = f"sqlite:///{tmp_path}/h-{uuid.uuid4().hex}.db"
        store = await _open(url)
        try:
            cid = subject
            event = CustomerRegistered(cid, name, name, profile)
            await store.append("customer-h", REG.to_new_events([event]))
            got = (await _decoded(store, "customer-h"))[0]
            assert got == REG.decode_many(
                RecordedEvent.from_stored(1, "customer-h", 0, uuid.uuid4(), "CustomerRegistered",
                                          1, msgspec.json.encode(event), b"", datetime.now(UTC))
            )[0]  # fmt: skip
            await store.forget(cid)
            assert (await _decoded(store, "customer-h"))[0].name == "[erased]"
        finally:
            await store.close()
            for p in Path(tmp_path).glob("h-*"):
                p.unlink()

    asyncio.run(run())


async def test_upcasters_run_on_decrypted_and_on_erased_data(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/u.db"
    old = EventRegistry()

    @old.event("Signed", version=1, personal=("mail",), subject="sid")
    @dataclasses.dataclass(frozen=True)
    class SignedV1:
        sid: str
        mail: str

    store = ShreddingStore(await connect(url), Shredder(old, _kek()))
    await store.append("sign-1", old.to_new_events([SignedV1("s1", "Ann@X")]))
    await store.close()

    new = EventRegistry()

    @new.event("Signed", version=2, personal=("email",), subject="sid")
    @dataclasses.dataclass(frozen=True)
    class SignedV2:
        sid: str
        email: str

    @new.upcaster("Signed", from_version=1)
    def rename(data: dict[str, Any]) -> dict[str, Any]:
        return {"sid": data["sid"], "email": str(data["mail"]).lower()}

    store = ShreddingStore(await connect(url), Shredder(new, _kek()))
    try:
        assert (await _decoded_with(new, store, "sign-1")) == [SignedV2("s1", "ann@x")]
        await store.forget("s1")
        # the stored type's field "mail" reads as the v2 declaration's default for str
        assert (await _decoded_with(new, store, "sign-1"))[0].sid == "s1"
    finally:
        await store.close()


async def _decoded_with(reg: EventRegistry, store: EventStore, stream_id: str) -> list[Any]:
    return [reg.decode(e) async for e in store.read_stream(stream_id)]


def test_cli_forget_json_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from chronik.cli.main import main

    url = f"sqlite:///{tmp_path}/cli.db"

    async def write() -> None:
        store = await _open(url)
        await store.append(
            "customer-9", REG.to_new_events([CustomerRegistered("c9", "a@b", "Ann")])
        )
        await store.close()

    async def read() -> list[Any]:
        store = await _open(url)
        try:
            return await _decoded(store, "customer-9")
        finally:
            await store.close()

    asyncio.run(write())
    assert main(["--store", url, "forget", "c9", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["key_destroyed"] is True and first["streams"] == ["customer-9"]
    assert main(["--store", url, "forget", "c9", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["key_destroyed"] is False and again["erasure_recorded"] is False
    assert asyncio.run(read())[0].name == "[erased]"
    assert main(["--store", url, "forget", "c9"]) == 0
    assert "c9" in capsys.readouterr().out


async def test_events_without_their_key_row_fail_loudly(tmp_path: Path) -> None:
    """A store restored without ``subject_keys`` must not read as if everyone was forgotten."""
    from chronik.store.port import ImportedEvent

    store = await _open(f"sqlite:///{tmp_path}/a.db")
    await store.append("customer-r", REG.to_new_events([CustomerRegistered("r", "a@b", "Ann")]))
    events = [e async for e in store.inner.read_stream("customer-r")]
    await store.close()
    fresh = await _open(f"sqlite:///{tmp_path}/b.db")
    try:
        async with fresh.transaction() as tx:
            await tx.import_events([ImportedEvent.of(e) for e in events])
        with pytest.raises(CiphertextError, match="no key row"):
            await _decoded(fresh, "customer-r")
    finally:
        await fresh.close()


async def test_forget_refuses_a_store_without_sql_and_a_bad_subject(tmp_path: Path) -> None:
    from chronik.errors import InvalidArgument, MissingCapability
    from chronik.store.memory import MemoryEventStore

    async with MemoryEventStore() as memory:
        with pytest.raises(MissingCapability):
            await forget(memory, "x")
    store = await _open(f"sqlite:///{tmp_path}/a.db")
    try:
        for bad in ("", "a\x00b", 7):
            with pytest.raises(InvalidArgument, match="subject"):
                await forget(store, bad)  # type: ignore[arg-type]
    finally:
        await store.close()


class CustomerDirectory(Projection):
    """A read model with personal data that scrubs itself on the erasure event."""

    name = "customer_directory"
    categories = ["customer", ERASURE_CATEGORY]

    async def setup(self, tx: Tx) -> None:
        await tx.execute(
            f"CREATE TABLE IF NOT EXISTS {self.table('dir')} (id TEXT PRIMARY KEY, name TEXT)"
        )

    async def handle(self, event: RecordedEvent, tx: Tx) -> None:
        subject = erased_subject(event)
        if subject is not None:
            await tx.execute(f"DELETE FROM {self.table('dir')} WHERE id = :id", {"id": subject})
        elif event.type == "CustomerRegistered":
            e = REG.decode(event)
            await tx.execute(
                f"INSERT INTO {self.table('dir')} (id, name) VALUES (:id, :name)",
                {"id": e.customer_id, "name": e.name},
            )


async def test_projection_scrubs_on_the_erasure_event(url: str) -> None:
    canary = "Canary" + uuid.uuid4().hex[:12]
    store = await _open(url)
    try:
        cid = "c-" + uuid.uuid4().hex[:8]
        await store.append(f"customer-{cid}", REG.to_new_events([
            CustomerRegistered(cid, "a@b", canary), CustomerRegistered("other", "o@b", "Olaf")
        ]))  # fmt: skip
        projection = CustomerDirectory()
        runner = ProjectionRunner(store, [projection])
        await runner.catch_up()
        table = projection.table("dir")
        rows = await store.query(f"SELECT id, name FROM {table} ORDER BY id")
        assert (cid, canary) in [tuple(r) for r in rows]  # negative control
        await store.forget(cid)
        await runner.catch_up()
        await runner.catch_up()  # nothing twice: the checkpoint moved with the delete
        rows = await store.query(f"SELECT id, name FROM {table} ORDER BY id")
        assert [tuple(r) for r in rows] == [("other", "Olaf")]
        # a rebuild from the log reads the replacement, then the erasure deletes the row
        async with store.transaction() as tx:
            await tx.execute(f"DELETE FROM {table}")
            await tx.set_checkpoint(projection.checkpoint_name, 0)
        runner = ProjectionRunner(store, [CustomerDirectory()])
        await runner.catch_up()
        rows = await store.query(f"SELECT id, name FROM {table} ORDER BY id")
        assert [tuple(r) for r in rows] == [("other", "Olaf")]
    finally:
        await store.close()


async def test_a_bad_subject_value_is_refused_and_nothing_stored(tmp_path: Path) -> None:
    from chronik.errors import SerializationError

    store = await _open(f"sqlite:///{tmp_path}/a.db")
    try:
        for bad in ("", "a\x00b"):
            with pytest.raises(SerializationError, match="customer_id"):
                await store.append(
                    "customer-b", REG.to_new_events([CustomerRegistered(bad, "a@b", "Ann")])
                )
        assert await store.stream_version("customer-b") is None
        assert await store.query("SELECT COUNT(*) FROM subject_keys") == [(0,)]
    finally:
        await store.close()
