"""A gRPC server speaking KurrentDB's client protocol over any chronik store.

Services: ``Streams`` (:mod:`chronik.kurrent.streams`), ``Gossip.Read`` (one leader: this
node), ``ServerFeatures.GetSupportedMethods`` (exactly what is implemented),
``PersistentSubscriptions`` (consumer groups: :mod:`chronik.kurrent.persistent`). Every
other RPC answers ``UNIMPLEMENTED`` with a message that names it and points to
docs/kurrent-protocol.md.

Every call goes through :class:`~chronik.kurrent.auth.AuthInterceptor`: with a ``guard``
(a :class:`~chronik.security.Guard` over a policy and the store's tokens) callers must
authenticate and are authorised per stream; without one (the open loopback server) everyone
is admin. ``tls`` (PEM certificate chain and key) serves TLS.

Example::

    server = KurrentServer(store, host="127.0.0.1", port=2113)
    await server.start()          # kurrentdb://127.0.0.1:2113?tls=false
    ...
    await server.stop()
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from kurrentdbclient.protos.v1 import (
    gossip_pb2,
    persistent_pb2_grpc,
    shared_pb2,
    streams_pb2_grpc,
)

from chronik._version import __version__
from chronik.kurrent.auth import RECHECK_SECONDS, AuthInterceptor
from chronik.kurrent.log import KurrentLog
from chronik.kurrent.persistent import PersistentService
from chronik.kurrent.streams import StreamsService
from chronik.security import Guard
from chronik.store.port import EventStore

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "SUPPORTED_METHODS", "KurrentServer"]

DEFAULT_MAX_MESSAGE_BYTES = 17 * 1024 * 1024
"""The largest request message the server reads (kurrentdbclient receives up to 17 MiB)."""
DOCS = "docs/kurrent-protocol.md"
_STREAMS = "event_store.client.streams.Streams"
_GOSSIP = "event_store.client.gossip.Gossip"
_PERSISTENT = "event_store.client.persistent_subscriptions.PersistentSubscriptions"
_FEATURES = "event_store.client.server_features.ServerFeatures"

SUPPORTED_METHODS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (_STREAMS, "Read", ("position", "events")),
    (_STREAMS, "Append", ()),
    (_STREAMS, "BatchAppend", ()),
    (_STREAMS, "Delete", ()),
    (_STREAMS, "Tombstone", ()),
    (_GOSSIP, "Read", ()),
    (_PERSISTENT, "Create", ("stream", "all")),
    (_PERSISTENT, "Update", ("stream", "all")),
    (_PERSISTENT, "Delete", ("stream", "all")),
    (_PERSISTENT, "Read", ("stream", "all")),
    (_PERSISTENT, "GetInfo", ("stream", "all")),
    (_PERSISTENT, "List", ()),
    (_PERSISTENT, "ReplayParked", ()),
    (_PERSISTENT, "RestartSubsystem", ()),
    (_FEATURES, "GetSupportedMethods", ()),
)
"""``(service, method, features)`` of every RPC this server implements."""


def _features_messages() -> tuple[Any, Any, Any]:
    """The ServerFeatures messages (not in the client wheel), declared here from the
    protocol's documented shape: ``SupportedMethods{methods, event_store_server_version}``."""
    file = descriptor_pb2.FileDescriptorProto(
        name="chronik_kurrent_serverfeatures.proto",
        package="event_store.client.server_features",
        syntax="proto3",
    )
    empty = file.message_type.add(name="Empty")
    del empty
    method = file.message_type.add(name="SupportedMethod")
    string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    method.field.add(name="method_name", number=1, type=string, label=optional)
    method.field.add(name="service_name", number=2, type=string, label=optional)
    method.field.add(name="features", number=3, type=string, label=repeated)
    methods = file.message_type.add(name="SupportedMethods")
    methods.field.add(
        name="methods",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        type_name=".event_store.client.server_features.SupportedMethod",
        label=repeated,
    )
    methods.field.add(name="event_store_server_version", number=2, type=string, label=optional)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    found = pool.FindFileByName(file.name)
    classes = [
        message_factory.GetMessageClass(found.message_types_by_name[n])
        for n in ("Empty", "SupportedMethod", "SupportedMethods")
    ]
    return classes[0], classes[1], classes[2]


FeaturesEmpty, SupportedMethod, SupportedMethods = _features_messages()


