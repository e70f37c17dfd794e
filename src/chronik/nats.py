"""Services connected through NATS JetStream: an outbox relay out, an inbox in.

:class:`OutboxRelay` follows the store (a named :class:`~chronik.Subscription` over chosen
categories and types), maps each event to an integration message and publishes it to
JetStream at ``<prefix>.<category>.<type>``, in store order, one at a time, with
``Nats-Msg-Id`` = the event id, so JetStream drops a re-publish inside the stream's
``duplicate_window``. The checkpoint moves only past what JetStream acknowledged; after a
crash or a NATS outage the relay re-publishes from the checkpoint (at-least-once out,
deduplicated by JetStream). Correlation id, causation and ``traceparent`` travel in headers.

:class:`Inbox` reads a durable pull consumer in another service. Per message, one store
transaction records the message id in ``processed_messages`` and runs your handler with the
same :class:`~chronik.store.protocol.Tx` (effects exactly once); it acks after the commit.
A message that fails ``max_deliver`` times is written to ``inbox_dead_letters`` and
terminated. The handler runs inside ``chronik.context`` restored from the headers, so
``chronik trace`` on the consuming side shows the same correlation id.

Needs ``pip install chronik[nats]`` (nats-py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
import unicodedata
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from chronik.context import context
from chronik.errors import (
    ChronikError,
    InvalidArgument,
    InvalidSubject,
    LeaseLost,
    MissingDependency,
    StoreUnavailable,
)
from chronik.events import RecordedEvent
from chronik.scaleout.partitions import check_partitions, partition_of
from chronik.store.capabilities import require
from chronik.store.port import SqlStore
from chronik.store.protocol import EventStore, Tx
from chronik.subscriptions import Backoff, Page, describe
from chronik.workers import Follower, Poller

__all__ = [
    "Inbox",
    "InboxDeadLetter",
    "InboxMessage",
    "IntegrationMessage",
    "InvalidSubject",
    "OutboxRelay",
    "discard_inbox_dead_letter",
    "ensure_stream",
    "inbox_dead_letters",
    "retry_inbox_dead_letters",
    "subject_for",
    "validate_subject_token",
]

logger = logging.getLogger("chronik.nats")

HDR_MSG_ID = "Nats-Msg-Id"
HDR_TYPE = "Chronik-Type"
HDR_SCHEMA = "Chronik-Schema-Version"
HDR_STREAM = "Chronik-Stream-Id"
HDR_POSITION = "Chronik-Position"
HDR_CORRELATION = "Chronik-Correlation-Id"
HDR_CAUSATION = "Chronik-Causation-Id"
HDR_TRACEPARENT = "traceparent"


def broker_error_logger(who: str, every: float = 10.0) -> Callable[[Exception], Awaitable[None]]:
    """A nats-py ``error_cb`` that logs one line per ``every`` seconds (nats-py's default
    logs a traceback on every reconnect attempt: thousands of lines while a broker is down)."""
    last = [0.0]

    async def log(exc: Exception) -> None:
        now = time.monotonic()
        if now - last[0] >= every:
            last[0] = now
            logger.warning("%s: broker: %r (retrying)", who, exc)

    return log


MAX_KEY_BYTES = 1024
"""A message id longer than this (UTF-8 bytes) is deduplicated by its SHA-256: an index row
has a size limit (PostgreSQL: about 2.7 kB), and an id from outside may be any length."""


def dedupe_key(message_id: str) -> str:
    """The key ``processed_messages`` and ``inbox_dead_letters`` hold for ``message_id``."""
    raw = message_id.encode("utf-8", "surrogatepass")
    try:
        message_id.encode("utf-8")  # a lone surrogate cannot be stored as text
    except UnicodeEncodeError:
        pass
    else:
        if len(raw) <= MAX_KEY_BYTES and b"\x00" not in raw:
            return message_id
    return f"sha256:{hashlib.sha256(raw).hexdigest()}"


def _close(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    """Consumer settings equal (``ack_wait`` comes back from the server as a float)."""
    return all(
        abs(x - y) < 1e-3 if isinstance(x, float) or isinstance(y, float) else x == y
        for x, y in zip(a, b, strict=True)
    )


def stored_payload(data: bytes) -> str:
    """A payload as the ``data`` text column keeps it: the text when it is UTF-8 without
    NUL, else ``base64:`` and its Base64 (so a binary message can be dead-lettered whole)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and "\x00" not in text and not text.startswith("base64:"):
        return text
    return "base64:" + base64.b64encode(data).decode("ascii")


