"""The operators' endpoints: projections and their lag, dead letters (list, retry, skip),
saga instances, snapshot statistics and ``chronik check``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec

from chronik.app import App
from chronik.errors import AccessDenied
from chronik.events import category_of
from chronik.security import CategoryFilter, Operation
from chronik.server.routing import ApiError, Call, Endpoint, Reply, access_of
from chronik.store.capabilities import require
from chronik.store.port import SqlStore
from chronik.store.protocol import EventStore

__all__ = ["Operations"]


class ProjectionOut(msgspec.Struct):
    name: str
    checkpoint: str
    """The stored checkpoint (``name:vN``) and the position it has applied."""
    checkpoint_name: str
    version: int | None = None
    kind: str | None = None
    """Known only with ``--app`` (the projection's code); else only the checkpoint."""
    head: str | None = None
    lag_events: int | None = None
    lag_seconds: float | None = None
    dead_letters: int = 0
    paused_at: datetime | None = None
    """Set while an operator has paused it (its runners, anywhere, hold)."""
    paused_by: str | None = None


class ProjectionList(msgspec.Struct):
    projections: list[ProjectionOut]


class PauseQuery(msgspec.Struct, forbid_unknown_fields=True):
    by: Annotated[str, msgspec.Meta(max_length=500)] = ""
    """Who or why, kept with the pause and shown in statuses."""


class PauseOut(msgspec.Struct):
    name: str
    paused: bool
    paused_at: datetime | None = None
    paused_by: str | None = None
    was_paused: bool | None = None
    """On resume: whether it was paused."""


class DeadLettersQuery(msgspec.Struct, forbid_unknown_fields=True):
    subscription: str | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class DeadLetterOut(msgspec.Struct):
    id: int
    subscription: str
    position: str
    event_id: str
    stream_id: str
    version: int
    type: str
    error: str
    attempts: int
    created_at: str


class DeadLetterList(msgspec.Struct):
    dead_letters: list[DeadLetterOut]
    total: int


class RetryOut(msgspec.Struct):
    fixed: int
    still_failing: int


class SagaCount(msgspec.Struct):
    saga: str
    status: str
    count: int


class SagaSummary(msgspec.Struct):
    instances: list[SagaCount]
    commands: list[SagaCount]
    deadlines: dict[str, int]


class SnapshotCategory(msgspec.Struct):
    category: str
    snapshots: int
    streams: int
    bytes: int
    oldest: datetime | None
    newest: datetime | None


class SnapshotSummary(msgspec.Struct):
    categories: list[SnapshotCategory]


class CheckQuery(msgspec.Struct, forbid_unknown_fields=True):
    decode: bool = False
    """Also decode (and upcast) every event of a registered type (slow on a big store)."""


class CheckOut(msgspec.Struct):
    ok: bool
    events: int
    streams: int
    summary: dict[str, int]
    skipped: dict[str, str]
    problems: list[dict[str, Any]]


class Operations:
    """Operators' endpoints over one store (and the app's projections, where given)."""

    def __init__(self, store: EventStore, app: App | None) -> None:
        self.store = store
        self.app = app

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/projections", self.projections,
                     "Projections: checkpoint, lag, dead letters", {200: ProjectionList},
                     tag="projections"),
            Endpoint("POST", "/projections/{name}/pause", self.pause,
                     "Pause a projection in every process that runs it (after the batch in "
                     "flight)", {200: PauseOut}, query=PauseQuery, errors=(400, 404, 501),
                     tag="projections"),
            Endpoint("POST", "/projections/{name}/resume", self.resume,
                     "Resume a paused projection", {200: PauseOut}, errors=(400, 404, 501),
                     tag="projections"),
            Endpoint("GET", "/dead-letters", self.dead_letters,
                     "Events a worker gave up on", {200: DeadLetterList},
                     query=DeadLettersQuery, tag="projections"),
            Endpoint("POST", "/projections/{name}/dead-letters/retry", self.retry,
                     "Run a projection's dead letters through its handlers again (needs --app)",
                     {200: RetryOut}, errors=(400, 404, 422), tag="projections"),
            Endpoint("DELETE", "/dead-letters/{id:int}", self.skip,
                     "Skip a dead letter: delete it (the event stays in the log)",
                     {204: None}, errors=(400, 404), tag="projections"),
            Endpoint("GET", "/sagas", self.sagas, "Saga instances and commands by status",
                     {200: SagaSummary}, errors=(400, 501), tag="sagas"),
            Endpoint("GET", "/snapshots", self.snapshots, "Snapshots per category",
                     {200: SnapshotSummary}, tag="operations"),
            Endpoint("GET", "/check", self.check, "Run `chronik check` (read-only)",
                     {200: CheckOut}, query=CheckQuery, tag="operations"),
        ]  # fmt: skip

    @staticmethod
    def _operator(call: Call[Any, Any]) -> CategoryFilter:
        """Every operators' endpoint acts on the whole store: ``operate`` on ``*``; what
        it shows is limited to the categories the principal may read."""
        access = access_of(call.request)
        access.authorize(Operation.OPERATE, None)
        return access.readable()

    def _projection(self, name: str) -> Any:
        for p in self.app.projections if self.app is not None else ():
            if p.name == name:
                return p
        if self.app is None:
            raise ApiError(422, "NoApp", "this needs the projection's code: start the "
                           "server with --app MODULE:OBJECT")  # fmt: skip
        raise ApiError(404, "ProjectionNotFound", f"no projection {name!r} in --app")

    async def projections(self, call: Call[None, None]) -> ProjectionList:
        from chronik.projections.control import paused_projections
        from chronik.projections.status import projection_status

        readable = self._operator(call)
        out: list[ProjectionOut] = []
        checkpoints = await self.store.checkpoints()
        paused = await paused_projections(self.store)
        seen: set[str] = set()
        for p in self.app.projections if self.app is not None else ():
            s = await projection_status(self.store, p, None)
            seen.add(p.checkpoint_name)
            dead = s.dead_letters
            if not readable.everything:  # count only the dead letters it may see
                dead = sum(
                    1 for d in await self.store.dead_letters(p.checkpoint_name)
                    if readable(category_of(d.stream_id))
                )  # fmt: skip
            out.append(ProjectionOut(s.name, str(s.checkpoint), p.checkpoint_name, s.version,
                                     s.kind, str(s.head), s.lag_events,
                                     round(s.lag_seconds, 3), dead))  # fmt: skip
        letters = [
            d for d in await self.store.dead_letters() if readable(category_of(d.stream_id))
        ]  # fmt: skip
        for checkpoint_name, position in sorted(checkpoints.items()):
            if checkpoint_name in seen:
                continue
            name, _, version = checkpoint_name.partition(":v")
            count = sum(1 for d in letters if d.subscription == checkpoint_name)
            out.append(ProjectionOut(name, str(position), checkpoint_name,
                                     int(version) if version.isdigit() else None,
                                     dead_letters=count))  # fmt: skip
        for item in out:
            if item.name in paused:
                item.paused_at = paused[item.name].paused_at
                item.paused_by = paused[item.name].by
        return ProjectionList(out)

    async def pause(self, call: Call[PauseQuery, None]) -> PauseOut:
        from chronik.projections.control import pause_projection

        self._operator(call)
        done = await pause_projection(self.store, call.path["name"], by=call.query.by)
        return PauseOut(done.name, True, done.paused_at, done.by)

    async def resume(self, call: Call[None, None]) -> PauseOut:
        from chronik.projections.control import resume_projection

        self._operator(call)
        was = await resume_projection(self.store, call.path["name"])
        return PauseOut(call.path["name"], False, was_paused=was)

    async def dead_letters(self, call: Call[DeadLettersQuery, None]) -> DeadLetterList:
        readable = self._operator(call)
        q = call.query
        letters = [
            d for d in await self.store.dead_letters(q.subscription)
            if readable(category_of(d.stream_id))
        ]  # fmt: skip
        shown = [
            DeadLetterOut(d.id, d.subscription, str(d.position), str(d.event_id), d.stream_id,
                          d.version, d.type, d.error, d.attempts, str(d.created_at))
            for d in letters[: q.limit]
        ]  # fmt: skip
        return DeadLetterList(shown, len(letters))

    async def retry(self, call: Call[None, None]) -> RetryOut:
        from chronik.projections import ProjectionRunner

        self._operator(call)
        projection = self._projection(call.path["name"])
        runner = ProjectionRunner(self.store, [projection])
        fixed, failing = await runner.retry_dead_letters(projection.name)
        return RetryOut(fixed, failing)

    async def skip(self, call: Call[None, None]) -> Reply:
        readable = self._operator(call)
        letter_id = int(call.path["id"])
        letters = await self.store.dead_letters()
        if not any(d.id == letter_id and readable(category_of(d.stream_id)) for d in letters):
            raise ApiError(404, "DeadLetterNotFound", f"no dead letter {letter_id}")
        async with self.store.transaction() as tx:
            await tx.delete_dead_letter(letter_id)
        return Reply(None, 204)

    async def sagas(self, call: Call[None, None]) -> SagaSummary:
        from chronik.sagas.status import saga_counts

        readable = self._operator(call)
        counts = await saga_counts(require(self.store, SqlStore))

        def shown(saga: str) -> bool:  # a saga's instances are the category saga_<name>
            return readable(f"saga_{saga}")

        return SagaSummary(
            [SagaCount(*row) for row in counts.instances if shown(row[0])],
            [SagaCount(*row) for row in counts.commands if shown(row[0])],
            {k: v for k, v in counts.deadlines.items() if shown(k)},
        )

    async def snapshots(self, call: Call[None, None]) -> SnapshotSummary:
        from chronik.snapshots import snapshot_store

        readable = self._operator(call)
        stats = await snapshot_store(self.store).stats()
        return SnapshotSummary(
            [SnapshotCategory(s.category, s.snapshots, s.streams, s.bytes, s.oldest, s.newest)
             for s in stats if readable(s.category)]
        )  # fmt: skip

    async def check(self, call: Call[CheckQuery, None]) -> CheckOut:
        from chronik.integrity import check

        readable = self._operator(call)
        if not readable.everything:  # its report names streams of every category
            raise AccessDenied(access_of(call.request).principal.name, "read", None)
        registry = self.app.registry if self.app is not None else None
        report = await check(self.store, registry=registry, decode=call.query.decode)
        plain = report.to_dict()
        return CheckOut(plain["ok"], plain["events"], plain["streams"], plain["summary"],
                        plain["skipped"], plain["problems"])  # fmt: skip
