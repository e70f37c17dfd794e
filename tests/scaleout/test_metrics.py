"""The lease-owner metrics (ops/metrics.py): owner, epoch and lag per partition."""

from __future__ import annotations

import pytest

import chronik
from chronik.ops.metrics import StoreMetrics
from chronik.scaleout import Leases


def _samples(text: str, name: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line.rpartition(" ")
            out[labels[len(name) :]] = float(value)
    return out


@pytest.mark.postgres
async def test_owner_and_epoch_per_partition_follow_a_takeover(pg_url: str) -> None:
    async with await chronik.connect(pg_url) as store:
        a = Leases(store, "projection:metrics:v1", 2, member="a", ttl=30)
        b = Leases(store, "projection:metrics:v1", 2, member="b", ttl=30)
        await a.join()
        await b.join()
        ea = await a.acquire(0)
        assert ea is not None
        metrics = StoreMetrics(store)
        await metrics.refresh()
        text = (await metrics.exposition()).decode()
        owners = _samples(text, "chronik_worker_partition_owner")
        assert owners == {
            '{group="projection:metrics:v1",owner="a",partition="0of2"}': 1.0,
            '{group="projection:metrics:v1",owner="",partition="1of2"}': 1.0,
        }
        assert _samples(text, "chronik_worker_members") == {'{group="projection:metrics:v1"}': 2.0}
        await a.release(0, ea)
        eb = await b.acquire(0)
        assert eb is not None and eb > ea
        await metrics.refresh()
        text = (await metrics.exposition()).decode()
        assert '{group="projection:metrics:v1",owner="b",partition="0of2"}' in _samples(
            text, "chronik_worker_partition_owner"
        )
        epochs = _samples(text, "chronik_worker_partition_epoch")
        assert epochs['{group="projection:metrics:v1",partition="0of2"}'] == eb
