"""Store URLs are checked before anything opens, and ``connect(url, create=False)`` never
creates a store."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import pytest

import chronik
from chronik.errors import MissingDependency, StoreNotFound
from chronik.store.urls import StoreUrl, parse_store_url, redact_url


def test_parse_splits_backend_target_and_typed_options() -> None:
    assert parse_store_url("memory://") == StoreUrl("memory", "", {})
    assert parse_store_url("sqlite:///app.db?synchronous=normal&busy_timeout_ms=5") == StoreUrl(
        "sqlite", "app.db", {"synchronous": "NORMAL", "busy_timeout_ms": 5}
    )
    assert parse_store_url("sqlite:////srv/app.db").target == "/srv/app.db"
    parsed = parse_store_url("postgres://u@h:5433/db?schema=orders&sslmode=disable&pool_max=4")
    assert parsed == StoreUrl(
        "postgresql",
        "postgresql://u@h:5433/db?sslmode=disable",
        {"schema": "orders", "pool_max": 4},
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://h/db", "unknown scheme 'mysql'; chronik supports memory://, sqlite:///"),
        ("app.db", "not a URL; write memory://"),
        ("sqlite://", "names no file"),
        ("sqlite://host/app.db", "write sqlite:///relative.db or sqlite:////absolute/path.db"),
        ("sqlite:///a.db#x", "fragment"),
        ("sqlite:///a.db?synchronous=BOGUS", "synchronous='BOGUS' must be one of FULL, EXTRA"),
        ("sqlite:///a.db?synchronous=", "synchronous='' must be one of"),
        ("sqlite:///a.db?schema=x", "sqlite:// does not take the parameter 'schema'; it takes "),
        ("sqlite:///a.db?max_event_bytes=0", "max_event_bytes='0' must be an integer >= 1"),
        ("sqlite:///a.db?busy_timeout_ms=soon", "busy_timeout_ms='soon' must be an integer >= 0"),
        ("sqlite:///a.db?synchronous=FULL&synchronous=OFF", "'synchronous' is given twice"),
        ("memory://?synchronous=FULL", "memory:// does not take the parameter 'synchronous'"),
        ("postgresql://h/db?schema=", "schema='' is empty"),
        ("postgresql://h/db?schema=x;drop table events", "must be a plain SQL identifier"),
        ("postgresql://h/db?schema=Orders", "must be a plain SQL identifier"),
        ("postgresql://h/db?pool_max=0", "pool_max='0' must be an integer >= 1"),
        ("postgresql://h/db?shema=x", 'invalid URI query parameter: "shema" (chronik\'s'),
    ],
)
def test_bad_urls_name_what_is_allowed(url: str, message: str) -> None:
    with pytest.raises(chronik.UnsupportedStoreUrl, match=r"^store URL ") as caught:
        parse_store_url(url)
    assert message in str(caught.value)


async def test_connect_raises_before_touching_the_file(tmp_path: Path) -> None:
    with pytest.raises(chronik.UnsupportedStoreUrl, match="synchronous"):
        await chronik.connect(f"sqlite:///{tmp_path}/a.db?synchronous=BOGUS")
    assert list(tmp_path.iterdir()) == []


def test_passwords_are_redacted() -> None:
    assert redact_url("postgresql://app:s3cret@h/db") == "postgresql://app:***@h/db"
    assert redact_url("postgresql://h/db?password=s3cret&x=1") == (
        "postgresql://h/db?password=%2A%2A%2A&x=1"
    )
    assert redact_url("sqlite:////abs/a.db") == "sqlite:////abs/a.db"  # unchanged, slashes kept
    # red team: libpq's sslpassword (a key passphrase) was shown in fences and errors
    hidden = redact_url("postgresql://h/db?schema=s&sslpassword=KeyPass123&apiToken=t0k")
    assert "KeyPass123" not in hidden and "t0k" not in hidden and "schema=s" in hidden
    with pytest.raises(chronik.UnsupportedStoreUrl) as caught:
        parse_store_url("postgresql://app:s3cret@h/db?schema=")
    assert "s3cret" not in str(caught.value)


async def test_create_false_opens_only_an_existing_store(tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(StoreNotFound, match="no such file") as caught:
        await chronik.connect(f"sqlite:///{missing}", create=False)
    assert caught.value.where == str(missing)
    assert isinstance(caught.value, LookupError)
    assert list(tmp_path.iterdir()) == []

    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE mine (a)")
    before = foreign.read_bytes()
    with pytest.raises(StoreNotFound, match="a SQLite database without chronik's tables"):
        await chronik.connect(f"sqlite:///{foreign}", create=False)
    assert foreign.read_bytes() == before

    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    with pytest.raises(StoreNotFound, match="not a SQLite database"):
        await chronik.connect(f"sqlite:///{text}", create=False)

    url = f"sqlite:///{tmp_path}/real.db"
    async with await chronik.connect(url) as store:  # the library default still creates
        await store.append("order-1", [chronik.NewEvent("Placed", {})])
    async with await chronik.connect(url, create=False) as store:
        assert await store.head_position() == 1


async def test_missing_postgres_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setitem(sys.modules, "chronik.store.postgres", None)
    with pytest.raises(MissingDependency) as caught:
        await chronik.connect("postgresql://u@h/db")
    assert caught.value.extra == "postgres"
    assert str(caught.value).endswith("pip install 'chronik[postgres]'")
    assert isinstance(caught.value, ImportError)


async def test_create_false_on_postgres_creates_no_schema(pg_url: str) -> None:
    import psycopg

    from tests.conftest import PG_URL

    schema = pg_url.rsplit("schema=", 1)[1]

    def exists() -> bool:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)
            ).fetchone()
            return bool(row and row[0])

    with pytest.raises(StoreNotFound, match=schema):
        await chronik.connect(pg_url, create=False)
    assert not exists()  # nothing created
    async with await chronik.connect(pg_url) as store:  # created
        await store.append("a-1", [chronik.NewEvent("E")])
    async with await chronik.connect(pg_url, create=False) as store:
        assert await store.stream_version("a-1") == 0
