"""A dependency restarting: PostgreSQL restarted (``-m immediate``) under the protocol server
while a client appends and another follows ``$all``. The server keeps serving once the
database is back; every acknowledged event is stored and delivered once."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid

import pytest
from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.exceptions import KurrentDBClientError

from tests.integration.conftest import PrivatePg, private_pg  # noqa: F401 - the fixture
from tests.kurrent.conftest import ServerThread


def _follow(uri: str, got: list[tuple[str, int]], stop: threading.Event) -> None:
    """Follow $all, resubscribing after the last position whenever the call ends."""
    with KurrentDBClient(uri) as client:
        while not stop.is_set():
            position = got[-1][1] if got else None
            try:
                sub = client.subscribe_to_all(commit_position=position, filter_exclude=[r"\$.+"])
                for event in sub:
                    got.append((str(event.id), event.commit_position))
                    if stop.is_set():
                        break
                sub.stop()
            except KurrentDBClientError:
                time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.feature("restarts")
def test_postgres_restarts_under_the_protocol_server(private_pg: PrivatePg) -> None:  # noqa: F811
    server = ServerThread(private_pg.url)
    got: list[tuple[str, int]] = []
    stop = threading.Event()
    follower = threading.Thread(target=_follow, args=(server.uri, got, stop))
    follower.start()
    acked: set[str] = set()
    unknown: set[str] = set()
    try:
        with KurrentDBClient(server.uri) as client:
            for round_ in range(3):
                # the restart runs while this round appends
                restart = threading.Thread(target=private_pg.restart, args=("immediate",))
                restart.start()
                for i in range(10):
                    event = NewEvent(type="Wrote", data=b'{"i": %d}' % i, id=uuid.uuid4())
                    try:
                        client.append_to_stream(
                            f"r-{round_}", events=event, current_version=StreamState.ANY
                        )
                    except KurrentDBClientError:
                        unknown.add(str(event.id))
                    else:
                        acked.add(str(event.id))
                    time.sleep(0.05)
                restart.join(60)
            deadline = time.monotonic() + 30
            while True:  # the server serves again once PostgreSQL is back
                try:
                    client.append_to_stream(
                        "after-1",
                        events=NewEvent(type="After", data=b"{}"),
                        current_version=StreamState.ANY,
                    )
                    break
                except KurrentDBClientError:
                    assert time.monotonic() < deadline, "the server did not recover"
                    time.sleep(0.2)
            stored = {str(e.id) for e in client.read_all(filter_exclude=[r"\$.+"])}
        print("restart run:", len(acked), "acked,", len(unknown), "unknown,", len(stored), "stored")
        assert acked <= stored
        expected = stored
        deadline = time.monotonic() + 30
        while not expected <= {i for i, _ in got} and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        _wake(server)
        follower.join(30)
        server.close()
    delivered = [i for i, _ in got]
    assert len(delivered) == len(set(delivered)), "an event was delivered twice"
    assert expected <= set(delivered)
    assert [p for _, p in got] == sorted(p for _, p in got)


def _wake(server: ServerThread) -> None:
    async def append() -> None:
        import chronik

        await server.store.append("wake-1", [chronik.NewEvent("Wake", {})])

    # the store may be down: the follower then ends on its own error
    with contextlib.suppress(Exception):
        server.call(append())
