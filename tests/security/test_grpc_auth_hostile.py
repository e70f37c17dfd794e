"""Hostile and stale credentials on the KurrentDB gRPC face: garbage ``authorization``
metadata (hypothesis), oversized values, NUL and control characters inside Basic
credentials, expired, revoked, forged API tokens, OIDC JWTs that are expired, from another
issuer or for another audience, and the per-principal rate. Every refusal is
``UNAUTHENTICATED`` (or ``RESOURCE_EXHAUSTED`` over the rate), never ``INTERNAL``, and the
server keeps serving.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kurrentdbclient import KurrentDBClient
from kurrentdbclient.exceptions import UnauthenticatedError
from kurrentdbclient.protos.v1 import streams_pb2_grpc

from chronik.security import parse_policy, token_store
from tests.security.grpc_harness import SecuredKurrent, secured_kurrent
from tests.security.harness import POLICY_TOML
from tests.security.test_grpc_auth import _read_stream_request


def _status(stub: Any, value: str | None, stream: str = "orders-1") -> grpc.StatusCode:
    metadata = () if value is None else (("authorization", value),)
    try:
        list(stub.Read(_read_stream_request(stream), metadata=metadata, timeout=10))
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecuredKurrent, Any]]:
    """A secured plain-text server (raw gRPC sends metadata without TLS) for the module."""
    with secured_kurrent(tmp_path_factory.mktemp("hostile"), tls=False) as s:
        channel = grpc.insecure_channel(s.server.target)
        try:
            yield s, streams_pb2_grpc.StreamsStub(channel)  # type: ignore[no-untyped-call]
        finally:
            channel.close()


_PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300)
_PREFIXES = st.sampled_from(["", "Bearer ", "bearer ", "Basic ", "basic ", "Bearer chronik_",
                             "Bearer chronik_0123456789ab_", "Bearer a.b.",
                             "Basic dTpj"])  # fmt: skip


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(prefix=_PREFIXES, rest=_PRINTABLE)
def test_garbage_authorization_is_unauthenticated(
    plain: tuple[SecuredKurrent, Any], prefix: str, rest: str
) -> None:
    _, stub = plain
    assert _status(stub, prefix + rest) == grpc.StatusCode.UNAUTHENTICATED


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200))
def test_garbage_basic_payload_is_unauthenticated(
    plain: tuple[SecuredKurrent, Any], raw: bytes
) -> None:
    _, stub = plain
    assert _status(stub, _basic(raw)) == grpc.StatusCode.UNAUTHENTICATED


def test_nul_oversize_and_duplicates(plain: tuple[SecuredKurrent, Any]) -> None:
    s, stub = plain
    token = s.tokens["admin"]
    cases = {
        "NUL in the password": _basic(b"u:" + token.encode() + b"\x00"),
        "NUL in the user": _basic(b"u\x00:" + token.encode()),
        "control character": _basic(b"u:\x01" + token.encode()),
        "not UTF-8": _basic(b"u:\xff\xfe" + token.encode()),
        "no colon": _basic(token.encode()),
        "empty password": _basic(b"admin:"),
        "not base64": "Basic " + token,
        "junk after it": "Basic " + base64.b64encode(b"u:" + token.encode()).decode() + "!*",
        "9 KB": "Bearer " + "a" * 9000,
        "60 KB": "Basic " + "A" * 60_000,
        "token as the user name": _basic(token.encode() + b":x"),
    }
    for name, value in cases.items():
        assert _status(stub, value) == grpc.StatusCode.UNAUTHENTICATED, name
    # bigger than gRPC's own hard limit: refused by the transport before chronik sees it
    assert _status(stub, "Bearer " + "a" * 200_000) == grpc.StatusCode.RESOURCE_EXHAUSTED
    twice = (("authorization", f"Bearer {token}"), ("authorization", f"Bearer {token}"))
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.Read(_read_stream_request("orders-1"), metadata=twice, timeout=10))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # still serving, and the good credentials still work (negative control of the above)
    assert _status(stub, f"Bearer {token}") == grpc.StatusCode.OK
    assert _status(stub, _basic(b"anyone:" + token.encode())) == grpc.StatusCode.OK


def test_expired_revoked_and_forged_tokens(tmp_path: Path) -> None:
    with secured_kurrent(tmp_path) as s:
        _, short = s.call(
            token_store(s.store).create("short", ["admin"], expires_in=dt.timedelta(seconds=1))
        )
        client = KurrentDBClient(s.uri(short))
        try:
            assert client.get_stream("public-1")
            time.sleep(1.2)  # let it expire (a state change, not a timing assertion)
            with pytest.raises(UnauthenticatedError, match="expired"):
                client.get_stream("public-1")
        finally:
            client.close()
        s.call(token_store(s.store).revoke("t-writer"))
        revoked = s.client("writer")
        try:
            with pytest.raises(UnauthenticatedError, match="revoked"):
                revoked.get_stream("public-1")
        finally:
            revoked.close()
        real = s.tokens["admin"]
        forged = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
        client = KurrentDBClient(s.uri(forged))
        try:
            with pytest.raises(UnauthenticatedError):
                client.get_stream("public-1")
        finally:
            client.close()


def test_rate_limit_per_token(tmp_path: Path) -> None:
    policy = parse_policy({"limits": {"requests_per_second": 0.01, "burst": 3}})
    with secured_kurrent(tmp_path, policy=policy, tls=False) as s:
        channel = grpc.insecure_channel(s.server.target)
        stub = streams_pb2_grpc.StreamsStub(channel)  # type: ignore[no-untyped-call]
        try:
            first = f"Bearer {s.tokens['reader']}"
            codes = [_status(stub, first, "public-1") for _ in range(4)]
            assert codes == [grpc.StatusCode.OK] * 3 + [grpc.StatusCode.RESOURCE_EXHAUSTED]
            # another token has its own bucket
            assert _status(stub, f"Bearer {s.tokens['admin']}", "public-1") == grpc.StatusCode.OK
        finally:
            channel.close()


# -- OIDC -----------------------------------------------------------------------------------

ISSUER = "https://issuer.test/"
AUDIENCE = "chronik-test"


@contextlib.contextmanager
def _jwks(keys: list[dict[str, Any]]) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"keys": keys}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks"
    finally:
        server.shutdown()
        server.server_close()


def _jwt(private: Any, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": now + 300, "iat": now,
            "groups": ["clerk"], **claims}  # fmt: skip
    return jwt.encode({k: v for k, v in body.items() if v is not None}, private,
                      algorithm="RS256", headers={"kid": "k1"})  # fmt: skip


def test_oidc_jwts(tmp_path: Path) -> None:
    """A valid JWT (as the Basic password, as KurrentDB clients send it, or as Bearer) is
    its subject with its roles; expired, foreign-issuer, wrong-audience and unknown-key
    JWTs are UNAUTHENTICATED."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
    public.update(kid="k1", alg="RS256", use="sig")
    with _jwks([public]) as url:
        toml = POLICY_TOML + (
            f'\n[oidc]\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\njwks_url = "{url}"\n'
            'roles_claim = "groups"\nmin_refresh_seconds = 0\n'
        )
        import tomllib

        policy = parse_policy(tomllib.loads(toml))
        with secured_kurrent(tmp_path, policy=policy) as s:
            good = KurrentDBClient(s.uri(_jwt(private), user="alice"))
            try:
                assert len(good.get_stream("orders-1")) == 1
                from kurrentdbclient.exceptions import AccessDeniedError

                with pytest.raises(AccessDeniedError):
                    good.get_stream("secret-1")
            finally:
                good.close()
            stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            bad = {
                "expired": _jwt(private, exp=int(time.time()) - 3600),
                "foreign issuer": _jwt(private, iss="https://evil.test/"),
                "wrong audience": _jwt(private, aud="someone-else"),
                "no exp": _jwt(private, exp=None),
                "unpublished key": _jwt(stranger),
            }
            for name, token in bad.items():
                client = KurrentDBClient(s.uri(token))
                try:
                    with pytest.raises(UnauthenticatedError):
                        client.get_stream("orders-1")
                finally:
                    client.close()
                del name
            channel = grpc.secure_channel(
                s.server.target, grpc.ssl_channel_credentials(s.cert.read_bytes())
            )
            stub = streams_pb2_grpc.StreamsStub(channel)  # type: ignore[no-untyped-call]
            try:
                assert _status(stub, f"Bearer {_jwt(private)}") == grpc.StatusCode.OK
                bearer = f"Bearer {_jwt(private, aud='x')}"
                assert _status(stub, bearer) == grpc.StatusCode.UNAUTHENTICATED
            finally:
                channel.close()