STREAM_NOT_FOUND = 10059
"""JetStream's error code for an unknown stream."""


class StreamMissing(ChronikError):
    """The JetStream stream a consumer reads does not exist (yet): retried, with a hint."""

    def __init__(self, stream: str) -> None:
        super().__init__(
            f"JetStream stream {stream!r} does not exist (yet): it is waited for; create it "
            "(`chronik relay run --create-stream`, `nats stream add`) or check --stream"
        )
        self.stream = stream


def stream_epoch(info: Any) -> str:
    """When a JetStream stream was created, as ``YYYYmmddTHHMMSS.ffffffZ`` (UTC), from its
    stream info; ``""`` when the server or nats-py does not say (nats-py before 2.7 has no
    ``created``). Formatted here, not by nats-py, so that a message id built from it stays
    the same across nats-py versions."""
    created = getattr(info, "created", None)
    if isinstance(created, str):
        with contextlib.suppress(ValueError):
            created = datetime.fromisoformat(created.replace("Z", "+00:00"))
    if isinstance(created, datetime):
        if created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        return created.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    return ""


def validate_subject_token(token: object) -> str:
    """Check one subject token (a category, a type, a prefix part) and return it."""
    if not isinstance(token, str):
        raise InvalidSubject(repr(token), f"must be a str, not {type(token).__name__}")
    if not token:
        raise InvalidSubject(token, "must not be empty")
    for ch in token:
        if ch in ".*>":
            raise InvalidSubject(token, f"contains {ch!r}")
        if ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Zs"):
            raise InvalidSubject(token, f"contains whitespace or control character {ch!r}")
    if len(token.encode("utf-8")) > 255:
        raise InvalidSubject(token, "is over 255 bytes")
    return token


def subject_for(prefix: str, category: str, type_: str, partition: int | None = None) -> str:
    """``<prefix>.<category>.<type>``, or ``<prefix>.<partition>.<category>.<type>`` with a
    partition token (a partitioned :class:`~chronik.scaleout.inbox.PartitionedInbox`
    consumes ``<prefix>.<p>.>`` per partition); every token validated (the prefix may have
    dots)."""
    parts = prefix.split(".") if prefix else []
    for part in (*parts, category, type_):
        validate_subject_token(part)
    if partition is not None:
        parts.append(str(partition))
    return ".".join((*parts, category, type_))


@dataclass(frozen=True, slots=True)
class IntegrationMessage:
    """What leaves the service for one event (``None`` from a mapper: nothing)."""

    type: str
    data: Mapping[str, Any] | bytes
    schema_version: int = 1


def _default_mapper(event: RecordedEvent) -> IntegrationMessage:
    return IntegrationMessage(event.type, event.raw_data, event.schema_version)


async def ensure_stream(
    js: Any,
    name: str,
    subjects: Sequence[str],
    *,
    duplicate_window: float = 120.0,
    replicas: int = 1,
) -> None:
    """Create (or update) a file-backed JetStream stream for the relay.

    ``duplicate_window`` (seconds) must exceed the relay's retry horizon (see
    docs/integration.md); production wants ``replicas=3`` and server ``sync_interval:
    always`` (or accept the power-loss window and rely on re-publishing from the outbox).
    """
    from nats.js.api import StorageType, StreamConfig

    config = StreamConfig(
        name=name,
        subjects=list(subjects),
        storage=StorageType.FILE,
        duplicate_window=duplicate_window,
        num_replicas=replicas,
    )
    try:
        await js.add_stream(config)
    except Exception:
        await js.update_stream(config)


