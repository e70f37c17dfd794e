"""The secured server around the matrix: rate limits, request limits before any work, the
console's login, TLS with a certificate made by the test, `chronik serve`'s refusals, and
policy files with bad keys."""

from __future__ import annotations

import datetime as dt
import re
import ssl
from pathlib import Path

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

import chronik
from chronik.cli.main import main
from chronik.errors import AccessDenied, PolicyError, RateLimited
from chronik.security import (
    Guard,
    Operation,
    Policy,
    Principal,
    RateLimiter,
    load_policy,
    parse_policy,
)
from chronik.server import create_app
from tests.security.harness import secured

# -- rate limits ----------------------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    limits = "\n[limits]\nrequests_per_second = 0.01\nburst = 3\n"
    async with secured(tmp_path, limits) as s, httpx.AsyncClient() as client:
        h = s.headers("admin")
        statuses = [(await client.get(f"{s.base}/streams", headers=h)).status_code
                    for _ in range(5)]  # fmt: skip
        assert statuses == [200, 200, 200, 429, 429]
        r = await client.get(f"{s.base}/streams", headers=h)
        assert r.json()["error"]["type"] == "RateLimited"
        assert int(r.headers["retry-after"]) >= 1
        other = s.headers("reader")  # one bucket per principal
        assert (await client.get(f"{s.base}/streams", headers=other)).status_code == 200


def test_rate_limiter_refills() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 2, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take("a") == 0.0
    assert limiter.take("b") == 0.0


# -- limits before work ---------------------------------------------------------------------


async def test_limits_hold_under_a_policy(tmp_path: Path) -> None:
    async with secured(tmp_path, max_body_bytes=10_000) as s, httpx.AsyncClient() as client:
        h = {**s.headers("admin"), "Content-Type": "application/json"}
        big = b'{"events": [{"type": "X", "data": {"x": "' + b"a" * 20_000 + b'"}}]}'
        assert (await client.post(f"{s.base}/streams/orders-9", content=big)).status_code == 401
        r = await client.post(f"{s.base}/streams/orders-9", content=big, headers=h)
        assert r.status_code == 413
        many = {"events": [{"type": "X"}] * 10_001}
        r = await client.post(f"{s.base}/streams/orders-9", json=many, headers=h)
        assert r.status_code in (413, 422)  # over max_body or over the declared 10,000
        deep = b'{"events": [{"type": "X", "data": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}]}"
        r = await client.post(f"{s.base}/streams/orders-9", content=deep, headers=h)
        assert 400 <= r.status_code < 500
        long_id = "orders-" + "x" * 300
        r = await client.post(f"{s.base}/streams/{long_id}", json={"events": [{"type": "X"}]},
                              headers=s.headers("admin"))  # fmt: skip
        assert r.status_code == 400
        assert await s.store.stream_version("orders-9") is None  # nothing was written


# -- console login --------------------------------------------------------------------------


async def test_console_login_sets_a_strict_httponly_cookie(tmp_path: Path) -> None:
    async with secured(tmp_path) as s, httpx.AsyncClient(base_url=s.base) as client:
        page = (await client.get("/console/login?next=/console/streams")).text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        form = {"csrf": csrf[1], "token": s.tokens["clerk"], "next": "/console/streams"}
        r = await client.post("/console/login", data=form)
        assert r.status_code == 403  # a clerk cannot read every category: no console
        assert "set-cookie" not in r.headers
        r = await client.post("/console/login", data={**form, "token": "chronik_nope"})
        assert r.status_code == 401
        r = await client.post("/console/login", data={**form, "csrf": "stale"})
        assert r.status_code == 403
        r = await client.post("/console/login", data={**form, "token": s.tokens["reader"],
                                                     "next": "//evil.test/"})  # fmt: skip
        assert r.status_code == 303 and r.headers["location"] == "/console/"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert (await client.get("/console/streams")).status_code == 200  # the cookie works
        r = await client.post("/console/logout")
        assert r.status_code == 303
        client.cookies.clear()
        assert (await client.get("/console/streams")).status_code == 401


