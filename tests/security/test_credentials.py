"""Credentials (issue 19): API tokens (expiry, revocation without restart, hashed at rest),
OIDC JWTs against a JWKS served by the test (issuer, audience, expiry, unknown keys, key
rotation without restart), and garbage Authorization headers (401, never 500)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import chronik
from chronik.errors import AuthenticationFailed, InvalidArgument, StoreUnavailable
from chronik.security import (
    MemoryTokens,
    Policy,
    SqlTokens,
    parse_duration,
    parse_policy,
    token_store,
)
from chronik.server import create_app_for_url
from tests.security.harness import secured, serving
from tests.server.serving import running

# -- API tokens -----------------------------------------------------------------------------


async def test_revocation_holds_at_the_next_request(tmp_path: Path) -> None:
    async with secured(tmp_path) as s, httpx.AsyncClient() as client:
        h = s.headers("admin")
        assert (await client.get(f"{s.base}/streams/orders-1", headers=h)).status_code == 200
        await token_store(s.store).revoke("t-admin")  # as `chronik tokens revoke` would
        r = await client.get(f"{s.base}/streams/orders-1", headers=h)
        assert r.status_code == 401
        assert "revoked" in r.json()["error"]["message"]
        other = s.headers("reader")  # the others still work
        assert (await client.get(f"{s.base}/streams/orders-1", headers=other)).status_code == 200


async def test_expired_token_is_refused(tmp_path: Path) -> None:
    async with secured(tmp_path) as s, httpx.AsyncClient() as client:
        brief = timedelta(microseconds=1)
        _, token = await token_store(s.store).create("brief", ["admin"], expires_in=brief)
        await asyncio.sleep(0.01)
        r = await client.get(f"{s.base}/streams/orders-1",
                             headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert r.status_code == 401
        assert "expired" in r.json()["error"]["message"]


async def test_a_token_of_another_store_or_a_tampered_one_is_refused(tmp_path: Path) -> None:
    async with secured(tmp_path) as s, httpx.AsyncClient() as client:
        _, foreign = await MemoryTokens().create("elsewhere", ["admin"])
        token = s.tokens["admin"]
        tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
        for bad in (foreign, tampered):
            r = await client.get(f"{s.base}/streams", headers={"Authorization": f"Bearer {bad}"})
            assert r.status_code == 401


async def test_only_the_hash_is_stored(tmp_path: Path) -> None:
    async with secured(tmp_path) as s:
        pass
    raw = (tmp_path / "sec.db").read_bytes()
    for token in s.tokens.values():
        secret = token.removeprefix("chronik_").split("_", 1)[1]  # the secret may hold "_"
        assert secret.encode() not in raw
    with sqlite3.connect(tmp_path / "sec.db") as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(api_tokens)")]
    assert "secret_sha256" in columns and "secret" not in columns


async def test_token_store_rules() -> None:
    tokens = MemoryTokens()
    info, token = await tokens.create("ci", ["writer"])
    assert (await tokens.verify(token)).roles == ("writer",)
    with pytest.raises(InvalidArgument):
        await tokens.create("ci", ["reader"])  # names are unique
    with pytest.raises(InvalidArgument):
        await tokens.create("no roles", [])
    with pytest.raises(InvalidArgument):
        await tokens.revoke("nobody")
    assert (await tokens.revoke(info.id)).revoked_at is not None
    with pytest.raises(AuthenticationFailed, match="revoked"):
        await tokens.verify(token)
    assert parse_duration("30d") == timedelta(days=30)
    for bad in ("", "0d", "30", "3y", "-1d"):
        with pytest.raises(InvalidArgument):
            parse_duration(bad)


# -- OIDC -----------------------------------------------------------------------------------

ISSUER = "https://issuer.test/"
AUDIENCE = "chronik-test"


def _key(kid: str) -> tuple[Any, dict[str, Any]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    public.update(kid=kid, alg="RS256", use="sig")
    return private, public


def _jwt(private: Any, kid: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300, "iat": now,
            "groups": ["clerk"], **claims}  # fmt: skip
    return jwt.encode({k: v for k, v in body.items() if v is not None}, private,
                      algorithm="RS256", headers={"kid": kid})  # fmt: skip


@contextlib.asynccontextmanager
async def jwks_server(keys: list[dict[str, Any]]) -> AsyncIterator[str]:
    """A JWKS endpoint serving whatever ``keys`` holds at the time of each request."""

    async def jwks(request: Request) -> Response:
        return JSONResponse({"keys": keys})

    async with serving(Starlette(routes=[Route("/jwks", jwks)])) as base:
        yield f"{base}/jwks"


def _oidc_toml(jwks_url: str) -> str:
    return f"""