def _require_nats(what: str) -> None:
    """Fail at once, with the install command, when nats-py is missing (a worker would
    otherwise retry the ImportError forever)."""
    try:
        import nats  # noqa: F401
    except ImportError as exc:
        raise MissingDependency(what, "nats-py", "nats") from exc


class OutboxRelay(Follower):
    """Publishes selected events to JetStream in store order; checkpoints what was acked."""

    def __init__(
        self,
        store: EventStore,
        servers: str | Sequence[str],
        *,
        name: str,
        stream: str,
        prefix: str,
        categories: Sequence[str] | None = None,
        types: Sequence[str] | None = None,
        mapper: Callable[[RecordedEvent], IntegrationMessage | None] = _default_mapper,
        batch_size: int = 500,
        poll_interval: float = 0.2,
        ack_timeout: float = 5.0,
        max_backoff: float = 2.0,
        in_flight: int = 1,
        subject_partitions: int | None = None,
    ) -> None:
        _require_nats("OutboxRelay")
        if prefix:
            subject_for(prefix, "x", "x")
        if subject_partitions is not None:
            check_partitions(subject_partitions)
            if not prefix:
                raise InvalidArgument("subject_partitions", "needs a prefix")
        super().__init__(
            store,
            checkpoint_name=f"relay:{name}",
            categories=categories,
            types=types,
            batch_size=batch_size,
            poll_interval=poll_interval,
        )
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.name = name
        self.stream = stream
        self.prefix = prefix
        self.mapper = mapper
        self.ack_timeout = ack_timeout
        self.max_backoff = max_backoff
        if in_flight < 1:
            raise ValueError("in_flight must be >= 1")
        self.in_flight = in_flight
        """Publishes awaiting their PubAck at once. 1 keeps store order in JetStream even
        when a publish fails; more is faster, but after a failed publish inside a window a
        later message of it may be stored before the earlier one's retry."""
        self.subject_partitions = subject_partitions
        """Put ``partition_of(stream_id, subject_partitions)`` in each subject after the
        prefix (``orders.3.order.Placed``), so that a partitioned inbox takes one stream's
        messages in one partition, in order (``None``: ``orders.order.Placed``)."""
        self.published = 0
        self.duplicates = 0
        self._nc: Any = None
        self._js: Any = None

    async def connect(self) -> None:
        import nats

        if self._nc is not None and self._nc.is_connected:
            return
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._nc = await nats.connect(
            self.servers,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.2,
            connect_timeout=2,
            allow_reconnect=True,
            error_cb=broker_error_logger(self.name),
        )
        self._js = self._nc.jetstream(timeout=self.ack_timeout)

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None

    async def _stopped(self) -> None:
        await self.close()  # after the publish in progress: what was acked is checkpointed

    def message_for(self, event: RecordedEvent) -> tuple[str, bytes, dict[str, str]] | None:
        """The subject, payload and headers of one event (``None``: not published).

        Raises:
            InvalidSubject: the category or mapped type cannot be a subject token.
        """
        msg = self.mapper(event)
        if msg is None:
            return None
        partition = (
            None
            if self.subject_partitions is None
            else partition_of(event.stream_id, self.subject_partitions)
        )
        subject = subject_for(self.prefix, event.category, msg.type, partition)
        data = msg.data if isinstance(msg.data, bytes) else msgspec.json.encode(dict(msg.data))
        headers = {
            HDR_MSG_ID: str(event.event_id),
            HDR_TYPE: msg.type,
            HDR_SCHEMA: str(msg.schema_version),
            HDR_STREAM: event.stream_id,
            HDR_POSITION: str(event.position),
            HDR_CAUSATION: str(event.event_id),
        }
        meta = event.metadata
        if meta.get("correlation_id"):
            headers[HDR_CORRELATION] = str(meta["correlation_id"])
        if meta.get("traceparent"):
            headers[HDR_TRACEPARENT] = str(meta["traceparent"])
        return subject, data, headers

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str]) -> None:
        """Publish until acked (reconnecting, with backoff) or stopped."""
        backoff = Backoff(most=self.max_backoff)
        while True:
            try:
                await self.connect()
                ack = await self._js.publish(
                    subject, data, timeout=self.ack_timeout, stream=self.stream, headers=headers
                )
                if ack.duplicate:
                    self.duplicates += 1
                self.published += 1
                return
            except Exception as exc:
                if self._stopping.is_set():
                    raise
                logger.warning("relay %s: publish failed (%r); retrying", self.name, exc)
                await backoff.sleep()

    async def handle_page(self, page: Page) -> int:
        """Publish one page in store order; what was acked is checkpointed even when a
        publish fails or the relay stops half-way."""
        last = self.checkpoint
        try:
            window: list[tuple[RecordedEvent, tuple[str, bytes, dict[str, str]] | None]] = []
            for event in page.events:
                try:
                    out = self.message_for(event)
                except InvalidSubject as exc:
                    async with self.store.transaction() as tx:
                        await tx.add_dead_letter(self.checkpoint_name, event, str(exc), 1)
                    self.dead_lettered += 1
                    out = None
                window.append((event, out))
                if len(window) >= self.in_flight:
                    last = await self._publish_window(window, last)
                    window = []
            last = await self._publish_window(window, last)
        finally:
            await self.commit(last)
        return len(page.events)

    async def _publish_window(
        self,
        window: list[tuple[RecordedEvent, tuple[str, bytes, dict[str, str]] | None]],
        last: int,
    ) -> int:
        """Publish a window (concurrently when ``in_flight > 1``); the last position acked."""
        todo = [out for _, out in window if out is not None]
        if len(todo) > 1:
            try:
                await self.connect()
                acks = await asyncio.gather(
                    *(
                        self._js.publish(
                            subject, data, timeout=self.ack_timeout, stream=self.stream,
                            headers=headers,
                        )
                        for subject, data, headers in todo
                    )
                )  # fmt: skip
                self.published += len(acks)
                self.duplicates += sum(1 for ack in acks if ack.duplicate)
                todo = []
            except Exception as exc:
                logger.warning("relay %s: window publish failed (%r)", self.name, exc)
        for out in todo:
            await self._publish(*out)
        return window[-1][0].position if window else last


