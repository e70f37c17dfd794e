"""The seed's gaming application: player profiles snapshotted periodically, and on demand.

Profiles are read far more often than they change (every lobby, leaderboard and match
screen shows one), so each load should fold few events. The profile handler snapshots
in the request path, at most once every ten minutes per player
(``Periodic(timedelta(minutes=10))``), and on demand: the season-end job calls
``take_snapshot`` for every player, and an operator can run::

    python examples/player_profiles.py --store sqlite:///games.db
    chronik --store sqlite:///games.db snapshots take player-ada \\
        --app examples.player_profiles:app
    chronik --store sqlite:///games.db snapshots list player-ada

The script simulates an evening of matches with a simulated clock, so it runs in a second.
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
from chronik.snapshots import Periodic, SnapshotConfig, snapshot_store

registry = chronik.EventRegistry()
XP_PER_LEVEL = 1000


# -- events -------------------------------------------------------------------------------
@registry.event("PlayerJoined", version=1)
@dataclass(frozen=True)
class PlayerJoined:
    name: str


@registry.event("MatchPlayed", version=1)
@dataclass(frozen=True)
class MatchPlayed:
    won: bool
    score: int
    xp: int


@registry.event("AchievementUnlocked", version=1)
@dataclass(frozen=True)
class AchievementUnlocked:
    achievement: str


# -- commands -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Join:
    name: str


@dataclass(frozen=True)
class RecordMatch:
    won: bool
    score: int


# -- state --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    name: str = ""
    xp: int = 0
    level: int = 1
    matches: int = 0
    wins: int = 0
    best_score: int = 0
    achievements: tuple[str, ...] = ()


def evolve(state: Profile, event: object) -> Profile:
    if isinstance(event, MatchPlayed):
        xp = state.xp + event.xp
        return replace(
            state,
            xp=xp,
            level=1 + xp // XP_PER_LEVEL,
            matches=state.matches + 1,
            wins=state.wins + int(event.won),
            best_score=max(state.best_score, event.score),
        )
    if isinstance(event, AchievementUnlocked):
        return replace(state, achievements=(*state.achievements, event.achievement))
    if isinstance(event, PlayerJoined):
        return replace(state, name=event.name)
    return state


def decide(command: object, state: Profile) -> list[object]:
    if isinstance(command, Join):
        return [] if state.name else [PlayerJoined(command.name)]
    if isinstance(command, RecordMatch):
        xp = command.score // 10 + (100 if command.won else 20)
        events: list[object] = [MatchPlayed(command.won, command.score, xp)]
        if command.won and state.wins + 1 == 10 and "ten wins" not in state.achievements:
            events.append(AchievementUnlocked("ten wins"))
        return events
    raise TypeError(f"unknown command {command!r}")


profile_decider: chronik.Decider[object, object, Profile] = chronik.Decider(
    decide=decide, evolve=evolve, initial_state=Profile
)


def profile_snapshots(clock: Callable[[], float] = time.time) -> SnapshotConfig:
    """At most one snapshot per player every ten minutes, in the request path."""
    return SnapshotConfig(Profile, policy=Periodic(timedelta(minutes=10)), keep=3, clock=clock)


app = chronik.App(
    registry=registry,
    deciders={"player": profile_decider},
    extras={"snapshots": {"player": profile_snapshots()}},
)
"""What ``chronik snapshots take player-ada --app examples.player_profiles:app`` uses."""


class SimulatedClock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


async def run(url: str, say: Any = print, *, matches: int = 40) -> dict[str, Any]:
    clock = SimulatedClock(1_700_000_000.0)
    async with await chronik.connect(url) as store:
        profiles = chronik.CommandHandler(
            store, profile_decider, registry=registry, snapshots=profile_snapshots(clock)
        )
        players = ["ada", "linus", "grace"]
        for name in players:
            await profiles.handle(f"player-{name}", Join(name.title()))
        for match in range(matches):
            clock.now += 150  # a match every two and a half minutes
            for n, name in enumerate(players):
                won = (match + n) % 3 != 0
                await profiles.handle(f"player-{name}", RecordMatch(won, 500 + 37 * match + n))
                for _ in range(3):  # lobby, leaderboard, match screen
                    await profiles.load(f"player-{name}")
        snaps = snapshot_store(store)
        periodic = len(await snaps.find("player-ada"))
        say(f"periodic: player-ada has {periodic} snapshots kept (at most one per 10 minutes)")
        clock.now += 3600
        for name in players:  # season end: snapshot everyone now
            await profiles.take_snapshot(f"player-{name}")
        loaded = await profiles.load("player-ada")
        full = await chronik.load_state(
            store, "player-ada", evolve, Profile, registry=registry
        )  # no snapshots
        assert loaded.state == full.state
        say(
            f"on demand: player-ada loaded from the snapshot at version {loaded.snapshot_version} "
            f"(version {loaded.version}): level {loaded.state.level}, "
            f"{loaded.state.wins}/{loaded.state.matches} wins, "
            f"achievements {list(loaded.state.achievements)}"
        )
        return {
            "version": loaded.version,
            "snapshot_version": loaded.snapshot_version,
            "level": loaded.state.level,
            "wins": loaded.state.wins,
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--store", default="sqlite:///games.db")
    args = parser.parse_args(argv)
    asyncio.run(run(args.store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
