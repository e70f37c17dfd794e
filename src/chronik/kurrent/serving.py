"""``chronik serve --kurrent-grpc``: the KurrentDB protocol server's life in the CLI's loop."""

from __future__ import annotations

import argparse
from pathlib import Path

from chronik.errors import ChronikError
from chronik.kurrent.server import KurrentServer
from chronik.security import Guard, Policy, token_store
from chronik.store import connect
from chronik.store.port import EventStore

__all__ = ["DEFAULT_LISTEN", "RunningKurrent", "parse_listen", "start_kurrent"]

DEFAULT_LISTEN = "127.0.0.1:2113"


def parse_listen(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` as ``(host, port)`` (host 127.0.0.1 when not given); an argparse
    ``type``, so a bad value is a usage error."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = "127.0.0.1"
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not [HOST:]PORT: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0 to 65535, not {port}")
    return host, port


class RunningKurrent:
    """A started protocol server and the store it opened; :meth:`close` ends both."""

    def __init__(self, server: KurrentServer, store: EventStore) -> None:
        self.server = server
        self.store = store

    async def close(self) -> None:
        try:
            await self.server.stop(grace=1.0)
        finally:
            await self.store.close()


def _read_pem(paths: tuple[str, str]) -> tuple[bytes, bytes]:
    try:
        return Path(paths[0]).read_bytes(), Path(paths[1]).read_bytes()
    except OSError as exc:
        raise ChronikError(f"TLS: cannot read {exc.filename!r}: {exc.strerror}") from exc


async def start_kurrent(
    url: str,
    listen: tuple[str, int],
    *,
    policy: Policy | None = None,
    tls: tuple[str, str] | None = None,
) -> RunningKurrent:
    """Open the store at ``url`` (it must exist) and serve the protocol on ``listen``.

    ``policy``: callers authenticate with the store's API tokens (or the policy's OIDC
    JWTs) and are authorised by it (``None``: open, everyone admin). ``tls``: the paths of
    a PEM certificate chain and its key.
    """
    tls_pem = None if tls is None else _read_pem(tls)
    store = await connect(url, create=False)
    try:
        guard = None if policy is None else Guard(policy, token_store(store))
        server = KurrentServer(store, host=listen[0], port=listen[1], guard=guard, tls=tls_pem)
        await server.start()
    except BaseException:
        await store.close()
        raise
    return RunningKurrent(server, store)