@dataclass(frozen=True, slots=True)
class InboxMessage:
    """One message as an inbox handler sees it."""

    message_id: str
    subject: str
    type: str
    data: bytes
    headers: dict[str, str] = field(default_factory=dict)
    deliveries: int = 1

    def json(self) -> Any:
        return msgspec.json.decode(self.data)

    def event_id(self, n: int = 0) -> uuid.UUID:
        """A deterministic event id for the ``n``-th event this message causes (idempotent
        appends to the store when the handler appends outside the transaction)."""
        return uuid.uuid5(uuid.NAMESPACE_URL, f"chronik-inbox/{self.message_id}/{n}")


InboxHandler = Callable[[InboxMessage, Tx], Awaitable[None]]
"""Effects written through the transaction that also records the message id."""
AppendingHandler = Callable[[InboxMessage], Awaitable[None]]
"""Effects that are appends to the store (idempotent by themselves)."""


class Inbox(Poller):
    """A durable JetStream pull consumer whose effects happen exactly once in ``store``."""

    def __init__(
        self,
        store: EventStore,
        servers: str | Sequence[str],
        *,
        name: str,
        stream: str,
        subject: str,
        handler: InboxHandler | None = None,
        append_handler: AppendingHandler | None = None,
        max_deliver: int = 5,
        ack_wait: float = 30.0,
        batch_size: int = 100,
        fetch_timeout: float = 0.5,
        durable: str | None = None,
        max_ack_pending: int | None = None,
    ) -> None:
        _require_nats("Inbox")
        self.sql = require(store, SqlStore)  # MissingCapability without SQL (memory://)
        if (handler is None) == (append_handler is None):
            raise ValueError("give either handler (effects in the Tx) or append_handler")
        validate_subject_token(name)
        if durable is not None:
            validate_subject_token(durable)
        super().__init__(name=f"inbox:{name}", poll_interval=0.0)  # a fetch waits by itself
        self.store = store
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.name = name
        self.stream = stream
        self.subject = subject
        self.handler = handler
        self.append_handler = append_handler
        self.appends = append_handler is not None
        self.max_deliver = max_deliver
        self.ack_wait = ack_wait
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.durable = durable or name
        """The JetStream durable consumer (``name``; a partition has its own). Messages
        are deduplicated by ``name`` whichever consumer delivered them."""
        self.max_ack_pending = max_ack_pending
        """At most this many messages delivered and not yet acked (``None``: the server's
        default); a partition sets its batch size, so that after a takeover its messages
        come again in order before any later one."""
        self.processed = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self._nc: Any = None
        self._sub: Any = None
        self._stream_created = ""

    async def connect(self) -> None:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig

        if self._sub is not None:
            return
        self._nc = await nats.connect(
            self.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.2,
            error_cb=broker_error_logger(self.name),
        )  # fmt: skip
        js = self._nc.jetstream()
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            max_deliver=self.max_deliver + 1,  # one more, to dead-letter the last failure
            ack_wait=self.ack_wait,
            filter_subject=self.subject,
            max_ack_pending=self.max_ack_pending,
        )
        await self._create_or_update(js, config)
        self._sub = await js.pull_subscribe(
            self.subject, durable=self.durable, stream=self.stream, config=config
        )

    async def _create_or_update(self, js: Any, config: Any) -> None:
        """Make the durable consumer, or bring an existing one to ``config``: nats-py's
        ``pull_subscribe`` binds to an existing consumer as it is, so a changed
        ``max_deliver``, ``ack_wait`` or ``max_ack_pending`` (one in flight: the order of an
        ordered partition) would silently not apply. A setting the server cannot change
        in place is a typed error naming the consumer."""
        import nats.js.errors

        try:
            stream = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError as exc:
            raise StreamMissing(self.stream) from exc
        self._stream_created = stream_epoch(stream)
        try:
            info = await js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == STREAM_NOT_FOUND:  # deleted in between
                raise StreamMissing(self.stream) from exc
            info = None
        if info is not None and (info.config.filter_subject or "") != self.subject:
            raise InvalidArgument(
                "durable",
                f"consumer {self.durable!r} on stream {self.stream!r} takes "
                f"{info.config.filter_subject!r}, not {self.subject!r}; delete it or use "
                "another name",
            )
        wanted = (config.max_deliver, config.ack_wait, config.max_ack_pending)
        if info is not None:
            have = info.config
            current = (have.max_deliver, have.ack_wait, have.max_ack_pending)
            if config.max_ack_pending is None:  # the server's default: keep what is there
                wanted = (*wanted[:2], have.max_ack_pending)
            if _close(current, wanted):
                return
            logger.info(
                "inbox %s: updating consumer %s (max_deliver, ack_wait, max_ack_pending) "
                "%s -> %s", self.name, self.durable, current, wanted,
            )  # fmt: skip
            if config.max_ack_pending is None:
                config.max_ack_pending = have.max_ack_pending
        try:
            await js.add_consumer(self.stream, config)
        except nats.js.errors.BadRequestError as exc:
            raise InvalidArgument(
                "durable",
                f"consumer {self.durable!r} on stream {self.stream!r} could not be brought "
                f"to max_deliver={config.max_deliver}, ack_wait={config.ack_wait}, "
                f"max_ack_pending={config.max_ack_pending}: {exc.description}",
            ) from exc

    async def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._nc = self._sub = None

    retry_on = (Exception,)
    """A lost broker or store, a failed fetch: close, back off, connect again."""

    async def lost(self, exc: BaseException) -> None:
        await self.close()

    async def _stopped(self) -> None:
        await self.close()

    async def run_once(self) -> int:
        """Fetch and handle one batch; returns how many messages were fetched."""
        import nats.errors

        await self.connect()
        try:
            msgs = await self._sub.fetch(self.batch_size, timeout=self.fetch_timeout)
        except (nats.errors.TimeoutError, TimeoutError):  # nothing there (both are raised)
            return 0
        for n, msg in enumerate(msgs):
            if self._stopping.is_set():
                await self._give_back(msgs[n:])  # the next owner need not wait for ack_wait
                break
            try:
                await self.handle(msg)
            except LeaseLost:
                await self._give_back(msgs[n:])
                raise
        return len(msgs)

    async def _give_back(self, msgs: Sequence[Any]) -> None:
        """Hand fetched, unhandled messages back to JetStream for redelivery now."""
        for msg in msgs:
            with contextlib.suppress(Exception):
                await msg.nak()

    async def fence(self, tx: Tx) -> None:
        """First statement of each message's transaction: nothing here; a partition of a
        :class:`~chronik.scaleout.inbox.PartitionedInbox` checks its lease
        (:class:`~chronik.errors.LeaseLost` rolls the message's effects back)."""

    async def handle(self, msg: Any) -> None:
        """Handle one NATS message: dedupe + effect in one transaction, then ack."""
        headers = dict(msg.headers or {})
        deliveries = int(msg.metadata.num_delivered) if msg.metadata else 1
        message_id = dedupe_key(headers.get(HDR_MSG_ID) or self._fallback_id(msg))
        message = InboxMessage(
            message_id,
            msg.subject,
            headers.get(HDR_TYPE, msg.subject.rsplit(".", 1)[-1]),
            bytes(msg.data),
            headers,
            deliveries,
        )
        backoff = Backoff(first=0.1, most=2.0)
        while True:
            try:
                await self.process(message)
            except StoreUnavailable as exc:
                # the store is lost, not the message: retry it here, holding it (in
                # progress), so that an outage spends none of its max_deliver deliveries
                # (nor dead-letters it once the store is back)
                if self._stopping.is_set():
                    raise
                logger.warning(
                    "inbox %s: %s; retrying %s in %.2fs",
                    self.name, describe(exc), message_id, backoff.delay,
                )  # fmt: skip
                with contextlib.suppress(Exception):
                    await msg.in_progress()
                await backoff.sleep(self._stopping)
                continue
            except LeaseLost:
                raise  # not the message's fault: handed back, the next owner handles it
            except Exception as exc:
                if deliveries >= self.max_deliver:
                    await self._dead_letter(message, exc)
                    await msg.term()
                    self.dead_lettered += 1
                else:
                    logger.warning("inbox %s: %s failed (%r)", self.name, message_id, exc)
                    await self._retry_later(msg, min(0.1 * 2**deliveries, 5.0))
                return
            await msg.ack()
            return

    async def _retry_later(self, msg: Any, delay: float) -> None:
        """Have a failed message delivered again after ``delay`` seconds.

        With one message in flight (an ordered partition) nothing else can be delivered
        meanwhile, so it waits here, holding the message, and naks it without a delay:
        nats-server 2.9 loses the timer of a delayed nak when no pull request is waiting as
        it fires (measured: 6 of 30 redeliveries came only after ``ack_wait``, 30 s), which
        would stall the partition. With more in flight, the server holds it back
        (``nak(delay=...)``) while the others go on."""
        if self.max_ack_pending != 1:
            await msg.nak(delay=delay)
            return
        with contextlib.suppress(Exception):
            await msg.in_progress()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)
        await msg.nak()

    def _fallback_id(self, msg: Any) -> str:
        """The id of a message published without ``Nats-Msg-Id``: its stream sequence,
        qualified by when the stream was created (a stream deleted and created again under
        its name counts from 1 again: a bare ``STREAM:SEQ`` made new messages look
        processed)."""
        seq = msg.metadata.sequence.stream
        if self._stream_created:
            return f"{self.stream}@{self._stream_created}:{seq}"
        return f"{self.stream}:{seq}"

    async def process(self, message: InboxMessage) -> bool:
        """Run the handler unless the message was processed already; ``False``: a duplicate."""
        h = message.headers
        with context(
            correlation_id=h.get(HDR_CORRELATION),
            causation_id=h.get(HDR_CAUSATION, message.message_id),
            traceparent=h.get(HDR_TRACEPARENT),
        ):
            if self.appends:
                return await self._process_appending(message)
            async with self.store.transaction() as tx:
                await self.fence(tx)
                seen = await tx.fetchone(
                    "SELECT 1 FROM processed_messages WHERE consumer = :c AND message_id = :m",
                    {"c": self.name, "m": message.message_id},
                )
                if seen is not None:
                    self.duplicates += 1
                    return False
                await tx.execute(
                    "INSERT INTO processed_messages (consumer, message_id, processed_at) "
                    "VALUES (:c, :m, :t)",
                    {"c": self.name, "m": message.message_id, "t": time.time()},
                )
                assert self.handler is not None
                await self.handler(message, tx)
        self.processed += 1
        return True

    async def _process_appending(self, message: InboxMessage) -> bool:
        """``appends=True``: the handler appends to the store (its own transactions), so it
        runs before the processed id is recorded and must be idempotent by itself (event
        ids from :meth:`InboxMessage.event_id`, or a look-up): a crash in between runs it
        again, and it then changes nothing."""
        params = {"c": self.name, "m": message.message_id}
        seen = await self.sql.query(
            "SELECT 1 FROM processed_messages WHERE consumer = :c AND message_id = :m", params
        )
        if seen:
            self.duplicates += 1
            return False
        assert self.append_handler is not None
        await self.append_handler(message)
        async with self.store.transaction() as tx:
            await self.fence(tx)
            await tx.execute(
                "INSERT INTO processed_messages (consumer, message_id, processed_at) "
                "VALUES (:c, :m, :t) ON CONFLICT (consumer, message_id) DO NOTHING",
                {**params, "t": time.time()},
            )
        self.processed += 1
        return True

    async def _dead_letter(self, message: InboxMessage, exc: BaseException) -> None:
        async with self.store.transaction() as tx:
            await tx.execute(
                "INSERT INTO inbox_dead_letters (consumer, message_id, subject, data, headers, "
                "error, deliveries, created_at) VALUES (:c, :m, :s, :d, :h, :e, :n, :t) "
                "ON CONFLICT (consumer, message_id) DO NOTHING",
                {"c": self.name, "m": message.message_id, "s": message.subject,
                 "d": stored_payload(message.data),
                 "h": msgspec.json.encode(message.headers).decode(), "e": repr(exc),
                 "n": message.deliveries, "t": time.time()},
            )  # fmt: skip