[oidc]
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_url = "{jwks_url}"
roles_claim = "groups"
min_refresh_seconds = 0
cache_seconds = 0
"""


async def test_oidc_jwts(tmp_path: Path) -> None:
    first, first_public = _key("k1")
    keys = [first_public]
    async with (
        jwks_server(keys) as url,
        secured(tmp_path, _oidc_toml(url)) as s,
        httpx.AsyncClient() as client,
    ):

        async def status(token: str, path: str = "/streams/orders-1") -> int:
            r = await client.get(s.base + path, headers={"Authorization": f"Bearer {token}"})
            return r.status_code

        assert await status(_jwt(first, "k1")) == 200  # clerk reads orders
        assert await status(_jwt(first, "k1"), "/streams/secret-1") == 403
        assert await status(_jwt(first, "k1", aud="someone-else")) == 401
        assert await status(_jwt(first, "k1", iss="https://evil.test/")) == 401
        assert await status(_jwt(first, "k1", exp=int(time.time()) - 3600)) == 401
        assert await status(_jwt(first, "k1", exp=None)) == 401  # exp is required
        assert await status(_jwt(first, "k1", groups=[])) == 403  # no roles: nothing
        stranger, _ = _key("k1")  # same kid, a key the issuer never published
        assert await status(_jwt(stranger, "k1")) == 401
        hs = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "exp": 2**31,
                         "groups": ["admin"]}, "s" * 64, algorithm="HS256",
                        headers={"kid": "k1"})  # fmt: skip
        assert await status(hs) == 401  # no algorithm confusion
        # rotation: the issuer publishes k2 (and later drops k1); no restart
        second, second_public = _key("k2")
        keys.append(second_public)
        assert await status(_jwt(second, "k2")) == 200
        keys.remove(first_public)
        assert await status(_jwt(second, "k2")) == 200
        assert await status(_jwt(first, "k1")) == 401  # withdrawn: refused


# -- hostile headers ------------------------------------------------------------------------


_HEADER_BYTES = st.binary(max_size=300).filter(lambda b: not any(c in b for c in b"\r\n\x00"))
_PREFIXES = st.sampled_from(["", "Bearer ", "bearer ", "Bearer chronik_", "Basic ",
                             "Bearer chronik_0123456789ab_", "Bearer a.b."])  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=_PREFIXES, rest=_HEADER_BYTES)
def test_garbage_authorization_is_401_never_500(prefix: str, rest: bytes) -> None:
    value = prefix.encode() + rest
    with contextlib.suppress(httpx.LocalProtocolError):  # a header httpx refuses to send
        r = _CLIENT.get("/streams/orders-1", headers=[(b"Authorization", value)])
        assert r.status_code == 401, (value, r.text)
        assert r.json()["error"]["type"] == "AuthenticationFailed"
        assert r.headers["www-authenticate"].startswith("Bearer")


_CLIENT: httpx.Client


@pytest.fixture(scope="module", autouse=True)
def _hostile_client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A secured server (with OIDC configured, its issuer unreachable) for the whole module."""
    global _CLIENT
    url = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'h.db'}"
    policy = parse_policy({"oidc": {"issuer": ISSUER, "audience": AUDIENCE,
                                    "jwks_url": "http://127.0.0.1:9/none"}})  # fmt: skip
    with (
        running(create_app_for_url(url, policy=policy)) as base,
        httpx.Client(base_url=base) as client,
    ):
        _CLIENT = client
        yield client


def test_policy_without_anonymous_requires_credentials() -> None:
    assert Policy().anonymous is None


# -- PostgreSQL, and a store that goes away ------------------------------------------------


async def test_tokens_on_postgresql(pg_url: str) -> None:
    async with await chronik.connect(pg_url) as store:
        tokens = token_store(store)
        info, token = await tokens.create("ci", ["writer"], expires_in=timedelta(days=1))
        assert (await tokens.verify(token)).roles == ("writer",)
        assert [t.name for t in await tokens.list()] == ["ci"]
        with pytest.raises(InvalidArgument):
            await tokens.create("ci", ["reader"])
        await tokens.revoke("ci")
        with pytest.raises(AuthenticationFailed, match="revoked"):
            await tokens.verify(token)
        assert (await tokens.list())[0].state(info.created_at) == "revoked"


