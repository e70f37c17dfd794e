"""KurrentDB's gRPC client protocol over any chronik store (extra ``chronik[kurrent]``).

Existing KurrentDB clients (``kurrentdbclient``, the ``eventsourcing-kurrentdb`` adapter, the
clients of other languages) work unchanged against chronik on SQLite or PostgreSQL: see
docs/kurrent-protocol.md for what is served, what is not and why. The generated protocol
classes come from the BSD-licensed ``kurrentdbclient`` wheel.
"""

from __future__ import annotations

from chronik.errors import MissingDependency

try:
    import grpc  # noqa: F401
    import kurrentdbclient.protos.v1.streams_pb2  # noqa: F401
except ImportError as exc:  # pragma: no cover - the extra is not installed
    raise MissingDependency(
        "the KurrentDB protocol server", "grpcio and kurrentdbclient", "kurrent"
    ) from exc

from chronik.kurrent.server import SUPPORTED_METHODS, KurrentServer

__all__ = ["SUPPORTED_METHODS", "KurrentServer"]