def loaded_payload(stored: str) -> bytes:
    """The bytes :func:`stored_payload` kept as text (text that only looks like Base64 after
    the prefix, from a release that stored payloads as text, is taken as text)."""
    if stored.startswith("base64:"):
        with contextlib.suppress(ValueError):
            return base64.b64decode(stored.removeprefix("base64:"), validate=True)
    return stored.encode("utf-8", "surrogatepass")


def _loaded_headers(stored: str) -> dict[str, str]:
    """Headers as stored (JSON of an object of strings); anything else (a row written by
    hand, say) is kept whole under ``""``, so one bad row does not hide the others."""
    try:
        headers = msgspec.json.decode(stored)
    except msgspec.DecodeError:
        headers = None
    if isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values()):
        return headers
    return {"": stored}


@dataclass(frozen=True, slots=True)
class InboxDeadLetter:
    """A message an inbox gave up on after ``max_deliver`` failed deliveries."""

    id: int
    consumer: str
    message_id: str
    subject: str
    data: bytes
    headers: dict[str, str]
    error: str
    deliveries: int
    created_at: float

    def message(self) -> InboxMessage:
        """The message as its handler saw it."""
        kind = self.headers.get(HDR_TYPE, self.subject.rsplit(".", 1)[-1])
        return InboxMessage(
            self.message_id, self.subject, kind, self.data, self.headers, self.deliveries
        )


