"""The authorisation matrix on the KurrentDB gRPC face (issue 19): roles x categories x
operations with the real ``kurrentdbclient`` over TLS, every cell checked against
hand-written expectations (``harness.READS``/``APPENDS`` and the tables below, never the
policy code under test), ``$all`` reads and subscriptions included; a leaky server must
fail the same checker (negative control); revocation ends an open subscription.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kurrentdbclient import NewEvent, StreamState
from kurrentdbclient.exceptions import (
    AccessDeniedError,
    UnauthenticatedError,
)

from tests.security.grpc_harness import SecuredKurrent, secured_kurrent
from tests.security.harness import ALL, APPENDS, CATEGORIES, READS, ROLES

NONE: frozenset[str] = frozenset()
DELETES: dict[str, frozenset[str]] = {r: (ALL if r == "admin" else NONE) for r in ROLES}
READ_METADATA: dict[str, frozenset[str]] = {
    r: (ALL if r in ("admin", "reader", "writer", "auditor") else NONE) for r in ROLES
}
WRITE_METADATA: dict[str, frozenset[str]] = {r: (ALL if r == "admin" else NONE) for r in ROLES}

ALLOWED, DENIED = "allowed", "denied"


def _category(stream_name: str) -> str:
    """``orders-1`` → ``orders``; a metadata stream ``$$orders-1`` → ``meta:orders``."""
    if stream_name.startswith("$$"):
        return "meta:" + stream_name[2:].partition("-")[0]
    return stream_name.partition("-")[0]


def _outcome(action: Callable[[], Any]) -> str:
    try:
        action()
    except AccessDeniedError:
        return DENIED
    except UnauthenticatedError:
        return "unauthenticated"
    except Exception as exc:  # any other answer is a wrong cell, reported by name
        return f"{type(exc).__name__}: {exc}"[:200]
    return ALLOWED


def _subscribed_categories(client: Any) -> set[str]:
    subscription = client.subscribe_to_all(
        filter_exclude=(), include_caught_up=True, include_checkpoints=True, timeout=20
    )
    seen: set[str] = set()
    try:
        for event in subscription:
            if event.is_caught_up:
                return seen
            if not event.is_checkpoint:
                seen.add(_category(event.stream_name))
    finally:
        subscription.stop()
    return seen


def _first_of_stream(client: Any, name: str) -> None:
    subscription = client.subscribe_to_stream(name, include_caught_up=True, timeout=20)
    try:
        next(iter(subscription))
    finally:
        subscription.stop()


def matrix_wrong(s: SecuredKurrent) -> list[str]:
    """Every cell of the matrix that is not as specified (empty: all as specified)."""
    wrong: list[str] = []

    def expect(cell: str, got: Any, want: Any) -> None:
        if got != want:
            wrong.append(f"{cell}: got {got!r}, want {want!r}")

    admin = s.client("admin")
    try:
        for category in CATEGORIES:  # metadata for each category: seen only with read_metadata
            admin.set_stream_metadata(f"{category}-1", metadata={"owner": category})
    finally:
        admin.close()
    for role in ROLES:
        for category in CATEGORIES:
            for kind in ("del", "tomb"):
                s.call(s.store.append(f"{category}-{kind}{role}", [_seed_event()]))
    meta_seen = {f"meta:{c}" for c in CATEGORIES}
    for role in ROLES:
        client = s.client(role)
        try:
            want_all = set(READS[role]) | {f"meta:{c}" for c in READ_METADATA[role]}
            got_all = {_category(e.stream_name) for e in client.read_all(filter_exclude=())}
            expect(f"{role} read $all", got_all, want_all)
            back = client.read_all(filter_exclude=(), backwards=True, limit=3)
            got_back = {_category(e.stream_name) for e in back}
            if not got_back <= want_all | meta_seen & want_all:
                wrong.append(f"{role} read $all backwards: saw {sorted(got_back - want_all)}")
            expect(f"{role} subscribe $all", _subscribed_categories(client), want_all)
            for category in CATEGORIES:
                for op, (table, action) in _actions(client, category, role).items():
                    want = ALLOWED if category in table[role] else DENIED
                    expect(f"{role} {op} {category}", _outcome(action), want)
        finally:
            client.close()
    # a refused write left the store as it was: the streams exist only where allowed
    for role in ROLES:
        for category in CATEGORIES:
            for stream, table in (
                (f"{category}-a{role}", APPENDS),
                (f"{category}-b{role}", APPENDS),
                (f"$${category}-m{role}", WRITE_METADATA),
            ):
                stream_id = "kurrent$" + stream[1:] if stream.startswith("$") else stream
                exists = s.call(_exists(s.store, stream_id))
                expect(f"{role} stored {stream}", exists, category in table[role])
            deleted = s.call(_exists(s.store, f"kurrent$${category}-del{role}"))
            expect(f"{role} stored delete of {category}", deleted, category in DELETES[role])
            last = s.call(_last_type(s.store, f"{category}-tomb{role}"))
            expect(
                f"{role} stored tombstone of {category}",
                last == "$streamDeleted",
                category in DELETES[role],
            )
    return wrong


def _actions(
    client: Any, category: str, role: str
) -> dict[str, tuple[dict[str, frozenset[str]], Callable[[], Any]]]:
    """Each operation of the matrix on ``category``, with the table that says who may."""
    stream = f"{category}-1"

    def one() -> NewEvent:  # a fresh event id for each append
        return NewEvent(type="Tried", data=b"{}")

    return {
        "read": (READS, lambda: client.get_stream(stream)),
        "subscribe": (READS, lambda: _first_of_stream(client, stream)),
        "append": (APPENDS, lambda: client.append_to_stream(
            f"{category}-a{role}", events=one(), current_version=StreamState.ANY)),
        "batch_append": (APPENDS, lambda: client.append_to_stream(
            f"{category}-b{role}", events=[one()], current_version=StreamState.ANY)),
        "delete": (DELETES, lambda: client.delete_stream(
            f"{category}-del{role}", current_version=StreamState.ANY)),
        "tombstone": (DELETES, lambda: client.tombstone_stream(
            f"{category}-tomb{role}", current_version=StreamState.ANY)),
        "read_metadata": (READ_METADATA, lambda: client.get_stream_metadata(stream)),
        "write_metadata": (WRITE_METADATA, lambda: client.set_stream_metadata(
            f"{category}-m{role}", metadata={"x": 1})),
    }  # fmt: skip


def _seed_event() -> Any:
    from chronik import NewEvent as ChronikEvent

    return ChronikEvent("Seeded", {})


async def _exists(store: Any, stream_id: str) -> bool:
    return (await store.stream_version(stream_id)) is not None


async def _last_type(store: Any, stream_id: str) -> str | None:
    async for event in store.read_stream(stream_id, backwards=True, limit=1):
        return str(event.type)
    return None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """The tokens live in the store and ``$all`` is read from it: the matrix runs on both."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


