"""``chronik serve``: the HTTP API (and the console, where installed) over one store."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from chronik.cli._common import Output, at_least, require_extra
from chronik.errors import ChronikError
from chronik.store import connect, redact_url, store_url

__all__ = ["register"]


async def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    require_extra("starlette", "chronik serve", "starlette", "server")
    require_extra("uvicorn", "chronik serve", "uvicorn", "server")
    require_extra("jinja2", "chronik serve", "jinja2", "server")
    import uvicorn

    from chronik.app import load_app
    from chronik.server import create_app_for_url

    url = store_url(getattr(args, "store", None))
    app = load_app(args.app) if args.app else None
    # the store must be there (`chronik init` creates one): a typo in the URL must not
    # serve an empty store; checked now, so the error is one line before the server starts
    async with await connect(url, create=False):
        pass
    stopping = asyncio.Event()  # set on SIGINT/SIGTERM: live streams end at once
    web = create_app_for_url(
        url, app=app, max_body_bytes=args.max_body_bytes, create=False, stopping=stopping
    )
    config = uvicorn.Config(
        web,
        host=args.host,
        port=args.port,
        log_level="warning" if out.as_json else "info",
        lifespan="on",
        access_log=args.access_log,
        # live clients (SSE, WebSocket) never end their requests: after this long the
        # stop closes them; EventSource clients reconnect with their Last-Event-ID
        timeout_graceful_shutdown=5,
    )
    server = _server_class(stopping)(config)
    out.say(f"serving {redact_url(url)} on http://{args.host}:{args.port} (Ctrl-C stops)")
    try:
        await server.serve()
    except OSError as exc:  # the port is taken, the host is not ours
        raise ChronikError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
    if not server.started:
        raise ChronikError(f"the server did not start on {args.host}:{args.port} (see above)")
    return 0


def _server_class(stopping: asyncio.Event) -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, stopped by SIGINT/SIGTERM as a normal end (exit 0): uvicorn
        itself re-raises the signal after its graceful shutdown, which would exit 130."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            loop = asyncio.get_running_loop()

            def stop() -> None:
                if self.should_exit:
                    self.force_exit = True  # a second Ctrl-C: do not wait for connections
                self.should_exit = True
                stopping.set()

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop)
            try:
                yield
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

    return Server


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="serve the HTTP API and the console (needs chronik[server])",
    )
    p.add_argument("--app", default=None, help="MODULE:OBJECT of a chronik.App (types, deciders)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=at_least(0), default=8000, help="port (default 8000)")
    p.add_argument(
        "--max-body-bytes",
        type=at_least(1),
        default=4 * 1024 * 1024,
        help="largest request body; 413 above it (default 4 MiB)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(standalone=cmd_serve)