async def inbox_dead_letters(store: EventStore, name: str | None = None) -> list[InboxDeadLetter]:
    """The dead letters of inbox ``name`` (every inbox's with ``None``), oldest first."""
    where, params = ("WHERE consumer = :c", {"c": name}) if name is not None else ("", {})
    rows = await require(store, SqlStore).query(
        "SELECT id, consumer, message_id, subject, data, headers, error, deliveries, "
        f"created_at FROM inbox_dead_letters {where} ORDER BY id",
        params,
    )
    return [_dead_letter_of(row) for row in rows]


def _dead_letter_of(r: tuple[Any, ...]) -> InboxDeadLetter:
    return InboxDeadLetter(
        int(r[0]), r[1], r[2], r[3], loaded_payload(r[4]),
        _loaded_headers(r[5]), r[6], int(r[7]), float(r[8]),
    )  # fmt: skip


async def discard_inbox_dead_letter(store: EventStore, name: str, message_id: str) -> bool:
    """Drop one dead letter (after deciding the message needs nothing); ``False`` when
    there was none."""
    async with store.transaction() as tx:
        row = await tx.fetchone(
            "DELETE FROM inbox_dead_letters WHERE consumer = :c AND message_id = :m RETURNING id",
            {"c": name, "m": message_id},
        )
    return row is not None