# -- TLS ------------------------------------------------------------------------------------


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_path, key_path


async def test_tls(tmp_path: Path) -> None:
    import asyncio
    import socket

    cert, key = _self_signed(tmp_path)
    store = await chronik.connect(f"sqlite:///{tmp_path / 'tls.db'}")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(store, policy=Policy(anonymous="reader"))
    config = uvicorn.Config(app, log_level="warning", ssl_certfile=str(cert),
                            ssl_keyfile=str(key))  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            assert not task.done()
            await asyncio.sleep(0.01)
        trusted = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(verify=trusted) as client:
            r = await client.get(f"https://127.0.0.1:{port}/streams")
            assert r.status_code == 200
        async with httpx.AsyncClient() as client:  # the system's CAs do not know it
            with pytest.raises(httpx.ConnectError):
                await client.get(f"https://127.0.0.1:{port}/streams")
    finally:
        server.should_exit = True
        await task
        await store.close()


# -- chronik serve --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--host", "0.0.0.0"], "refusing to serve 0.0.0.0 without authentication"),
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--anonymous", "nobody"], "anonymous"),
        (["--policy", "missing.toml"], "cannot read"),
    ],
)
def test_serve_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    argv: list[str], message: str,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    assert main(["serve", "--port", "0", *argv]) != 0
    assert message in capsys.readouterr().err


# -- policies -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, key",
    [
        ({"rolez": {}}, "rolez"),
        ({"roles": {"r": {"raed": ["x"]}}}, "roles.r.raed"),
        ({"roles": {"r": {"read": "orders"}}}, "roles.r.read"),
        ({"roles": {"r": {"read": [""]}}}, "roles.r.read[0]"),
        ({"roles": {"admin": {"read": ["*"]}}}, "roles.admin"),
        ({"anonymous": "ghost"}, "anonymous"),
        ({"oidc": {"issuer": "i", "audience": "a"}}, "oidc.jwks_url"),
        (
            {"oidc": {"issuer": "i", "audience": "a", "jwks_url": "u", "algorithms": ["HS256"]}},
            "oidc.algorithms[0]",
        ),
        ({"limits": {"requests_per_second": -1}}, "limits.requests_per_second"),
        ({"limits": {"burst": True}}, "limits.burst"),
    ],
)
def test_policy_errors_name_the_key(data: dict[str, object], key: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_policy(data)
    assert info.value.key == key


def test_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('anonymous = "r"\n[roles.r]\nread = ["ord*"]\n')
    policy = load_policy(path)
    who = Principal("anonymous", ("r",))
    assert policy.allows(who, Operation.READ, "orders")
    assert not policy.allows(who, Operation.READ, "invoices")
    assert not policy.allows(who, Operation.READ, None)  # the whole store needs "*"
    with pytest.raises(AccessDenied, match="may not append on category 'orders'"):
        policy.authorize(who, Operation.APPEND, "orders")
    path.write_text("roles = [")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(path)


async def test_guard_refuses_without_anonymous() -> None:
    guard = Guard(Policy())
    for header in (None, "", "Basic x", "Bearer", "Bearer x" * 2000):
        with pytest.raises(chronik.errors.AuthenticationFailed):
            await guard.authenticate(header)
    guard = Guard(Policy(anonymous="reader").with_rate(1))
    access = await guard.authenticate(None, client="1.2.3.4")
    assert access.readable().everything
    with pytest.raises(RateLimited):
        for _ in range(100):
            guard.admit(access.principal)


_TOML_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["read", "append", "operate", "issuer", "audience",
                                       "jwks_url", "burst", "requests_per_second", "x",
                                       "admin", "clerk", "algorithms"]), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["roles", "anonymous", "oidc", "limits", "other"]),
                       _TOML_VALUES, max_size=4))  # fmt: skip
def test_any_policy_data_is_a_policy_or_a_policy_error(data: dict[str, object]) -> None:
    try:
        parse_policy(data)
    except PolicyError as exc:
        assert exc.key
