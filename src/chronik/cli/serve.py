"""``chronik serve``: the HTTP API (and the console, where installed) over one store."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import os
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from chronik.cli._common import Output, at_least, positive_float, require_extra
from chronik.errors import ChronikError
from chronik.store import connect, redact_url, store_url

if TYPE_CHECKING:
    from chronik.security import Policy

__all__ = ["register"]


async def cmd_serve(args: argparse.Namespace, out: Output) -> int:
    kurrent_listen = getattr(args, "kurrent_grpc", None)
    if getattr(args, "no_http", False) and kurrent_listen is None:
        raise ChronikError("--no-http serves nothing without --kurrent-grpc [HOST:]PORT")
    if kurrent_listen is None:
        return await _serve_http(args, out)
    require_extra("grpc", "chronik serve --kurrent-grpc", "grpcio", "kurrent")
    require_extra("kurrentdbclient", "chronik serve --kurrent-grpc", "kurrentdbclient", "kurrent")
    from chronik.kurrent.serving import start_kurrent

    url = store_url(getattr(args, "store", None))
    policy = _kurrent_policy(args, kurrent_listen[0], out)
    tls = _tls(args)
    kurrent = await start_kurrent(
        url,
        kurrent_listen,
        policy=policy,
        tls=None if not tls else (tls["ssl_certfile"], tls["ssl_keyfile"]),
    )
    out.say(
        f"serving the KurrentDB protocol for {redact_url(url)} on "
        f"{kurrent.server.connection_string}"
    )
    try:
        if not args.no_http:
            return await _serve_http(args, out)
        await _wait_for_stop_signal()
        return 0
    finally:
        await kurrent.close()


async def _wait_for_stop_signal() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _serve_http(args: argparse.Namespace, out: Output) -> int:
    require_extra("starlette", "chronik serve", "starlette", "server")
    require_extra("uvicorn", "chronik serve", "uvicorn", "server")
    require_extra("jinja2", "chronik serve", "jinja2", "server")
    import uvicorn

    from chronik.app import load_app
    from chronik.server import create_app_for_url
    from chronik.server.origin import LOOPBACK_HOSTS

    url = store_url(getattr(args, "store", None))
    app = load_app(args.app) if args.app else None
    tls = _tls(args)
    # the store must be there (`chronik init` creates one): a typo in the URL must not
    # serve an empty store; checked now, so the error is one line before the server starts
    async with await connect(url, create=False):
        pass
    policy = _policy(args, out)
    stopping = asyncio.Event()  # set on SIGINT/SIGTERM: live streams end at once
    web = create_app_for_url(
        url,
        app=app,
        max_body_bytes=args.max_body_bytes,
        create=False,
        stopping=stopping,
        policy=policy,
        # on the loopback, answer only to loopback names: a DNS-rebinding page cannot reach it
        allowed_hosts=LOOPBACK_HOSTS if _is_loopback(args.host) else None,
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
        **tls,
    )
    server = _server_class(stopping)(config)
    scheme = "https" if tls else "http"
    out.say(f"serving {redact_url(url)} on {scheme}://{args.host}:{args.port} (Ctrl-C stops)")
    try:
        await server.serve()
    except OSError as exc:  # the port is taken, the host is not ours
        raise ChronikError(f"cannot listen on {args.host}:{args.port}: {exc}") from exc
    except SystemExit as exc:  # uvicorn exits on a failed bind after logging why
        raise ChronikError(
            f"cannot listen on {args.host}:{args.port} (see the error above)"
        ) from exc
    if not server.started:
        raise ChronikError(f"the server did not start on {args.host}:{args.port} (see above)")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _policy(args: argparse.Namespace, out: Output) -> Policy | None:
    """The policy of ``--policy``/``--anonymous``/``--rate-limit``. Without a policy and
    without ``--anonymous`` the server is open (everyone admin), which only the loopback
    may be: another ``--host`` refuses to start (docs/security.md)."""
    from chronik.security import Policy, load_policy

    policy_file = getattr(args, "policy", None)
    anonymous = getattr(args, "anonymous", None)
    rate = getattr(args, "rate_limit", None)
    if policy_file is None and anonymous is None:
        if not _is_loopback(args.host):
            raise ChronikError(
                f"refusing to serve {args.host} without authentication: give --policy FILE "
                "or --anonymous ROLE (docs/security.md)"
            )
        out.note(
            ("warning: ", "bold yellow"),
            "no --policy: anyone who can reach this port may read, append and operate "
            f"(fine on {args.host} for local work; see docs/security.md)",
        )
        if rate is None:
            return None
        policy_file, anonymous = None, "admin"
    policy = load_policy(policy_file) if policy_file is not None else Policy()
    if anonymous is not None:
        policy = policy.with_anonymous(anonymous)
    if rate is not None:
        policy = policy.with_rate(rate)
    return policy


def _kurrent_policy(args: argparse.Namespace, host: str, out: Output) -> Policy | None:
    """The policy of the gRPC face: the HTTP face's (``--policy``, ``--anonymous``,
    ``--rate-limit``), judged against the gRPC face's own address. ``None``: open (everyone
    admin), which only the loopback may be."""
    from chronik.security import OPEN_POLICY, Policy, load_policy

    policy_file = getattr(args, "policy", None)
    anonymous = getattr(args, "anonymous", None)
    rate = getattr(args, "rate_limit", None)
    if policy_file is None and anonymous is None:
        if not _is_loopback(host):
            raise ChronikError(
                f"refusing to serve the KurrentDB protocol on {host} without authentication: "
                "give --policy FILE or --anonymous ROLE (docs/security.md)"
            )
        return None if rate is None else OPEN_POLICY.with_rate(rate)
    policy = load_policy(policy_file) if policy_file is not None else Policy()
    if anonymous is not None:
        policy = policy.with_anonymous(anonymous)
    if rate is not None:
        policy = policy.with_rate(rate)
    if not _is_loopback(host) and getattr(args, "tls_cert", None) is None:
        out.note(
            ("warning: ", "bold yellow"),
            f"the KurrentDB protocol on {host} without --tls-cert: credentials would travel "
            "in clear text (KurrentDB clients send them only with tls=true)",
        )
    return policy


def _tls(args: argparse.Namespace) -> dict[str, Any]:
    cert = getattr(args, "tls_cert", None)
    key = getattr(args, "tls_key", None)
    if (cert is None) != (key is None):
        raise ChronikError("--tls-cert and --tls-key go together")
    if cert is None:
        return {}
    for path in (cert, key):
        if not os.path.isfile(str(path)):
            raise ChronikError(f"TLS: no file {path!r}")
    return {"ssl_certfile": cert, "ssl_keyfile": key}


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
    p.add_argument("--port", type=_port, default=8000, help="port (default 8000)")
    p.add_argument(
        "--max-body-bytes",
        type=at_least(1),
        default=4 * 1024 * 1024,
        help="largest request body; 413 above it (default 4 MiB)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument(
        "--policy",
        metavar="FILE",
        default=None,
        help="a TOML security policy: roles, OIDC, limits (docs/security.md)",
    )
    p.add_argument(
        "--anonymous",
        metavar="ROLE",
        default=None,
        help="the role of callers without credentials (e.g. reader; admin for a local demo)",
    )
    p.add_argument(
        "--rate-limit",
        metavar="N",
        type=positive_float,
        default=None,
        help="requests a second per principal (429 above it; overrides the policy's)",
    )
    p.add_argument(
        "--tls-cert",
        metavar="FILE",
        default=None,
        help="serve HTTPS (and TLS on --kurrent-grpc): certificate chain (PEM)",
    )
    p.add_argument(
        "--tls-key", metavar="FILE", default=None, help="the private key of --tls-cert (PEM)"
    )
    p.add_argument(
        "--kurrent-grpc",
        metavar="[HOST:]PORT",
        nargs="?",
        const=("127.0.0.1", 2113),
        default=None,
        type=_kurrent_listen,
        help="also serve KurrentDB's gRPC client protocol (default 127.0.0.1:2113; needs "
        "chronik[kurrent]; see docs/kurrent-protocol.md)",
    )
    p.add_argument(
        "--no-http", action="store_true", help="serve only --kurrent-grpc, not the HTTP API"
    )
    p.set_defaults(standalone=cmd_serve)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0 to 65535, not {port}")
    return port


def _kurrent_listen(text: str) -> tuple[str, int]:
    from chronik.kurrent.serving import parse_listen

    return parse_listen(text)