def test_grpc_matrix(tmp_path: Path, store_url: str | None) -> None:
    with secured_kurrent(tmp_path, url=store_url) as s:
        wrong = matrix_wrong(s)
    assert wrong == [], "\n".join(wrong)


def test_the_grpc_matrix_catches_a_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: a face that forgets to authorise streams and to filter ``$all``
    must fail the checker above, on reads, ``$all`` and writes alike."""
    import chronik.kurrent.streams as streams

    monkeypatch.setattr(streams, "authorize", lambda *_args: None)
    monkeypatch.setattr(streams, "visible", lambda *_args: lambda _event: True)
    with secured_kurrent(tmp_path) as s:
        wrong = matrix_wrong(s)
    text = "\n".join(wrong)
    for leak in ("clerk read $all", "clerk subscribe $all", "nothing read secret",
                 "clerk append secret", "reader delete orders", "clerk read_metadata orders",
                 "nothing stored orders-anothing"):  # fmt: skip
        assert leak in text, f"the checker missed {leak!r}:\n{text}"


def test_without_credentials_and_public_methods(tmp_path: Path) -> None:
    """No credentials: the client connects (Gossip and ServerFeatures are public, as in
    KurrentDB) and every stream call is UNAUTHENTICATED; bad credentials are refused even
    there. (kurrentdbclient sends credentials only over TLS and wants some with TLS: the
    credential-less client talks to a plain-text server.)"""
    with secured_kurrent(tmp_path / "plain", tls=False) as s:
        client = s.client(None)
        try:
            for action in (
                lambda: client.get_stream("public-1"),
                lambda: list(client.read_all()),
                lambda: client.append_to_stream(
                    "public-x",
                    events=NewEvent(type="T", data=b"{}"),
                    current_version=StreamState.ANY,
                ),
                lambda: client.get_stream_metadata("public-1"),
            ):
                assert _outcome(action) == "unauthenticated"
        finally:
            client.close()
    import grpc
    from kurrentdbclient import KurrentDBClient
    from kurrentdbclient.protos.v1 import gossip_pb2_grpc, shared_pb2

    with secured_kurrent(tmp_path) as s:
        forged = KurrentDBClient(s.uri("chronik_000000000000_" + "x" * 43))
        try:
            with pytest.raises(UnauthenticatedError):
                forged.get_stream("public-1")
        finally:
            forged.close()
        credentials = grpc.ssl_channel_credentials(s.cert.read_bytes())
        with grpc.secure_channel(s.server.target, credentials) as channel:
            gossip = gossip_pb2_grpc.GossipStub(channel)  # type: ignore[no-untyped-call]
            assert len(gossip.Read(shared_pb2.Empty(), timeout=10).members) == 1
            with pytest.raises(grpc.RpcError) as refused:
                gossip.Read(shared_pb2.Empty(), timeout=10,
                            metadata=(("authorization", "Bearer chronik_nope"),))  # fmt: skip
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_token_as_bearer_and_any_user_name(tmp_path: Path) -> None:
    """``Bearer <token>`` works as well as ``Basic user:token``; the user name is free."""
    import grpc
    from kurrentdbclient.protos.v1 import streams_pb2, streams_pb2_grpc

    with secured_kurrent(tmp_path) as s:
        for user in ("clerk", "x", "t-clerk"):
            from kurrentdbclient import KurrentDBClient

            named = KurrentDBClient(s.uri(s.tokens["clerk"], user=user))
            try:
                assert len(named.get_stream("orders-1")) == 1
            finally:
                named.close()
        credentials = grpc.ssl_channel_credentials(s.cert.read_bytes())
        with grpc.secure_channel(s.server.target, credentials) as channel:
            stub = streams_pb2_grpc.StreamsStub(channel)  # type: ignore[no-untyped-call]
            request = _read_stream_request("orders-1")
            metadata = (("authorization", f"Bearer {s.tokens['clerk']}"),)
            answers = list(stub.Read(request, metadata=metadata, timeout=10))
            assert answers[0].WhichOneof("content") == "event"
            request = _read_stream_request("secret-1")
            with pytest.raises(grpc.RpcError) as denied:
                list(stub.Read(request, metadata=metadata, timeout=10))
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            del streams_pb2


def _read_stream_request(name: str) -> Any:
    from kurrentdbclient.protos.v1 import shared_pb2, streams_pb2

    options = streams_pb2.ReadReq.Options(
        stream=streams_pb2.ReadReq.Options.StreamOptions(
            stream_identifier=shared_pb2.StreamIdentifier(stream_name=name.encode()),
            start=shared_pb2.Empty(),
        ),
        read_direction=streams_pb2.ReadReq.Options.Forwards,
        count=10,
        resolve_links=False,
        no_filter=shared_pb2.Empty(),
        uuid_option=streams_pb2.ReadReq.Options.UUIDOption(string=shared_pb2.Empty()),
    )
    return streams_pb2.ReadReq(options=options)


def test_revocation_ends_an_open_subscription(tmp_path: Path) -> None:
    """A revoked token: the next call is refused, and an open (idle, caught-up)
    subscription ends with UNAUTHENTICATED within the recheck period."""
    with secured_kurrent(tmp_path, recheck_seconds=0.5) as s:
        client = s.client("reader")
        try:
            subscription = client.subscribe_to_all(include_caught_up=True, timeout=30)
            for event in subscription:
                if event.is_caught_up:
                    break
            s.call(_revoke(s, "t-reader"))
            started = time.monotonic()
            with pytest.raises(UnauthenticatedError):
                for _event in subscription:
                    pass
            ended_after = time.monotonic() - started
            with pytest.raises(UnauthenticatedError):
                client.get_stream("public-1")
        finally:
            client.close()
        # reported, not asserted (no timing assertions): the bound is the recheck period
        print(f"subscription ended {ended_after:.2f} s after the revocation")


async def _revoke(s: SecuredKurrent, name: str) -> None:
    from chronik.security import token_store

    await token_store(s.store).revoke(name)


def test_tls_connection_needs_the_ca(tmp_path: Path) -> None:
    """The real client over TLS with ``tlsCAFile`` works; without the CA it cannot connect."""
    from kurrentdbclient import KurrentDBClient
    from kurrentdbclient.exceptions import DiscoveryFailedError, ServiceUnavailableError

    with secured_kurrent(tmp_path) as s:
        client = s.client("admin")
        try:
            assert client.get_stream("public-1")[0].type == "Seeded"
        finally:
            client.close()
        untrusted = (
            f"kurrentdb://u:{s.tokens['admin']}@{s.server.target}?tls=true&MaxDiscoverAttempts=1"
        )
        with pytest.raises((DiscoveryFailedError, ServiceUnavailableError)):
            KurrentDBClient(untrusted).get_stream("public-1")


def test_chronik_serve_grpc_with_a_policy_and_tls(tmp_path: Path) -> None:
    """``chronik serve --kurrent-grpc --no-http --policy FILE --tls-cert --tls-key``: the
    real client with a token (``tlsCAFile``) reads what its role allows and nothing else."""
    import asyncio
    import socket
    import subprocess
    import sys

    import chronik
    from chronik.security import token_store
    from tests.security.grpc_harness import self_signed
    from tests.security.harness import POLICY_TOML, seed

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY_TOML)
    cert, key = self_signed(tmp_path)

    async def prepare() -> str:
        store = await chronik.connect(url)
        try:
            await seed(store)
            _, token = await token_store(store).create("cli-clerk", ["clerk"])
            return str(token)
        finally:
            await store.close()

    token = asyncio.run(prepare())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    argv = [sys.executable, "-m", "chronik", "--store", url, "serve", "--no-http",
            "--kurrent-grpc", f"127.0.0.1:{port}", "--policy", str(policy),
            "--tls-cert", str(cert), "--tls-key", str(key)]  # fmt: skip
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as server:
        try:
            _talk_to_the_cli_server(server, token, port, cert)
        finally:
            server.terminate()
            server.wait(20)


def _talk_to_the_cli_server(server: Any, token: str, port: int, cert: Path) -> None:
    from kurrentdbclient import KurrentDBClient
    from kurrentdbclient.exceptions import AccessDeniedError

    assert server.stdout is not None
    line = server.stdout.readline()
    assert "tls=true" in line, (line, server.poll())
    uri = f"kurrentdb://clerk:{token}@127.0.0.1:{port}?tls=true&tlsCAFile={cert}"
    client = KurrentDBClient(uri)
    try:
        assert len(client.get_stream("orders-1")) == 1
        with pytest.raises(AccessDeniedError):
            client.get_stream("secret-1")
        seen = {_category(e.stream_name) for e in client.read_all(filter_exclude=())}
        assert seen == {"orders", "public"}
    finally:
        client.close()


def test_anonymous_role_without_credentials(tmp_path: Path) -> None:
    """``--anonymous clerk``: a client without credentials is the clerk, no more."""
    from chronik.security import load_policy
    from tests.security.harness import POLICY_TOML

    (tmp_path / "p.toml").write_text('anonymous = "clerk"\n' + POLICY_TOML)
    policy = load_policy(tmp_path / "p.toml")
    with secured_kurrent(tmp_path, policy=policy, tls=False) as s:
        client = s.client(None)
        try:
            assert len(client.get_stream("orders-1")) == 1
            assert _outcome(lambda: client.get_stream("secret-1")) == DENIED
            seen = {_category(e.stream_name) for e in client.read_all(filter_exclude=())}
            assert seen == {"orders", "public"}
        finally:
            client.close()


def test_a_new_servicer_plugs_in_with_one_declaration(tmp_path: Path) -> None:
    """A servicer behind :class:`AuthInterceptor`: an undeclared method needs ``operate``
    (fail closed); a declared ``CHECKED`` one runs for any authenticated caller and
    authorises per stream with :func:`authorize`."""
    import grpc

    from chronik.kurrent.auth import AuthInterceptor, Rule, authorize, declare
    from chronik.security import Operation

    declare("test.Plugged", {"Mine": Rule.CHECKED})

    async def mine(request: bytes, context: Any) -> bytes:
        authorize(Operation.READ, request.decode())
        return b"ok"

    async def undeclared(request: bytes, context: Any) -> bytes:
        return b"ok"

    with secured_kurrent(tmp_path, tls=False) as s:

        async def start() -> Any:
            server = grpc.aio.server(interceptors=[AuthInterceptor(s.guard)])
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.Plugged", {
                "Mine": grpc.unary_unary_rpc_method_handler(mine),
                "Open": grpc.unary_unary_rpc_method_handler(undeclared),
            }),))  # fmt: skip
            port = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            return server, port

        server, port = s.call(start())
        try:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:

                def code(method: str, role: str | None, body: bytes = b"secret-1") -> Any:
                    call: Any = channel.unary_unary(f"/test.Plugged/{method}")
                    metadata = () if role is None else (("authorization",
                                                         f"Bearer {s.tokens[role]}"),)  # fmt: skip
                    try:
                        call(body, metadata=metadata, timeout=10)
                    except grpc.RpcError as exc:
                        return exc.code()
                    return grpc.StatusCode.OK

                assert code("Open", None) == grpc.StatusCode.UNAUTHENTICATED
                assert code("Open", "reader") == grpc.StatusCode.PERMISSION_DENIED
                assert code("Open", "ops") == grpc.StatusCode.OK  # operate on *
                assert code("Mine", None) == grpc.StatusCode.UNAUTHENTICATED
                assert code("Mine", "clerk") == grpc.StatusCode.PERMISSION_DENIED
                assert code("Mine", "clerk", b"orders-1") == grpc.StatusCode.OK
                assert code("Mine", "reader") == grpc.StatusCode.OK
        finally:
            s.call(server.stop(0))


def test_persistent_subscriptions_under_the_policy(tmp_path: Path) -> None:
    """Reading a group needs read on its stream's category (every category for ``$all``);
    creating one needs operate. Decided before the group is looked up."""
    from kurrentdbclient.exceptions import AccessDeniedError

    with secured_kurrent(tmp_path) as s:
        admin, clerk, reader = s.client("admin"), s.client("clerk"), s.client("reader")
        try:
            admin.create_subscription_to_stream("g-orders", "orders-1")
            admin.create_subscription_to_stream("g-secret", "secret-1")
            admin.create_subscription_to_all("g-all")
            with pytest.raises(AccessDeniedError):
                clerk.create_subscription_to_stream("g-mine", "orders-1")
            with pytest.raises(AccessDeniedError):
                clerk.list_subscriptions()

            def first(subscription: Any) -> Any:
                try:
                    return next(iter(subscription))
                finally:
                    subscription.stop()

            event = first(clerk.read_subscription_to_stream("g-orders", "orders-1"))
            assert event.stream_name == "orders-1"
            for group, stream in (("g-secret", "secret-1"), ("g-all", None)):
                with pytest.raises(AccessDeniedError):
                    if stream is None:
                        first(clerk.read_subscription_to_all(group))
                    else:
                        first(clerk.read_subscription_to_stream(group, stream))
            assert first(reader.read_subscription_to_all("g-all")) is not None
        finally:
            for client in (admin, clerk, reader):
                client.close()