async def _processed(store: EventStore, name: str, message_id: str) -> bool:
    rows = await require(store, SqlStore).query(
        "SELECT 1 FROM processed_messages WHERE consumer = :c AND message_id = :m",
        {"c": name, "m": message_id},
    )
    return bool(rows)


async def retry_inbox_dead_letters(
    store: EventStore,
    name: str,
    *,
    handler: InboxHandler | None = None,
    append_handler: AppendingHandler | None = None,
) -> tuple[int, int]:
    """Run each dead letter of inbox ``name`` through ``handler`` (the fixed one) again;
    returns ``(fixed, still_failing)``.

    Each message goes through the inbox's own path (its id recorded in
    ``processed_messages`` in the handler's transaction), so its effects happen once even if
    two retries run at once or the inbox had applied it after all; a dead letter is removed
    once its message is applied, and one that fails again stays, with the new error. A
    retried message takes effect after later messages of its stream, which went on
    meanwhile. A dead letter failing again keeps the error it was parked with (the new
    one is logged); one another retry applied meanwhile counts as neither."""
    retrier = Inbox(
        store, [], name=name, stream="", subject="", handler=handler,
        append_handler=append_handler,
    )  # fmt: skip
    fixed = 0
    still: list[InboxDeadLetter] = []
    for letter in await inbox_dead_letters(store, name):
        try:
            await retrier.process(letter.message())
        except StoreUnavailable:
            raise
        except Exception as exc:
            # kept as it was (the error it was parked with); the new one is logged
            logger.warning("inbox %s: dead letter %s failed again: %r", name, letter.id, exc)
            still.append(letter)
            continue
        async with store.transaction() as tx:
            await tx.execute("DELETE FROM inbox_dead_letters WHERE id = :i", {"i": letter.id})
        fixed += 1
    failing = 0
    for letter in still:  # applied meanwhile by another retry (its processed id won)?
        if await _processed(store, name, letter.message_id):
            async with store.transaction() as tx:
                await tx.execute("DELETE FROM inbox_dead_letters WHERE id = :i", {"i": letter.id})
        else:
            failing += 1
    return fixed, failing
