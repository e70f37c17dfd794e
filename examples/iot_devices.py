"""The seed's IoT platform: every device's state is snapshotted hourly, off the request path.

Devices report readings all the time; their streams grow forever. A background
:class:`~chronik.snapshots.Snapshotter` follows the store and, at most once an hour per
device (``Periodic(timedelta(hours=1))``), snapshots the state at the last committed event
it read. Loading a device then folds only the readings since its last snapshot.

This script simulates three hours of readings with a simulated clock, so it runs in a
second. In production the snapshotter runs in its own process::

    python examples/iot_devices.py --store sqlite:///iot.db
    chronik --store sqlite:///iot.db snapshots run examples.iot_devices:app
    chronik --store sqlite:///iot.db snapshots stats
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

import chronik
from chronik.snapshots import Periodic, SnapshotConfig, Snapshotter, snapshot_store

registry = chronik.EventRegistry()


# -- events -------------------------------------------------------------------------------
@registry.event("DeviceRegistered", version=1)
@dataclass(frozen=True)
class DeviceRegistered:
    model: str
    site: str


@registry.event("ReadingRecorded", version=1)
@dataclass(frozen=True)
class ReadingRecorded:
    temperature: float
    battery: int
    at: int
    """Unix time of the reading, as the device measured it."""


# -- commands -----------------------------------------------------------------------------
@dataclass(frozen=True)
class RegisterDevice:
    model: str
    site: str


@dataclass(frozen=True)
class RecordReading:
    temperature: float
    battery: int
    at: int


# -- state --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    registered: bool = False
    model: str = ""
    site: str = ""
    readings: int = 0
    last_temperature: float | None = None
    min_temperature: float | None = None
    max_temperature: float | None = None
    battery: int = 100
    last_seen: int = 0


def evolve(state: Device, event: object) -> Device:
    if isinstance(event, ReadingRecorded):
        t = event.temperature
        return replace(
            state,
            readings=state.readings + 1,
            last_temperature=t,
            min_temperature=t if state.min_temperature is None else min(state.min_temperature, t),
            max_temperature=t if state.max_temperature is None else max(state.max_temperature, t),
            battery=event.battery,
            last_seen=event.at,
        )
    if isinstance(event, DeviceRegistered):
        return replace(state, registered=True, model=event.model, site=event.site)
    return state


def decide(command: object, state: Device) -> list[object]:
    if isinstance(command, RegisterDevice):
        return [] if state.registered else [DeviceRegistered(command.model, command.site)]
    if isinstance(command, RecordReading):
        if not state.registered:
            raise ValueError("unknown device")
        return [ReadingRecorded(command.temperature, command.battery, command.at)]
    raise TypeError(f"unknown command {command!r}")


device_decider: chronik.Decider[object, object, Device] = chronik.Decider(
    decide=decide, evolve=evolve, initial_state=Device
)


def device_snapshots(clock: Callable[[], float] = time.time) -> SnapshotConfig:
    """Hourly, taken by the background snapshotter only (``inline=False``)."""
    return SnapshotConfig(
        Device, policy=Periodic(timedelta(hours=1)), inline=False, keep=2, clock=clock
    )


app = chronik.App(
    registry=registry,
    deciders={"device": device_decider},
    extras={"snapshots": {"device": device_snapshots()}},
)
"""What ``chronik snapshots run examples.iot_devices:app`` runs."""


class SimulatedClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


async def run(
    url: str, say: Any = print, *, devices: int = 3, hours: int = 3, every_minutes: int = 5
) -> dict[str, Any]:
    clock = SimulatedClock(1_700_000_000.0)
    snapshots = device_snapshots(clock)
    async with await chronik.connect(url) as store:
        handler = chronik.CommandHandler(
            store, device_decider, registry=registry, snapshots=snapshots
        )
        snapshotter = Snapshotter(store, {"device": (device_decider, snapshots)}, registry=registry)
        ids = [f"device-{n}" for n in range(1, devices + 1)]
        for n, stream_id in enumerate(ids):
            await handler.handle(stream_id, RegisterDevice("thermo-2", f"site-{n % 2}"))
        for minute in range(0, hours * 60, every_minutes):
            clock.now += every_minutes * 60
            for n, stream_id in enumerate(ids):
                temperature = round(20 + n + (minute % 37) / 10, 1)
                battery = 100 - minute // 30
                await handler.handle(stream_id, RecordReading(temperature, battery, int(clock.now)))
            await snapshotter.catch_up()  # in production: snapshotter.start(), once
        say(f"{snapshotter.taken} hourly snapshots over {hours} simulated hours")
        result: dict[str, Any] = {"snapshots": snapshotter.taken}
        for stream_id in ids:
            loaded = await handler.load(stream_id)
            full = await chronik.load_state(
                store, stream_id, evolve, Device, registry=registry
            )  # no snapshots: every event
            assert loaded.state == full.state and loaded.version == full.version
            start = loaded.snapshot_version
            folded = loaded.version - (start if start is not None else -1)
            say(
                f"{stream_id}: version {loaded.version}, loaded from the snapshot at version "
                f"{start} + {folded} events; same state as a full replay "
                f"({loaded.state.readings} readings, last {loaded.state.last_temperature} °C)"
            )
            result[stream_id] = {"version": loaded.version, "snapshot_version": start}
        stats = await snapshot_store(store).stats()
        for s in stats:
            say(f"category {s.category}: {s.snapshots} snapshots kept, {s.bytes} bytes")
        return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="sqlite:///iot.db")
    args = parser.parse_args(argv)
    asyncio.run(run(args.store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