def supported_methods() -> Any:
    """The ``SupportedMethods`` answer: lower-case names, as KurrentDB sends them."""
    answer = SupportedMethods(event_store_server_version=f"chronik-{__version__}")
    for service, method, features in SUPPORTED_METHODS:
        answer.methods.add(
            method_name=method.lower(), service_name=service.lower(), features=list(features)
        )
    return answer


class _Unimplemented(grpc.GenericRpcHandler):
    """The last handler: any RPC nobody else serves answers ``UNIMPLEMENTED`` by name."""

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method = handler_call_details.method

        async def refuse(_requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"{method} is not implemented by chronik's KurrentDB protocol server "
                f"(projections, users and operations are not "
                f"served); see {DOCS}",
            )

        refuse.chronik_unimplemented = True  # type: ignore[attr-defined]
        return grpc.stream_stream_rpc_method_handler(refuse)


class KurrentServer:
    """KurrentDB's gRPC client protocol on ``host:port`` over one open chronik store.

    The store stays the caller's: :meth:`stop` does not close it.
    """

    def __init__(
        self,
        store: EventStore,
        *,
        host: str = "127.0.0.1",
        port: int = 2113,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        guard: Guard | None = None,
        tls: tuple[bytes, bytes] | None = None,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> None:
        self.store = store
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.guard = guard
        self.tls = tls
        """``(certificate chain PEM, private key PEM)``: serve TLS."""
        self.recheck_seconds = recheck_seconds
        self.instance_id = uuid.uuid4()
        self._server: grpc.aio.Server | None = None

    @property
    def target(self) -> str:
        """``host:port`` as clients connect to it (the bound port once started)."""
        return f"{self.host}:{self.port}"

    @property
    def connection_string(self) -> str:
        """A kurrentdbclient connection string for this server."""
        return f"kurrentdb://{self.target}?tls={'true' if self.tls else 'false'}"

    async def start(self) -> None:
        """Bind and start serving (``port`` 0 picks a free port, read back from ``port``)."""
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", self.max_message_bytes),
                ("grpc.max_send_message_length", self.max_message_bytes),
                ("grpc.so_reuseport", 0),
                # room for an oversized authorization header to reach the guard, which
                # refuses it as UNAUTHENTICATED (the default limit would fail the call first)
                ("grpc.max_metadata_size", 64 * 1024),
            ],
            interceptors=[AuthInterceptor(self.guard, recheck_seconds=self.recheck_seconds)],
        )
        streams_pb2_grpc.add_StreamsServicer_to_server(  # type: ignore[no-untyped-call]
            StreamsService(KurrentLog(self.store)), server
        )
        persistent_pb2_grpc.add_PersistentSubscriptionsServicer_to_server(  # type: ignore[no-untyped-call]
            PersistentService(self.store), server
        )
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    _GOSSIP,
                    {
                        "Read": grpc.unary_unary_rpc_method_handler(
                            self._gossip,
                            request_deserializer=shared_pb2.Empty.FromString,
                            response_serializer=gossip_pb2.ClusterInfo.SerializeToString,
                        )
                    },
                ),
                grpc.method_handlers_generic_handler(
                    _FEATURES,
                    {
                        "GetSupportedMethods": grpc.unary_unary_rpc_method_handler(
                            self._features,
                            request_deserializer=FeaturesEmpty.FromString,
                            response_serializer=SupportedMethods.SerializeToString,
                        )
                    },
                ),
                _Unimplemented(),
            )
        )
        try:
            address = f"{self.host}:{self.port}"
            if self.tls is None:
                bound = server.add_insecure_port(address)
            else:
                cert, key = self.tls
                bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
        except RuntimeError as exc:
            from chronik.errors import ChronikError

            raise ChronikError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        self.port = bound
        await server.start()
        self._server = server

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop serving; open calls (live subscriptions) end after ``grace`` seconds."""
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    async def wait(self) -> None:
        """Wait until the server stops."""
        if self._server is not None:
            await self._server.wait_for_termination()

    async def _gossip(self, _request: Any, _context: Any) -> gossip_pb2.ClusterInfo:
        member = gossip_pb2.MemberInfo(
            instance_id=shared_pb2.UUID(string=str(self.instance_id)),
            time_stamp=time.time_ns() // 100,
            state=gossip_pb2.MemberInfo.VNodeState.Leader,
            is_alive=True,
            http_end_point=gossip_pb2.EndPoint(address=self.host, port=self.port),
        )
        return gossip_pb2.ClusterInfo(members=[member])

    async def _features(self, _request: Any, _context: Any) -> Any:
        return supported_methods()