async def test_an_unavailable_store_is_503_not_401(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Token checks read the store: when it is down the answer says so (503, retry), never
    "bad credentials" (which would make clients drop a good token) nor a 500."""
    async with secured(tmp_path) as s, httpx.AsyncClient() as client:

        async def down(self: object, token: str) -> None:
            raise StoreUnavailable("the database restarts")

        monkeypatch.setattr(SqlTokens, "verify", down)
        r = await client.get(f"{s.base}/streams", headers=s.headers("admin"))
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "StoreUnavailable"
        monkeypatch.undo()
        assert (await client.get(f"{s.base}/streams", headers=s.headers("admin"))).is_success


async def test_cli_tokens_against_a_running_server(tmp_path: Path) -> None:
    """`chronik tokens` in another process creates and revokes tokens that a running
    server honours at once (no restart)."""
    import subprocess
    import sys

    async with secured(tmp_path) as s, httpx.AsyncClient() as client:
        url = f"sqlite:///{tmp_path / 'sec.db'}"

        def cli(*args: str) -> dict[str, Any]:
            done = subprocess.run(
                [sys.executable, "-m", "chronik", "--store", url, "tokens", *args, "--json"],
                capture_output=True, text=True, check=True, timeout=60,
            )  # fmt: skip
            result: dict[str, Any] = json.loads(done.stdout)
            return result

        created = await asyncio.to_thread(cli, "create", "deploy", "--role", "reader")
        assert created["state"] == "active" and created["token"].startswith("chronik_")
        headers = {"Authorization": f"Bearer {created['token']}"}
        assert (await client.get(f"{s.base}/streams", headers=headers)).status_code == 200
        revoked = await asyncio.to_thread(cli, "revoke", "deploy")
        assert revoked["state"] == "revoked"
        assert (await client.get(f"{s.base}/streams", headers=headers)).status_code == 401


async def test_a_revoked_token_loses_its_live_feeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open SSE stream and WebSocket of a token end once it is revoked (checked every
    REAUTH_INTERVAL); the other tokens' feeds go on."""
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed

    import chronik.server.live

    monkeypatch.setattr(chronik.server.live, "REAUTH_INTERVAL", 0.05)
    async with secured(tmp_path) as s, httpx.AsyncClient(timeout=30) as client:
        url = s.base.replace("http", "ws") + "/live/ws"
        ws = await ws_connect(url, additional_headers=s.headers("clerk"))
        other = await ws_connect(url, additional_headers=s.headers("reader"))
        for conn in (ws, other):
            await conn.send(json.dumps({"subscribe": "events", "after": "0"}))
            assert json.loads(await conn.recv())["kind"] == "event"
        async with client.stream("GET", f"{s.base}/live/events?after=0",
                                 headers=s.headers("clerk")) as sse:  # fmt: skip
            assert sse.status_code == 200
            chunks = sse.aiter_text()
            seen = ""
            while "event: event" not in seen:
                seen += await anext(chunks)
            await token_store(s.store).revoke("t-clerk")
            async with asyncio.timeout(20):  # a hang guard, not a measurement
                async for _ in chunks:  # heartbeats at most, until the server ends it
                    pass
        async with asyncio.timeout(20):
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()
        await s.store.append("public-2", [chronik.NewEvent("After", {})])
        async with asyncio.timeout(20):  # the reader's feed is still live
            while json.loads(await other.recv())["data"].get("type") != "After":
                pass
        await other.close()
        r = await client.get(f"{s.base}/live/events", headers=s.headers("clerk"))
        assert r.status_code == 401  # and it cannot come back


async def test_the_cookie_opens_no_cross_site_websocket(tmp_path: Path) -> None:
    from websockets.asyncio.client import connect as ws_connect

    async with secured(tmp_path) as s:
        url = s.base.replace("http", "ws") + "/live/ws"
        cookie = {"Cookie": f"chronik_token={s.tokens['admin']}"}
        subscribe = json.dumps({"subscribe": "events", "after": "0"})
        async with ws_connect(url, additional_headers={**cookie, "Origin": s.base}) as ws:
            await ws.send(subscribe)
            assert json.loads(await ws.recv())["kind"] == "event"
        # another site's page: the handshake itself is refused (chronik.server.origin)
        from websockets.exceptions import InvalidStatus

        with pytest.raises(InvalidStatus, match="403"):
            async with ws_connect(
                url, additional_headers={**cookie, "Origin": "https://evil.test"}
            ):
                pass
