"""Crypto-shredding and the NATS outbox relay: what leaves the process.

A relay following the store itself publishes the stored bytes, so personal fields leave
encrypted and ``forget`` makes them unreadable downstream too. A relay following the
decrypting :class:`ShreddingStore` publishes plaintext that chronik cannot erase from
JetStream: the negative control shows the checker finds it (docs/security.md says so).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from chronik.nats import OutboxRelay, ensure_stream
from tests.conftest import NATS_URL
from tests.integration.conftest import js_stream
from tests.security.test_shredding import REG, CustomerRegistered, _open

__all__ = ["js_stream"]


async def _stream_bytes(js: Any, name: str) -> bytes:
    info = await js.stream_info(name)
    out = b""
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(name, seq)
        out += bytes(msg.data) + repr(msg.headers).encode()
    return out


@pytest.mark.nats
async def test_jetstream_holds_no_canary(js_stream: tuple[Any, str], tmp_path: Path) -> None:
    js, name = js_stream
    canary = "Canary" + uuid.uuid4().hex[:12]
    store = await _open(f"sqlite:///{tmp_path}/e.db")
    try:
        await store.append("customer-k", REG.to_new_events([
            CustomerRegistered("k", f"{canary}@x", canary, [canary])]))  # fmt: skip
        stored = OutboxRelay(store.inner, NATS_URL, name=name, stream=name, prefix=f"{name}.raw",
                             categories=["customer"])  # fmt: skip
        leak = f"{name}_L"  # its own stream: JetStream would drop the same event id
        await ensure_stream(js, leak, [f"{leak}.>"])
        leaky = OutboxRelay(store, NATS_URL, name=leak, stream=leak, prefix=leak,
                            categories=["customer"])  # fmt: skip
        assert await stored.run_once() == 1
        raw = await _stream_bytes(js, name)
        assert raw.count(canary.encode()) == 0 and b"chronik.pii" in raw
        assert await leaky.run_once() == 1  # negative control: a decrypting relay leaks
        assert (await _stream_bytes(js, leak)).count(canary.encode()) > 0
        await js.delete_stream(leak)
        await store.forget("k")
        msg = await js.get_msg(name, 1)  # the stored-bytes message: now undecryptable
        assert canary.encode() not in bytes(msg.data)
        await stored.close()
        await leaky.close()
    finally:
        await store.close()
