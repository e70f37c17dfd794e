"""The console's pages: one handler each, reading through the library and rendering a
template. Every form posts through :class:`~chronik.server.console.render.Csrf`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from chronik.app import App
from chronik.errors import (
    ChronikError,
    MissingCapability,
    StoreUnavailable,
    StreamNotFound,
    UnknownProjection,
)
from chronik.events import RecordedEvent
from chronik.scaleout.status import workers_status
from chronik.server.console.data import (
    Monitor,
    RebuildJob,
    find_events,
    find_streams,
    position_at,
)
from chronik.server.console.render import Csrf, Renderer
from chronik.server.console.sagas import (
    saga_counts,
    saga_deadlines,
    saga_detail,
    saga_instances,
)
from chronik.store.protocol import EventStore

__all__ = ["Console"]

logger = logging.getLogger("chronik.server.console")

Handler = Callable[[Request], Awaitable[Response]]

NOTICES = {
    "retried": "Retried: {fixed} fixed, {failing} still failing.",
    "skipped": "Dead letter {id} skipped (deleted; the event stays in the log).",
    "rebuild": "Rebuild of {name} started: its progress shows below.",
    "paused": "{name} paused: its runners, in every process, hold after the batch in flight.",
    "resumed": "{name} resumed: its runners go on from its checkpoint.",
    "not_paused": "{name} was not paused.",
}


class BadRequest(ValueError):
    """A query or form value the console cannot use (400)."""


class NotFound(LookupError):
    """Nothing there (404), with what to do about it."""


def _int(request: Request, name: str, default: int | None = None, minimum: int = 0) -> int | None:
    text = request.query_params.get(name, "").strip()
    if not text:
        return default
    if not text.lstrip("-").isdigit() or len(text) > 19 or int(text) < minimum:
        raise BadRequest(f"{name} must be a whole number ≥ {minimum}, not {text!r}")
    return int(text)


def _time(text: str, name: str) -> datetime | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"{name}: {text!r} is not a time (write 2026-05-01T12:30)") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Console:
    """The pages over one store (and, when given, the application's registry, deciders,
    projections and sagas)."""

    def __init__(self, store: EventStore, app: App | None) -> None:
        self.store = store
        self.app = app
        self.monitor = Monitor(store, app)
        self.csrf = Csrf()
        self.renderer = Renderer({"csrf_token": self.csrf.token, "has_app": app is not None})
        self._tasks: set[asyncio.Task[None]] = set()

    def handler(self, body: Handler) -> Handler:
        """``body`` with every error shown as a page (never a traceback)."""

        async def handle(request: Request) -> Response:
            try:
                return await body(request)
            except (BadRequest, ValueError) as exc:
                return self._error(request, 400, "That request cannot be answered", str(exc))
            except PermissionError as exc:
                return self._error(request, 403, "Refused", str(exc))
            except (NotFound, StreamNotFound, UnknownProjection) as exc:
                return self._error(request, 404, "Not found", str(exc))
            except StoreUnavailable as exc:
                return self._error(request, 503, "The store is not reachable", str(exc))
            except ChronikError as exc:
                return self._error(request, 400, type(exc).__name__, str(exc))
            except Exception:
                logger.exception("console page %s failed", request.url.path)
                return self._error(request, 500, "Internal error",
                                   "The page failed; the server logged why.")  # fmt: skip

        return handle

    def _error(self, request: Request, status: int, title: str, message: str) -> Response:
        try:
            return self.renderer.page(
                request, "error.html", http_status=status, title=title, message=message, code=status
            )
        except Exception:  # the error page itself failed: say it plainly
            logger.exception("console error page failed")
            return PlainTextResponse(f"{status} {title}: {message}", status)

    def _notice(self, request: Request) -> str | None:
        key = request.query_params.get("notice")
        if key not in NOTICES:
            return None
        # only numbers and known names: a crafted link cannot make the console say anything
        params = {k: v if (v := request.query_params.get(k, "")).isdigit() and len(v) < 20
                  else "?" for k in ("fixed", "failing", "id")}  # fmt: skip
        name = request.query_params.get("name", "")
        params["name"] = name if self.monitor.projection(name) is not None else "?"
        return NOTICES[key].format(**params)

    # -- dashboard ----------------------------------------------------------------------------

    async def dashboard(self, request: Request) -> Response:
        board = await self.monitor.dashboard()
        return self.renderer.page(request, "dashboard.html", board=board, title="Dashboard")

    async def dashboard_fragment(self, request: Request) -> Response:
        board = await self.monitor.dashboard()
        return self.renderer.page(request, "_dashboard.html", board=board)

    # -- streams and events -------------------------------------------------------------------

    async def streams(self, request: Request) -> Response:
        q = request.query_params
        prefix = q.get("prefix", "").strip()
        type_ = q.get("type", "").strip()
        correlation = q.get("correlation_id", "").strip()
        since = _time(q.get("since", ""), "since")
        until = _time(q.get("until", ""), "until")
        after = _int(request, "after")
        streams = None
        events = None
        correlated: list[RecordedEvent] | None = None
        start = None
        if correlation:
            correlated = await self.store.read_correlation(correlation, limit=501)
            if prefix:
                correlated = [e for e in correlated if e.stream_id.startswith(prefix)]
            if type_:
                correlated = [e for e in correlated if e.type == type_]
        elif type_ or since or until or after is not None:
            if after is None:
                after = await position_at(self.store, since) if since else 0
            start = after
            events = await find_events(self.store, after=after, prefix=prefix,
                                       types=[type_] if type_ else None, until=until)  # fmt: skip
        else:
            streams = await find_streams(self.store, prefix)
        head = await self.store.head_position()
        return self.renderer.page(
            request, "streams.html", title="Streams", prefix=prefix, type_=type_,
            correlation=correlation, since=q.get("since", ""), until=q.get("until", ""),
            streams=streams, events=events, correlated=correlated, start=start, head=head,
        )  # fmt: skip

    async def stream(self, request: Request) -> Response:
        stream_id = request.query_params.get("stream_id", "")
        if not stream_id:
            raise BadRequest("name a stream: ?stream_id=...")
        current = await self.store.stream_version(stream_id)
        if current is None:
            raise NotFound(f"no stream {stream_id!r} (it has no events)")
        before = _int(request, "before", current)
        assert before is not None
        events = [
            e
            async for e in self.store.read_stream(
                stream_id, from_version=min(before, current), limit=50, backwards=True
            )
        ]
        older = events[-1].version - 1 if events and events[-1].version > 0 else None
        return self.renderer.page(
            request, "stream.html", title=stream_id, stream_id=stream_id, current=current,
            events=events, older=older, newest=before >= current,
        )  # fmt: skip

    async def _event(self, stream_id: str, version: int) -> RecordedEvent:
        async for event in self.store.read_stream(stream_id, from_version=version, limit=1):
            if event.version == version:
                return event
        raise NotFound(f"stream {stream_id!r} has no version {version}")

    async def event(self, request: Request) -> Response:
        stream_id = request.query_params.get("stream_id", "")
        version = _int(request, "version")
        if not stream_id or version is None:
            raise BadRequest("name an event: ?stream_id=...&version=N")
        event = await self._event(stream_id, version)
        upcast: list[RecordedEvent] | None = None
        upcast_error = None
        if self.app is not None:
            try:
                upcast = self.app.registry.upcast(event)
            except Exception as exc:  # the registry says why it cannot read it: show that
                upcast_error = f"{type(exc).__name__}: {exc}"
        current = await self.store.stream_version(stream_id)
        return self.renderer.page(
            request, "event.html", title=f"{stream_id} v{version}", event=event, upcast=upcast,
            upcast_error=upcast_error, unchanged=upcast is not None and upcast == [event],
            current=current,
        )  # fmt: skip

    async def time_travel(self, request: Request) -> Response:
        from chronik.debugging import replay

        stream_id = request.query_params.get("stream_id", "")
        if not stream_id:
            raise BadRequest("name a stream: ?stream_id=...")
        current = await self.store.stream_version(stream_id)
        if current is None:
            raise NotFound(f"no stream {stream_id!r} (it has no events)")
        context: dict[str, Any] = {"title": f"Time travel: {stream_id}", "stream_id": stream_id,
                                   "current": current, "hint": None, "replay": None}  # fmt: skip
        if self.app is None or not self.app.deciders:
            context["hint"] = "no-app"
            return self.renderer.page(request, "time_travel.html", **context)
        try:
            decider = self.app.decider_for(stream_id)
        except ChronikError as exc:
            context["hint"] = str(exc)
            return self.renderer.page(request, "time_travel.html", **context)
        selected = min(_int(request, "version", current) or 0, current)
        done = await replay(self.store, stream_id, decider, registry=self.app.registry)
        low, high = max(0, selected - 150), selected + 150
        steps = [s for s in done.steps if low <= s.event.version <= high]
        context.update(replay=done, steps=steps, selected=selected, window=(low, high))
        return self.renderer.page(request, "time_travel.html", **context)

    async def correlation(self, request: Request) -> Response:
        from chronik.debugging import trace

        correlation_id = request.query_params.get("correlation_id", "").strip()
        found = None
        items: list[tuple[Any, int, int, bool]] = []
        closing = 0
        if correlation_id:
            found = await trace(self.store, correlation_id, limit=2000)
            # the tree as nested lists, drawn without recursion (chains can be long): each
            # node says how many levels to close before it, or that it opens a level
            before = 0
            for node, depth in found.walk():
                items.append((node, depth, max(before - depth, 0), depth > before))
                before = depth
            closing = before + 1 if items else 0
        return self.renderer.page(
            request, "correlation.html", title="Correlation", correlation_id=correlation_id,
            trace=found, items=items, closing=closing,
        )  # fmt: skip

    # -- projections --------------------------------------------------------------------------

    async def projections(self, request: Request) -> Response:
        rows = await self.monitor.projection_rows()
        return self.renderer.page(request, "projections.html", title="Projections", rows=rows,
                                  notice=self._notice(request))  # fmt: skip

    async def projections_fragment(self, request: Request) -> Response:
        rows = await self.monitor.projection_rows()
        return self.renderer.page(request, "_projections.html", rows=rows)

    async def rebuild(self, request: Request) -> Response:
        from chronik.projections.runner import ProjectionRunner

        form = await self.csrf.form(request)
        name = form.get("name", "")
        projection = self.monitor.projection(name)
        if projection is None:
            raise NotFound(f"no projection {name!r} in the app (start with --app MODULE:OBJECT)")
        if form.get("confirm") != "yes":
            raise BadRequest("tick the box to confirm: a rebuild drops the read model first")
        job = self.monitor.jobs.get(name)
        if job is not None and job.running:
            raise BadRequest(f"a rebuild of {name!r} is running already")
        job = self.monitor.jobs[name] = RebuildJob(name)
        runner = ProjectionRunner(self.store, [projection])

        async def run() -> None:
            try:
                job.applied = await runner.rebuild(name, progress=job.report)
            except Exception as exc:
                logger.exception("console: rebuild of %s failed", name)
                job.error = f"{type(exc).__name__}: {exc}"
            finally:
                job.finished = time.time()

        task = asyncio.create_task(run(), name=f"console-rebuild-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return self._back(request, "/projections", notice="rebuild", name=name)

    async def pause(self, request: Request) -> Response:
        from chronik.projections.control import pause_projection

        form = await self.csrf.form(request)
        name = form.get("name", "")
        await pause_projection(self.store, name, by=form.get("by", "")[:500] or "console")
        return self._back(request, "/projections", notice="paused", name=name)

    async def resume(self, request: Request) -> Response:
        from chronik.projections.control import resume_projection

        form = await self.csrf.form(request)
        name = form.get("name", "")
        was = await resume_projection(self.store, name)
        return self._back(request, "/projections", notice="resumed" if was else "not_paused",
                          name=name)  # fmt: skip

    # -- dead letters -------------------------------------------------------------------------

    async def dead_letters(self, request: Request) -> Response:
        subscription = request.query_params.get("subscription", "")
        letters = await self.store.dead_letters(subscription or None)
        known = {p.checkpoint_name for p in self.monitor.projections}
        return self.renderer.page(
            request, "dead_letters.html", title="Dead letters", letters=letters,
            subscription=subscription, retryable=known, notice=self._notice(request),
        )  # fmt: skip

    async def _letter(self, letter_id: int | None) -> Any:
        letter = next((d for d in await self.store.dead_letters() if d.id == letter_id), None)
        if letter is None:
            raise NotFound(f"no dead letter {letter_id} (retried or skipped already?)")
        return letter

    async def dead_letter(self, request: Request) -> Response:
        letter = await self._letter(_int(request, "id"))
        try:
            event: RecordedEvent | None = await self._event(letter.stream_id, letter.version)
        except (NotFound, StreamNotFound):
            event = None
        known = {p.checkpoint_name for p in self.monitor.projections}
        return self.renderer.page(
            request, "dead_letter.html", title=f"Dead letter {letter.id}", letter=letter,
            event=event, retryable=letter.subscription in known,
        )  # fmt: skip

    async def retry(self, request: Request) -> Response:
        from chronik.projections.runner import ProjectionRunner

        form = await self.csrf.form(request)
        subscription = form.get("subscription", "")
        projection = next(
            (p for p in self.monitor.projections if p.checkpoint_name == subscription), None
        )
        if projection is None:
            raise BadRequest(
                f"retrying {subscription!r} needs its handler: only the projections of the app "
                "given with --app can be retried (saga dead letters cannot be retried yet)"
            )
        runner = ProjectionRunner(self.store, [projection])
        if form.get("id"):
            letter = await self._letter(int(form["id"]) if form["id"].isdigit() else None)
            event = await self._event(letter.stream_id, letter.version)
            follower = runner.follower(projection.name)
            try:
                await follower.applier.redo(event, letter.id)
                fixed, failing = 1, 0
            except StoreUnavailable:
                raise
            except Exception as exc:
                logger.warning("console: dead letter %d still fails: %s", letter.id, exc)
                fixed, failing = 0, 1
        else:
            fixed, failing = await runner.retry_dead_letters(projection.name)
        return self._back(request, "/dead-letters", notice="retried", fixed=fixed,
                          failing=failing)  # fmt: skip

    async def skip(self, request: Request) -> Response:
        form = await self.csrf.form(request)
        letter = await self._letter(int(form.get("id", "")) if form.get("id", "").isdigit()
                                    else None)  # fmt: skip
        async with self.store.transaction() as tx:
            await tx.delete_dead_letter(letter.id)
        return self._back(request, "/dead-letters", notice="skipped", id=letter.id)

    def _back(self, request: Request, path: str, **params: Any) -> Response:
        from urllib.parse import urlencode

        base = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{base}{path}?{urlencode(params)}", status_code=303)

    # -- sagas --------------------------------------------------------------------------------

    async def sagas(self, request: Request) -> Response:
        saga = request.query_params.get("saga", "")
        status = request.query_params.get("status", "")
        context: dict[str, Any] = {"title": "Sagas", "saga": saga, "status": status}
        counts = await saga_counts(self.store)
        if counts is None:
            return self.renderer.page(request, "sagas.html", counts=None, **context)
        context.update(
            counts=counts,
            instances=await saga_instances(self.store, saga=saga, status=status),
            deadlines=await saga_deadlines(self.store, limit=50),
        )
        return self.renderer.page(request, "sagas.html", **context)

    async def saga(self, request: Request) -> Response:
        saga = request.query_params.get("saga", "")
        key = request.query_params.get("key", "")
        try:
            detail = await saga_detail(self.store, self.app, saga, key)
        except MissingCapability:
            raise NotFound("this store keeps no sagas (they need SQLite or PostgreSQL)") from None
        if detail is None:
            raise NotFound(f"no instance {key!r} of saga {saga!r}")
        return self.renderer.page(request, "saga.html", title=f"Saga {saga} {key}",
                                  detail=detail)  # fmt: skip

    async def workers(self, request: Request) -> Response:
        """Partitioned worker groups: owner, epoch, lag and last rebalance per partition."""
        try:
            groups = await workers_status(self.store)
        except MissingCapability:
            groups = None
        return self.renderer.page(request, "workers.html", title="Workers", groups=groups)

    async def not_found(self, request: Request) -> Response:
        return self._error(request, 404, "No such page", f"{request.url.path} is not a page "
                           "of the console.")  # fmt: skip
