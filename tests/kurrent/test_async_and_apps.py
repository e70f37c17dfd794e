"""The asyncio client, an unchanged eventsourcing application through eventsourcing-kurrentdb,
and ``chronik serve --kurrent-grpc --no-http`` as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kurrentdbclient import AsyncKurrentDBClient, NewEvent, StreamState
from kurrentdbclient.events import CaughtUp
from kurrentdbclient.exceptions import NotFoundError, WrongCurrentVersionError

from tests.kurrent.conftest import ServerThread


@pytest.mark.feature("asyncio-client")
async def test_asyncio_client_appends_reads_and_subscribes(kurrent: ServerThread) -> None:
    client = AsyncKurrentDBClient(kurrent.uri)
    await client.connect()
    try:
        first = await client.append_to_stream(
            "a-1", events=[NewEvent(type="A", data=b"{}")], current_version=StreamState.NO_STREAM
        )
        with pytest.raises(WrongCurrentVersionError):
            await client.append_to_stream(
                "a-1", events=NewEvent(type="B", data=b"{}"), current_version=5
            )
        events = await client.get_stream("a-1")
        assert [(e.type, e.commit_position) for e in events] == [("A", first)]
        with pytest.raises(NotFoundError):
            await client.get_stream("nope-1")
        sub = await client.subscribe_to_all(include_caught_up=True)
        async for item in sub:
            if isinstance(item, CaughtUp):
                break
        await client.append_to_stream(
            "a-1", events=NewEvent(type="Live", data=b"{}"), current_version=0
        )
        async for item in sub:
            assert item.type == "Live"
            break
        await sub.stop()
        assert await client.get_commit_position() > first
    finally:
        await client.close()


@pytest.mark.feature("eventsourcing-app")
def test_unchanged_eventsourcing_application(kurrent: ServerThread, monkeypatch: Any) -> None:
    from eventsourcing.system import NotificationLogReader

    from tests.kurrent.dogschool import Dog, DogSchool

    env = {"PERSISTENCE_MODULE": "eventsourcing_kurrentdb", "KURRENTDB_URI": kurrent.uri}
    app = DogSchool(env=env)
    try:
        fido = app.register("Fido")
        app.add_trick(fido, "roll over")
        app.add_trick(fido, "play dead")
        rex = app.register("Rex")
        dog: Dog = app.repository.get(fido)
        assert dog.tricks == ["roll over", "play dead"] and dog.version == 2
        assert app.repository.get(rex).name == "Rex"
        items = list(NotificationLogReader(app.notification_log).read(start=1))
        assert [n.topic.rsplit(".", 1)[-1] for n in items][:2] == ["Registered", "TrickAdded"]
        assert len(items) == 4
        with app.recorder.subscribe(gt=items[1].id) as subscription:
            followed = [next(subscription) for _ in range(2)]
            assert [n.id for n in followed] == [n.id for n in items[2:]]
            app.add_trick(rex, "sit")
            assert str(next(subscription).originator_id) == str(rex)
    finally:
        app.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.feature("serve-cli")
@pytest.mark.parametrize("with_http", [False, True])
def test_chronik_serve_kurrent_grpc_subprocess(tmp_path: Path, with_http: bool) -> None:
    from kurrentdbclient import KurrentDBClient

    url = f"sqlite:///{tmp_path}/served.db"
    chronik_bin = str(Path(sys.executable).parent / "chronik")
    subprocess.run([chronik_bin, "--store", url, "init"], check=True, capture_output=True)
    port, http_port = _free_port(), _free_port()
    http = ["--port", str(http_port)] if with_http else ["--no-http"]
    proc = subprocess.Popen(
        [chronik_bin, "--store", url, "serve", "--kurrent-grpc", f"127.0.0.1:{port}", *http],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), 0.5):
                    break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the server did not listen"
                time.sleep(0.1)
        with KurrentDBClient(f"kurrentdb://127.0.0.1:{port}?tls=false") as client:
            client.append_to_stream(
                "cli-1",
                events=NewEvent(type="T", data=b"{}"),
                current_version=StreamState.NO_STREAM,
            )
            assert [e.type for e in client.get_stream("cli-1")] == ["T"]
        if with_http:  # the HTTP API beside it, in the same loop, sees the same store
            import httpx

            for _ in range(100):
                try:
                    answer = httpx.get(f"http://127.0.0.1:{http_port}/streams/cli-1", timeout=2)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            assert answer.status_code == 200 and '"T"' in answer.text
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    listed = subprocess.run(
        [chronik_bin, "--store", url, "events", "cli-1", "--json"], capture_output=True, text=True
    )
    assert '"T"' in listed.stdout


@pytest.mark.feature("serve-cli")
@pytest.mark.parametrize(
    "argv,listen",
    [
        (["--kurrent-grpc"], ("127.0.0.1", 2113)),
        (["--kurrent-grpc", "3113"], ("127.0.0.1", 3113)),
        (["--kurrent-grpc", "0.0.0.0:2114", "--no-http"], ("0.0.0.0", 2114)),
        ([], None),
    ],
)
def test_serve_flags_parse(argv: list[str], listen: tuple[str, int] | None) -> None:
    from chronik.cli.main import build_parser

    args = build_parser().parse_args(["serve", *argv])
    assert args.kurrent_grpc == listen


@pytest.mark.feature("serve-cli")
@pytest.mark.parametrize("bad", ["host:", "x:99999", "two:1:2x"])
def test_serve_refuses_a_bad_listen_address(bad: str) -> None:
    from chronik.cli.main import UsageError, build_parser

    with pytest.raises(UsageError, match="kurrent-grpc"):
        build_parser().parse_args(["serve", "--kurrent-grpc", bad])


@pytest.mark.feature("serve-cli")
@pytest.mark.parametrize(
    "extra,message",
    [
        (["--kurrent-grpc", "0.0.0.0:0", "--no-http"], "refusing to serve the KurrentDB"),
        (["--kurrent-grpc", "0.0.0.0:0", "--no-http", "--rate-limit", "5"], "refusing to serve"),
        (["--kurrent-grpc", "127.0.0.1:0", "--no-http", "--tls-cert", "c.pem"], "go together"),
    ],
)
def test_serve_refuses_an_unauthenticated_grpc_face_it_cannot_protect(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    """Off the loopback the gRPC face needs --policy or --anonymous ROLE: without them
    chronik serve refuses to start (exit 1) instead of serving it open."""
    url = f"sqlite:///{tmp_path}/k.db"
    cli = [sys.executable, "-m", "chronik", "--store", url]
    subprocess.run([*cli, "init"], check=True, capture_output=True)
    done = subprocess.run([*cli, "serve", *extra], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert message in done.stderr
