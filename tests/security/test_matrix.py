"""The authorisation matrix (issue 19): roles x categories x operations x faces (the JSON
API, SSE, the WebSocket and the console), every cell checked against the hand-written
expectations of ``harness`` (READS, APPENDS, OPERATORS), listings and the global log
included. Each test collects every wrong cell and reports them all at once.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from chronik.security import CategoryFilter, Policy
from tests.security.harness import (
    ALL,
    APPENDS,
    CATEGORIES,
    CORRELATION,
    OPERATORS,
    READS,
    ROLES,
    Secured,
    secured,
    sse_messages,
)


def _categories(stream_ids: list[str]) -> set[str]:
    return {s.partition("-")[0] for s in stream_ids}


def _expect(wrong: list[str], cell: str, got: Any, want: Any) -> None:
    if got != want:
        wrong.append(f"{cell}: got {got!r}, want {want!r}")


async def _all_events(client: httpx.AsyncClient, s: Secured, role: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    after = "0"
    while True:
        page = (await client.get(f"{s.base}/events", params={"after": after, "limit": 2},
                                 headers=s.headers(role))).json()  # fmt: skip
        found.extend(page["events"])
        assert page["next_after"] != after or not page["more"]
        after = page["next_after"]
        if not page["more"]:
            return found


def _trace_streams(nodes: list[dict[str, Any]]) -> list[str]:
    out = []
    for n in nodes:
        out.append(n["event"]["stream_id"])
        out.extend(_trace_streams(n["children"]))
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    """Each backend filters the log itself (SQL): the matrix runs on both."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_url")
    return url


async def test_json_api_matrix(tmp_path: Path, store_url: str | None) -> None:
    wrong = await _json_matrix(tmp_path, store_url)
    assert not wrong, "\n".join(wrong)