def test_an_unavailable_token_store_is_unavailable_not_unauthenticated(
    plain: tuple[SecuredKurrent, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Token checks read the store: when it is down the call answers ``UNAVAILABLE`` (the
    client retries), never "bad credentials" (which would make it drop a good token)."""
    from chronik.errors import StoreUnavailable
    from chronik.security import SqlTokens

    s, stub = plain

    async def down(self: object, token: str) -> None:
        raise StoreUnavailable("the database restarts")

    monkeypatch.setattr(SqlTokens, "verify", down)
    assert _status(stub, f"Bearer {s.tokens['admin']}") == grpc.StatusCode.UNAVAILABLE
    monkeypatch.undo()
    assert _status(stub, f"Bearer {s.tokens['admin']}") == grpc.StatusCode.OK


def test_cancelled_subscriptions_leave_nothing_behind(tmp_path: Path) -> None:
    """Clients that drop watched subscriptions (the recheck running beside them) leave no
    task behind on the server, and the server still serves."""
    with secured_kurrent(tmp_path, recheck_seconds=0.05) as s:

        async def tasks() -> int:
            import asyncio

            return len(asyncio.all_tasks())

        before = s.call(tasks())
        client = s.client("reader")
        try:
            for _ in range(5):
                subscription = client.subscribe_to_all(include_caught_up=True, timeout=30)
                for event in subscription:
                    if event.is_caught_up:
                        break
                time.sleep(0.1)  # a few rechecks while it waits
                subscription.stop()
            deadline = time.monotonic() + 10
            while s.call(tasks()) > before and time.monotonic() < deadline:
                time.sleep(0.05)
            assert s.call(tasks()) <= before
            assert client.get_stream("public-1")
        finally:
            client.close()
