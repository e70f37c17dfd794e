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
