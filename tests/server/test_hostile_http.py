"""Defects a red-team session found on the HTTP face and ``connect``, kept fixed."""

from __future__ import annotations

import logging

import httpx
import pytest
from starlette.requests import ClientDisconnect

import chronik
from chronik.server import create_app
from chronik.server.routing import error_response
from chronik.store.urls import redact_url


@pytest.mark.parametrize("path", ["/streams/%FF", "/streams/%ED%A0%80", "/correlations/%FF"])
async def test_percent_escapes_that_are_not_utf8_are_refused_not_rewritten(path: str) -> None:
    async with await chronik.connect("memory://") as store:
        transport = httpx.ASGITransport(app=create_app(store))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            if path.startswith("/streams"):
                answer = await http.post(path, json={"events": [{"type": "T"}]})
            else:
                answer = await http.get(path)
            bad_query = await http.get("/events", params={"types": "x"}, follow_redirects=False)
            assert bad_query.status_code == 200
            raw = await http.get("/events?types=%ED%A0%80")
        assert answer.status_code == 400 and answer.json()["error"]["type"] == "InvalidEncoding"
        assert raw.status_code == 400
        assert await store.head_position() == 0  # nothing stored under U+FFFD


@pytest.mark.parametrize(
    "path",
    ["/live/streams/a%FF", "/live/categories/%ED%A0%80", "/live/sagas/%FF",
     "/live/events?types=%FF"],
)  # fmt: skip
async def test_live_routes_refuse_percent_escapes_that_are_not_utf8(path: str) -> None:
    async with await chronik.connect("memory://") as store:
        transport = httpx.ASGITransport(app=create_app(store))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            answer = await http.get(path)
        assert answer.status_code == 400 and answer.json()["error"]["type"] == "InvalidEncoding"


def test_a_client_that_leaves_mid_body_is_not_logged_as_a_bug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="chronik.server"):
        assert error_response(ClientDisconnect()).status_code == 400
    assert not caplog.records


@pytest.mark.parametrize("url", ["sqlite:///\x00.db", "sqlite:///\ud800.db", b"memory://", 5, ""])
async def test_connect_refuses_odd_urls_with_a_chronik_error(url: object) -> None:
    with pytest.raises(chronik.UnsupportedStoreUrl):
        await chronik.connect(url)  # type: ignore[arg-type]


def test_a_url_that_does_not_parse_still_hides_its_password() -> None:
    assert "hunter2" not in redact_url("postgresql://u:hunter2@[::1/x")


async def test_pages_of_other_sites_cannot_change_state_or_rebind_the_host() -> None:
    """Red team: an open server (no policy, or --anonymous) was paused, and its log read over
    a WebSocket, by a page of another site; a DNS-rebinding Host was answered."""
    from chronik.server.origin import LOOPBACK_HOSTS

    async with await chronik.connect("memory://") as store:
        await store.append("order-1", [chronik.NewEvent("Placed")])
        web = create_app(store, allowed_hosts=LOOPBACK_HOSTS)
        transport = httpx.ASGITransport(app=web)
        base = "http://127.0.0.1:8000"
        async with httpx.AsyncClient(transport=transport, base_url=base) as http:
            evil = {"Origin": "http://evil.example"}
            for headers in (evil, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"},
                            {"Origin": "http://127.0.0.1:3000"}):  # fmt: skip
                r = await http.post("/streams/order-2", json={"events": [{"type": "T"}]},
                                    headers=headers)  # fmt: skip
                assert r.status_code == 403, headers
                assert r.json()["error"]["type"] == "CrossSiteRequest"
            same = await http.post("/streams/order-2", json={"events": [{"type": "T"}]},
                                   headers={"Origin": base})  # fmt: skip
            assert same.status_code == 201
            plain = await http.post("/streams/order-3", json={"events": [{"type": "T"}]})
            assert plain.status_code == 201  # not a browser: no Origin, not affected
            read = await http.get("/events", headers=evil)
            assert read.status_code == 200  # reads: the browser itself withholds the answer
            rebound = await http.get("/stats", headers={"Host": "evil.example:8000"})
            assert rebound.status_code == 400 and rebound.json()["error"]["type"] == "UnknownHost"
            ok_host = await http.get("/stats", headers={"Host": "localhost:8000"})
            assert ok_host.status_code == 200
        assert await store.head_position() == 3  # the two plain appends, nothing else
        # a WebSocket handshake from another site's page: closed before it is accepted
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return {"type": "websocket.connect"}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        scope = {"type": "websocket", "path": "/live/ws", "raw_path": b"/live/ws",
                 "query_string": b"", "root_path": "", "scheme": "ws",
                 "headers": [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://evil.example")],
                 "subprotocols": []}  # fmt: skip
        await web(scope, receive, send)  # type: ignore[arg-type]
        assert sent == [{"type": "websocket.close", "code": 1008, "reason": "CrossSiteRequest"}]


@pytest.mark.parametrize(
    "path",
    ["/live/events?categories=%00&after=0", "/live/events?types=a%00b",
     "/live/categories/%00", "/live/sagas/a%00b", "/live/streams/order-1?types=%00"],
)  # fmt: skip
async def test_a_nul_in_a_live_filter_is_refused_before_the_stream_starts(path: str) -> None:
    """Red team: the stream answered 200, then died with a logged traceback (and an
    EventSource reconnected every second)."""
    async with await chronik.connect("memory://") as store:
        transport = httpx.ASGITransport(app=create_app(store))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            answer = await http.get(path)
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"]["type"] in ("InvalidArgument", "InvalidQuery")