async def test_the_matrix_catches_a_leak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: a server whose listings and logs forget to filter must fail the
    matrix (in the listing, global-log and trace cells of every partial reader)."""
    monkeypatch.setattr(Policy, "readable", lambda self, principal: CategoryFilter(True))
    wrong = await _json_matrix(tmp_path)
    for role in ("clerk", "auditor", "ops", "nothing"):
        for cell in ("listing", "global log", "trace"):
            assert any(w.startswith(f"{role} {cell}:") for w in wrong), (role, cell)


async def _json_matrix(tmp_path: Path, url: str | None = None) -> list[str]:
    wrong: list[str] = []
    async with secured(tmp_path, url=url) as s, httpx.AsyncClient() as client:
        for role in ROLES:
            h = s.headers(role)
            for c in CATEGORIES:
                r = await client.get(f"{s.base}/streams/{c}-1", headers=h)
                _expect(wrong, f"{role} read {c}", r.status_code, 200 if c in READS[role] else 403)
                body = {"events": [{"type": "Written", "data": {}}]}
                r = await client.post(f"{s.base}/streams/{c}-by_{role}", json=body, headers=h)
                _expect(wrong, f"{role} append {c}", r.status_code,
                        201 if c in APPENDS[role] else 403)  # fmt: skip
                r = await client.get(f"{s.base}/events", params={"categories": c}, headers=h)
                _expect(wrong, f"{role} log of {c}", r.status_code,
                        200 if c in READS[role] else 403)  # fmt: skip
                r = await client.get(f"{s.base}/streams", params={"category": c}, headers=h)
                listed = [x["stream_id"] for x in r.json()["streams"]]
                _expect(wrong, f"{role} listing of {c}", bool(listed), c in READS[role])
            r = await client.get(f"{s.base}/streams", params={"limit": 1000}, headers=h)
            listed = [x["stream_id"] for x in r.json()["streams"]]
            _expect(wrong, f"{role} listing", _categories(listed), set(READS[role]))
            events = await _all_events(client, s, role)
            _expect(wrong, f"{role} global log", _categories([e["stream_id"] for e in events]),
                    set(READS[role]))  # fmt: skip
            r = await client.get(f"{s.base}/correlations/{CORRELATION}", headers=h)
            traced = _trace_streams(r.json()["roots"])
            _expect(wrong, f"{role} trace", _categories(traced), set(READS[role]))
            _expect(wrong, f"{role} trace count", r.json()["events"], len(traced))
            operator = role in OPERATORS
            for path in ("/dead-letters", "/projections", "/stats", "/snapshots", "/sagas"):
                r = await client.get(f"{s.base}{path}", headers=h)
                _expect(wrong, f"{role} {path}", r.status_code, 200 if operator else 403)
            if operator:
                r = await client.get(f"{s.base}/dead-letters", headers=h)
                shown = {d["stream_id"] for d in r.json()["dead_letters"]}
                _expect(wrong, f"{role} dead letters", _categories(list(shown)),
                        {"secret", "public"} & READS[role])  # fmt: skip
                stats = (await client.get(f"{s.base}/stats", headers=h)).json()
                _expect(wrong, f"{role} stats categories", set(stats["categories"]),
                        set(READS[role]))  # fmt: skip
            r = await client.post(f"{s.base}/projections/p/pause", headers=h)
            _expect(wrong, f"{role} pause", r.status_code == 403, not operator)
    return wrong


async def test_unauthenticated_and_public(tmp_path: Path) -> None:
    async with secured(tmp_path) as s, httpx.AsyncClient() as client:
        for method, path in [("GET", "/streams/orders-1"), ("GET", "/streams"),
                             ("GET", "/events"), ("POST", "/streams/orders-1"),
                             ("GET", "/dead-letters"), ("GET", "/live/events"),
                             ("GET", "/stats"), ("GET", "/no/such/path")]:  # fmt: skip
            r = await client.request(method, s.base + path)
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["error"]["type"] == "AuthenticationFailed"
            bad = {"Authorization": "Bearer chronik_000000000000_" + "x" * 43}
            r = await client.request(method, s.base + path, headers=bad)
            assert r.status_code == 401, (method, path)
        for path in ("/openapi.json", "/health", "/console/login"):
            assert (await client.get(s.base + path)).status_code == 200, path
        doc = (await client.get(s.base + "/openapi.json")).json()
        append = doc["paths"]["/streams/{stream_id}"]["post"]["responses"]
        assert {"401", "403", "429"} <= set(append)
        assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert doc["paths"]["/health"]["get"]["security"] == []


async def test_sse_matrix(tmp_path: Path, store_url: str | None) -> None:
    wrong: list[str] = []
    async with secured(tmp_path, url=store_url) as s, httpx.AsyncClient(timeout=10) as client:
        for role in ROLES:
            h = s.headers(role)
            for c in CATEGORIES:
                allowed = c in READS[role]
                status, events = await sse_messages(
                    client, f"{s.base}/live/categories/{c}?after=0", h, "Seeded"
                )
                _expect(wrong, f"{role} SSE category {c}", status, 200 if allowed else 403)
                if allowed:
                    _expect(wrong, f"{role} SSE category {c} data",
                            _categories([e["stream_id"] for e in events]), {c})  # fmt: skip
                status, _ = await sse_messages(
                    client, f"{s.base}/live/streams/{c}-1?after=0", h, "Seeded"
                )
                _expect(wrong, f"{role} SSE stream {c}", status, 200 if allowed else 403)
                status, _ = await sse_messages(
                    client, f"{s.base}/live/events?after=0&categories={c}", h, "Seeded"
                )
                _expect(wrong, f"{role} SSE log of {c}", status, 200 if allowed else 403)
            if "public" in READS[role]:  # the log ends with public-last: read up to it
                status, events = await sse_messages(
                    client, f"{s.base}/live/events?after=0", h, "Sentinel"
                )
                _expect(
                    wrong,
                    f"{role} SSE global log",
                    _categories([e["stream_id"] for e in events]),
                    set(READS[role]),
                )
            async with client.stream("GET", f"{s.base}/live/projections", headers=h) as r:
                _expect(wrong, f"{role} SSE projections", r.status_code,
                        200 if role in OPERATORS else 403)  # fmt: skip
        status, _ = await sse_messages(client, f"{s.base}/live/events?after=0", {}, "Sentinel")
        _expect(wrong, "anonymous SSE", status, 401)
    assert not wrong, "\n".join(wrong)


async def _ws_first(
    url: str, headers: dict[str, str], subscribe: dict[str, Any], until: str = "Seeded"
) -> tuple[str, list[dict[str, Any]]]:
    """``("error", [body])`` or ``("event", events up to a ``until`` event)``."""
    events: list[dict[str, Any]] = []
    ws = await ws_connect(url, additional_headers=headers)
    try:
        with contextlib.suppress(ConnectionClosed):  # refused at once: the error is queued
            await ws.send(json.dumps(subscribe))
        while True:
            message = json.loads(await ws.recv())
            if message["kind"] == "error":
                return "error", [message["data"]]
            if message["kind"] == "event":
                events.append(message["data"])
                if message["data"]["type"] == until:
                    return "event", events
    finally:
        with contextlib.suppress(ConnectionClosed):  # a refusal closes with 1008
            await ws.close()


async def test_websocket_matrix(tmp_path: Path) -> None:
    wrong: list[str] = []
    async with secured(tmp_path) as s:
        url = s.base.replace("http", "ws") + "/live/ws"
        for role in ROLES:
            h = s.headers(role)
            for c in CATEGORIES:
                allowed = c in READS[role]
                for sub in (
                    {"subscribe": "category", "category": c, "after": "0"},
                    {"subscribe": "stream", "stream_id": f"{c}-1", "after": "0"},
                    {"subscribe": "events", "categories": [c], "after": "0"},
                ):
                    kind, got = await _ws_first(url, h, sub)
                    _expect(wrong, f"{role} WS {sub['subscribe']} {c}", kind,
                            "event" if allowed else "error")  # fmt: skip
                    if kind == "error":
                        _expect(wrong, f"{role} WS {c} error", got[0]["error"]["type"],
                                "AccessDenied")  # fmt: skip
            if "public" in READS[role]:
                kind, got = await _ws_first(url, h, {"subscribe": "events", "after": "0"},
                                            "Sentinel")  # fmt: skip
                _expect(wrong, f"{role} WS global", _categories([e["stream_id"] for e in got]),
                        set(READS[role]))  # fmt: skip
        kind, got = await _ws_first(url, {}, {"subscribe": "events", "after": "0"})
        _expect(wrong, "anonymous WS", (kind, got[0]["error"]["type"]),
                ("error", "AuthenticationFailed"))  # fmt: skip
    assert not wrong, "\n".join(wrong)


async def test_console_matrix(tmp_path: Path) -> None:
    wrong: list[str] = []
    async with secured(tmp_path) as s:
        for role in ROLES:
            cookies = {"chronik_token": s.tokens[role]}
            async with httpx.AsyncClient(cookies=cookies) as client:
                for page in ("/console/", "/console/streams", "/console/dead-letters"):
                    r = await client.get(s.base + page)
                    _expect(wrong, f"{role} console {page}", r.status_code,
                            200 if READS[role] == ALL else 403)  # fmt: skip
                r = await client.post(s.base + "/console/projections/pause",
                                      data={"name": "p", "csrf": "x"})  # fmt: skip
                forbidden = READS[role] != ALL or role not in OPERATORS
                denied = r.status_code == 403 and "AccessDenied" in r.text  # not the CSRF check
                _expect(wrong, f"{role} console form denied by the policy", denied, forbidden)
        async with httpx.AsyncClient() as client:
            r = await client.get(s.base + "/console/streams", headers={"Accept": "text/html"})
            _expect(wrong, "anonymous console", (r.status_code, r.headers.get("location")),
                    (303, "/console/login?next=/console/streams"))  # fmt: skip
    assert not wrong, "\n".join(wrong)
