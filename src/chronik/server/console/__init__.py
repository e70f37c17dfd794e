"""The web console of ``chronik serve``: server-rendered pages under ``/console/``.

Pages (see docs/http.md, "Console"): the dashboard (head, append rate, projection lag with
ETA, dead letters, sagas; live), the stream browser (by stream prefix, type, correlation id,
time), a stream, an event (stored and upcast), time travel over a stream's versions (needs
``--app``), a correlation's causal tree, projections (lag, rebuild with progress), dead
letters (inspect, retry, skip), sagas (state, deadlines, compensations) and partitioned
workers (owner, epoch, lag and last rebalance per partition).

Every value is escaped (Jinja2 autoescaping); every asset ships in the package; forms
are guarded by a same-origin check and a token. The live parts listen to the server's
``/live/events`` stream and poll when it is not there.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from chronik.app import App
from chronik.server.console.pages import Console
from chronik.store.protocol import EventStore

__all__ = ["console_routes"]


def console_routes(store: EventStore, app: App | None = None) -> list[BaseRoute]:
    """The console's routes, mounted at ``/console``, over ``store`` (and ``app``'s
    registry, deciders, projections and ``extras["sagas"]`` where given)."""
    console = Console(store, app)
    h = console.handler
    pages: list[BaseRoute] = [
        Route("/", h(console.dashboard), methods=["GET"], name="dashboard"),
        Route("/fragments/dashboard", h(console.dashboard_fragment), methods=["GET"]),
        Route("/streams", h(console.streams), methods=["GET"], name="streams"),
        Route("/stream", h(console.stream), methods=["GET"], name="stream"),
        Route("/event", h(console.event), methods=["GET"], name="event"),
        Route("/time-travel", h(console.time_travel), methods=["GET"], name="time_travel"),
        Route("/correlation", h(console.correlation), methods=["GET"], name="correlation"),
        Route("/projections", h(console.projections), methods=["GET"], name="projections"),
        Route("/fragments/projections", h(console.projections_fragment), methods=["GET"]),
        Route("/projections/rebuild", h(console.rebuild), methods=["POST"]),
        Route("/projections/pause", h(console.pause), methods=["POST"]),
        Route("/projections/resume", h(console.resume), methods=["POST"]),
        Route("/dead-letters", h(console.dead_letters), methods=["GET"], name="dead_letters"),
        Route("/dead-letter", h(console.dead_letter), methods=["GET"], name="dead_letter"),
        Route("/dead-letters/retry", h(console.retry), methods=["POST"]),
        Route("/dead-letters/skip", h(console.skip), methods=["POST"]),
        Route("/sagas", h(console.sagas), methods=["GET"], name="sagas"),
        Route("/saga", h(console.saga), methods=["GET"], name="saga"),
        Route("/workers", h(console.workers), methods=["GET"], name="workers"),
        Mount("/static", StaticFiles(packages=[("chronik.server.console", "static")])),
        Route("/{rest:path}", h(console.not_found)),
    ]

    async def to_console(request: Request) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/console/", 308)

    return [Route("/console", to_console), Mount("/console", routes=pages)]
