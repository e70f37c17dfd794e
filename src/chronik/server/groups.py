"""Consumer groups over HTTP (docs/http.md, docs/scale-out.md): list, info, create,
delete, receive messages under a lease, ack and nack them by id.

REST shape::

    GET    /groups                        the groups the principal may read
    POST   /groups                        create one (operate)             201 / 409
    GET    /groups/{name}                 settings and counts              200 / 404
    DELETE /groups/{name}                 delete it and its messages (operate)  204 / 404
    POST   /groups/{name}/receive         up to ?limit= messages for ?member=: each is
                                          leased to that member for the group's message
                                          timeout (``lease_seconds``), then handed out again
    POST   /groups/{name}/ack             {"member", "ids"}: done
    POST   /groups/{name}/nack            {"member", "ids", "action", "reason"}: retry,
                                          park or skip

A message's ``id`` is its position in the log. Ack and nack settle only the messages the
named member holds at that moment (a lease that ran out was handed to someone else: its
late ack is ignored, and ``settled`` says how many counted). Receiving, acking and nacking
need ``read`` on every category the group covers (a group of the whole log: read on every
category); creating and deleting need ``operate``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from chronik.errors import AccessDenied
from chronik.events import category_of
from chronik.scaleout.groups import MAX_NAME_LENGTH, ConsumerGroup, GroupMessage
from chronik.security import Operation
from chronik.server.routing import Call, Endpoint, Reply, access_of
from chronik.store.protocol import EventStore

__all__ = ["Groups"]

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_LENGTH, pattern="^[^\x00]+$")]


class GroupIn(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    categories: Annotated[list[Name], msgspec.Meta(max_length=100)] | None = None
    """The categories it covers (``null``: the whole log)."""
    stream_id: Annotated[str, msgspec.Meta(min_length=1, max_length=1000,
                                           pattern="^[^\x00]+$")] | None = None  # fmt: skip
    """Cover one stream instead of categories."""
    strategy: Literal["round_robin", "pinned"] = "round_robin"
    max_retries: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10
    message_timeout: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 30.0
    from_end: bool = False
    """Take only events appended from now on."""


class GroupOut(msgspec.Struct):
    name: str
    strategy: str
    categories: list[str] | None
    stream_id: str | None
    max_retries: int
    message_timeout: float
    position: int
    pending: int
    in_flight: int
    parked: int


class GroupList(msgspec.Struct):
    groups: list[GroupOut]


class ReceiveQuery(msgspec.Struct, forbid_unknown_fields=True):
    member: Name
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10


class MessageOut(msgspec.Struct):
    id: int
    """Its position in the log: what ack and nack name."""
    stream_id: str
    version: int
    event_id: str
    type: str
    data: dict[str, Any]
    metadata: dict[str, Any]
    attempts: int
    """Deliveries so far, this one included."""


class MessageList(msgspec.Struct):
    messages: list[MessageOut]
    lease_seconds: float
    """Ack or nack within this time, or the messages are handed out again."""


class AckIn(msgspec.Struct, forbid_unknown_fields=True):
    member: Name
    ids: Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]],
                   msgspec.Meta(min_length=1, max_length=1000)]  # fmt: skip


class NackIn(msgspec.Struct, forbid_unknown_fields=True):
    member: Name
    ids: Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]],
                   msgspec.Meta(min_length=1, max_length=1000)]  # fmt: skip
    action: Literal["retry", "park", "skip"] = "retry"
    reason: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class SettleOut(msgspec.Struct):
    settled: int
    """How many of the ids the member held (the others were not in flight with it)."""


def _out(facts: dict[str, Any]) -> GroupOut:
    return GroupOut(
        facts["name"], facts["strategy"], facts["categories"], facts["stream_id"],
        facts["max_retries"], facts["message_timeout"], facts["position"], facts["pending"],
        facts["in_flight"], facts["parked"],
    )  # fmt: skip


def _message(m: GroupMessage) -> MessageOut:
    return MessageOut(m.position, m.stream_id, m.version, m.event_id, m.type, m.data,
                      m.metadata, m.attempts)  # fmt: skip


class Groups:
    """The consumer-group endpoints over one store."""

    def __init__(self, store: EventStore) -> None:
        self.store = store

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("GET", "/groups", self.list_groups, "Consumer groups the caller may read",
                     {200: GroupList}, tag="groups", errors=(400, 501)),
            Endpoint("POST", "/groups", self.create_group,
                     "Create a consumer group (operate)", {201: GroupOut}, body=GroupIn,
                     tag="groups", errors=(400, 409, 413, 415, 422, 501)),
            Endpoint("GET", "/groups/{name}", self.group_info,
                     "A consumer group's settings and counts", {200: GroupOut},
                     tag="groups", errors=(400, 404, 501)),
            Endpoint("DELETE", "/groups/{name}", self.delete_group,
                     "Delete a consumer group and its messages (operate)", {204: None},
                     tag="groups", errors=(400, 404, 501)),
            Endpoint("POST", "/groups/{name}/receive", self.receive,
                     "Up to `limit` messages for `member`, leased for the group's message "
                     "timeout", {200: MessageList}, query=ReceiveQuery, tag="groups",
                     errors=(400, 404, 501)),
            Endpoint("POST", "/groups/{name}/ack", self.ack,
                     "Ack messages the member holds", {200: SettleOut}, body=AckIn,
                     tag="groups", errors=(400, 404, 413, 415, 422, 501)),
            Endpoint("POST", "/groups/{name}/nack", self.nack,
                     "Nack messages the member holds: retry, park or skip", {200: SettleOut},
                     body=NackIn, tag="groups", errors=(400, 404, 413, 415, 422, 501)),
        ]  # fmt: skip

    @staticmethod
    def _may_read(call: Call[Any, Any], group: ConsumerGroup) -> bool:
        readable = access_of(call.request).readable()
        if readable.everything:
            return True
        if group.stream_id is not None:
            return readable(category_of(group.stream_id))
        return group.categories is not None and all(readable(c) for c in group.categories)

    async def _readable_group(self, call: Call[Any, Any]) -> ConsumerGroup:
        group = await ConsumerGroup.load(self.store, call.path["name"])
        if not self._may_read(call, group):
            covers = group.stream_id or ",".join(group.categories or ["*"])
            raise AccessDenied(access_of(call.request).principal.name, "read", covers)
        return group

    async def list_groups(self, call: Call[None, None]) -> GroupList:
        groups = [g for g in await ConsumerGroup.all(self.store) if self._may_read(call, g)]
        return GroupList([_out(await g.info()) for g in groups])

    async def create_group(self, call: Call[None, GroupIn]) -> Reply:
        access_of(call.request).authorize(Operation.OPERATE, None)
        b = call.body
        group = ConsumerGroup(
            self.store, b.name, categories=b.categories, stream_id=b.stream_id,
            strategy=b.strategy, max_retries=b.max_retries, message_timeout=b.message_timeout,
        )  # fmt: skip
        start = await self.store.head_position() if b.from_end else 0
        await group.create(exist_ok=False, start_after=start)
        return Reply(_out(await group.info()), 201)

    async def group_info(self, call: Call[None, None]) -> GroupOut:
        return _out(await (await self._readable_group(call)).info())

    async def delete_group(self, call: Call[None, None]) -> Reply:
        access_of(call.request).authorize(Operation.OPERATE, None)
        group = await ConsumerGroup.load(self.store, call.path["name"])
        await group.delete()
        return Reply(None, 204)

    async def receive(self, call: Call[ReceiveQuery, None]) -> MessageList:
        group = await self._readable_group(call)
        got = await group.receive(call.query.member, limit=call.query.limit)
        return MessageList([_message(m) for m in got], group.message_timeout)

    async def ack(self, call: Call[None, AckIn]) -> SettleOut:
        group = await self._readable_group(call)
        return SettleOut(await group.settle(call.body.member, call.body.ids, "ack"))

    async def nack(self, call: Call[None, NackIn]) -> SettleOut:
        group = await self._readable_group(call)
        b = call.body
        return SettleOut(await group.settle(b.member, b.ids, b.action, reason=b.reason))
