"""Consumer groups over HTTP: create, list, info, receive under a lease, ack / nack by id,
delete; a late ack of a lease that ran out is ignored; hostile bodies answer 4xx with the
store unchanged; the policy: receiving needs read on every category the group covers,
create and delete need operate (expected answers written out by hand)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import chronik
from chronik.server import create_app
from tests.security.harness import secured


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, chronik.EventStore]]:
    async with await chronik.connect(f"sqlite:///{tmp_path}/groups.db") as store:
        for n in range(3):
            await store.append(f"order-{n}", [chronik.NewEvent("Placed", {"n": n})])
        await store.append("audit-1", [chronik.NewEvent("Seen", {})])
        transport = httpx.ASGITransport(app=create_app(store))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client, store


async def test_create_receive_ack_nack_delete(
    http: tuple[httpx.AsyncClient, chronik.EventStore],
) -> None:
    client, _store = http
    made = await client.post("/groups", json={"name": "mail", "categories": ["order"],
                                              "strategy": "pinned", "max_retries": 2,
                                              "message_timeout": 0.3})  # fmt: skip
    assert made.status_code == 201, made.text
    assert made.json()["categories"] == ["order"]
    again = await client.post("/groups", json={"name": "mail"})
    assert (again.status_code, again.json()["error"]["type"]) == (409, "GroupExists")
    assert [g["name"] for g in (await client.get("/groups")).json()["groups"]] == ["mail"]

    got = (await client.post("/groups/mail/receive", params={"member": "a", "limit": 10})).json()
    assert got["lease_seconds"] == 0.3
    assert [(m["stream_id"], m["attempts"]) for m in got["messages"]] == [
        ("order-0", 1), ("order-1", 1), ("order-2", 1),
    ]  # fmt: skip
    ids = [m["id"] for m in got["messages"]]
    acked = await client.post("/groups/mail/ack", json={"member": "a", "ids": ids[:1]})
    assert acked.json() == {"settled": 1}
    other = await client.post("/groups/mail/ack", json={"member": "b", "ids": ids[1:]})
    assert other.json() == {"settled": 0}  # b holds none of them
    parked = await client.post("/groups/mail/nack",
                               json={"member": "a", "ids": [ids[1]], "action": "park",
                                     "reason": "bounced"})  # fmt: skip
    assert parked.json() == {"settled": 1}
    await asyncio.sleep(0.4)  # the lease on ids[2] runs out: handed out again
    again_got = (await client.post("/groups/mail/receive", params={"member": "b"})).json()
    assert [(m["id"], m["attempts"]) for m in again_got["messages"]] == [(ids[2], 2)]
    late = await client.post("/groups/mail/ack", json={"member": "a", "ids": [ids[2]]})
    assert late.json() == {"settled": 0}  # a's lease ran out: b holds it now
    assert (await client.post("/groups/mail/ack", json={"member": "b", "ids": [ids[2]]})
            ).json() == {"settled": 1}  # fmt: skip
    info = (await client.get("/groups/mail")).json()
    assert (info["pending"], info["in_flight"], info["parked"]) == (0, 0, 1)
    assert (await client.delete("/groups/mail")).status_code == 204
    assert (await client.get("/groups/mail")).status_code == 404
    assert (await client.delete("/groups/mail")).status_code == 404
    assert (await client.post("/groups/mail/receive", params={"member": "a"})).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("POST", "/groups", {"json": {"name": ""}}),
        ("POST", "/groups", {"json": {"name": "a\x00b"}}),
        ("POST", "/groups", {"json": {"name": "x" * 10_000}}),
        ("POST", "/groups", {"json": {"name": "g", "max_retries": 0}}),
        ("POST", "/groups", {"json": {"name": "g", "message_timeout": 1e300}}),
        ("POST", "/groups", {"json": {"name": "g", "categories": "order"}}),
        ("POST", "/groups", {"json": {"name": "g", "categories": ["o"], "stream_id": "o-1"}}),
        ("POST", "/groups", {"json": {"name": "g", "strategy": "random"}}),
        (
            "POST",
            "/groups",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
        ),
        ("POST", "/groups/keep/receive", {"params": {"member": "\x00"}}),
        ("POST", "/groups/keep/receive", {"params": {"member": "a", "limit": 0}}),
        ("POST", "/groups/keep/ack", {"json": {"member": "a", "ids": [-1]}}),
        ("POST", "/groups/keep/ack", {"json": {"member": "a", "ids": [2**70]}}),
        ("POST", "/groups/keep/nack", {"json": {"member": "a", "ids": [1], "action": "eat"}}),
    ],
)
async def test_hostile_requests_are_4xx_and_change_nothing(
    http: tuple[httpx.AsyncClient, chronik.EventStore], method: str, path: str,
    kwargs: dict[str, Any],
) -> None:  # fmt: skip
    client, _store = http
    assert (await client.post("/groups", json={"name": "keep"})).status_code == 201
    before = (await client.get("/groups")).json()
    answer = await client.request(method, path, **kwargs)
    assert 400 <= answer.status_code < 500, answer.text
    assert "error" in answer.json()
    assert (await client.get("/groups")).json() == before


async def test_policy_read_on_covered_categories_and_operate(tmp_path: Path) -> None:
    async with secured(tmp_path) as s, httpx.AsyncClient(base_url=s.base) as client:
        for name, cats in (("o", ["orders"]), ("op", ["orders", "public"]), ("all", None)):
            made = await client.post("/groups", json={"name": name, "categories": cats},
                                     headers=s.headers("admin"))  # fmt: skip
            assert made.status_code == 201, made.text
        # create / delete need operate: admin and ops only
        for role, status in (("clerk", 403), ("reader", 403), ("ops", 201)):
            made = await client.post("/groups", json={"name": f"n-{role}"},
                                     headers=s.headers(role))  # fmt: skip
            assert made.status_code == status, (role, made.text)
        assert (await client.delete("/groups/n-ops", headers=s.headers("clerk"))).status_code == 403
        assert (await client.post("/groups", json={"name": "x"})).status_code == 401
        # receiving needs read on every covered category
        expected = {  # role -> the groups it may receive from (written out by hand)
            "admin": {"o", "op", "all"}, "reader": {"o", "op", "all"},
            "clerk": {"o", "op"}, "auditor": set(), "ops": set(), "nothing": set(),
        }  # fmt: skip
        for role, allowed in expected.items():
            for name in ("o", "op", "all"):
                got = await client.post(f"/groups/{name}/receive", params={"member": role},
                                        headers=s.headers(role))  # fmt: skip
                assert got.status_code == (200 if name in allowed else 403), (role, name)
            listed = await client.get("/groups", headers=s.headers(role))
            names = {g["name"] for g in listed.json()["groups"]} - {"n-ops"}
            assert names == allowed, role
