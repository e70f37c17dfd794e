"""The seed's stuck order: order fulfillment across services, found with trace and replay.

Four services work on each order through events: orders (``order-ID``), payments
(``payment-ID``), the warehouse (``stock-SKU``) and shipping (``shipment-ID``). Each reacts
to the others' events through a policy (a projection that sends a command), and chronik
stamps every event with the checkout's correlation id and the id of the event that caused it.

Order 1001 ships. Order 1002 gets stuck: the payment gateway answers attempt 1 late, after
attempt 2 was authorized, and the order service lets that stale decline undo the payment.
docs/debugging.md finds it with ``chronik trace`` and ``chronik replay --diff``::

    python examples/order_fulfillment.py --store sqlite:///orders.db --fresh
    chronik --store sqlite:///orders.db trace checkout-1002
    chronik --store sqlite:///orders.db replay order-1002 --diff \\
        --app examples.order_fulfillment:app
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import chronik
import chronik.telemetry
from chronik import CommandHandler, Decider, RecordedEvent
from chronik.projections import ExternalProjection, ProjectionRunner

registry = chronik.EventRegistry()
log = logging.getLogger("examples.order_fulfillment")


# -- events -------------------------------------------------------------------------------
@registry.event("OrderPlaced")
@dataclass(frozen=True)
class OrderPlaced:
    order_id: str
    customer: str
    sku: str
    quantity: int
    total_cents: int


@registry.event("PaymentConfirmed")
@dataclass(frozen=True)
class PaymentConfirmed:
    attempt: int


@registry.event("PaymentFailed")
@dataclass(frozen=True)
class PaymentFailed:
    attempt: int
    reason: str


@registry.event("StockConfirmed")
@dataclass(frozen=True)
class StockConfirmed:
    sku: str


@registry.event("ShipmentRequested")
@dataclass(frozen=True)
class ShipmentRequested:
    order_id: str


@registry.event("OrderShipped")
@dataclass(frozen=True)
class OrderShipped:
    tracking: str


@registry.event("PaymentRequested")
@dataclass(frozen=True)
class PaymentRequested:
    order_id: str
    attempt: int
    amount_cents: int


@registry.event("PaymentAuthorized")
@dataclass(frozen=True)
class PaymentAuthorized:
    order_id: str
    attempt: int


@registry.event("PaymentDeclined")
@dataclass(frozen=True)
class PaymentDeclined:
    order_id: str
    attempt: int
    reason: str


@registry.event("StockReserved")
@dataclass(frozen=True)
class StockReserved:
    order_id: str
    sku: str
    quantity: int


@registry.event("ShipmentScheduled")
@dataclass(frozen=True)
class ShipmentScheduled:
    order_id: str
    carrier: str
    tracking: str


# -- orders ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlaceOrder:
    order_id: str
    customer: str
    sku: str
    quantity: int
    total_cents: int


@dataclass(frozen=True)
class ConfirmPayment:
    attempt: int


@dataclass(frozen=True)
class FailPayment:
    attempt: int
    reason: str


@dataclass(frozen=True)
class ConfirmStock:
    sku: str


@dataclass(frozen=True)
class MarkShipped:
    tracking: str


@dataclass(frozen=True)
class Order:
    order_id: str = ""
    status: str = "new"
    customer: str = ""
    total_cents: int = 0
    paid: bool = False
    paid_attempt: int | None = None
    stock_reserved: bool = False
    tracking: str | None = None


def decide_order(command: Any, order: Order) -> list[Any]:
    match command:
        case PlaceOrder() if order.status == "new":
            c = command
            return [OrderPlaced(c.order_id, c.customer, c.sku, c.quantity, c.total_cents)]
        case ConfirmPayment(attempt) if not order.paid:
            ship = [ShipmentRequested(order.order_id)] if order.stock_reserved else []
            return [PaymentConfirmed(attempt), *ship]
        case FailPayment(attempt, reason):
            # THE BUG: a decline of an earlier attempt, arriving late, undoes the payment of
            # a later one. The fix: `case FailPayment(attempt, reason) if not order.paid:`.
            return [PaymentFailed(attempt, reason)]
        case ConfirmStock(sku) if not order.stock_reserved:
            ship = [ShipmentRequested(order.order_id)] if order.paid else []
            return [StockConfirmed(sku), *ship]
        case MarkShipped(tracking) if order.status != "shipped":
            return [OrderShipped(tracking)]
    return []


def evolve_order(order: Order, event: Any) -> Order:
    match event:
        case OrderPlaced():
            return replace(
                order,
                order_id=event.order_id,
                status="placed",
                customer=event.customer,
                total_cents=event.total_cents,
            )
        case PaymentConfirmed(attempt):
            return replace(order, status="paid", paid=True, paid_attempt=attempt)
        case PaymentFailed():
            return replace(order, status="payment_failed", paid=False, paid_attempt=None)
        case StockConfirmed():
            return replace(order, stock_reserved=True)
        case ShipmentRequested():
            return replace(order, status="ready_to_ship")
        case OrderShipped(tracking):
            return replace(order, status="shipped", tracking=tracking)
    return order


# -- payments, warehouse, shipping -----------------------------------------------------------
@dataclass(frozen=True)
class RequestPayment:
    order_id: str
    amount_cents: int


@dataclass(frozen=True)
class RecordGatewayResult:
    order_id: str
    attempt: int
    approved: bool
    reason: str = ""


def decide_payment(command: Any, attempts: int) -> list[Any]:
    match command:
        case RequestPayment(order_id, amount):
            return [PaymentRequested(order_id, attempts + 1, amount)]
        case RecordGatewayResult(order_id, attempt, True):
            return [PaymentAuthorized(order_id, attempt)]
        case RecordGatewayResult(order_id, attempt, False, reason):
            return [PaymentDeclined(order_id, attempt, reason)]
    return []


def evolve_payment(attempts: int, event: Any) -> int:
    return event.attempt if isinstance(event, PaymentRequested) else attempts


@dataclass(frozen=True)
class ReserveStock:
    order_id: str
    sku: str
    quantity: int


@dataclass(frozen=True)
class ScheduleShipment:
    order_id: str


order_decider: Decider[Any, Any, Order] = Decider(decide_order, evolve_order, Order)
payment_decider: Decider[Any, Any, int] = Decider(decide_payment, evolve_payment, lambda: 0)
stock_decider: Decider[Any, Any, int] = Decider(
    lambda c, on_hand: [StockReserved(c.order_id, c.sku, c.quantity)],
    lambda on_hand, e: on_hand - e.quantity,
    lambda: 100,
)
shipment_decider: Decider[Any, Any, str | None] = Decider(
    lambda c, s: [] if s else [ShipmentScheduled(c.order_id, "DHL", f"TRK-{c.order_id}")],
    lambda s, e: e.tracking,
    lambda: None,
)

app = chronik.App(
    registry=registry,
    deciders={
        "order": order_decider,
        "payment": payment_decider,
        "stock": stock_decider,
        "shipment": shipment_decider,
    },
)
"""For ``chronik replay --app examples.order_fulfillment:app``."""


# -- the services' policies: react to an event with a command ----------------------------------
class Services:
    """One command handler per service, and the policies that connect them."""

    def __init__(self, store: chronik.EventStore) -> None:
        self.store = store
        self.orders = CommandHandler(store, order_decider, registry=registry)
        self.payments = CommandHandler(store, payment_decider, registry=registry)
        self.warehouse = CommandHandler(store, stock_decider, registry=registry)
        self.shipping = CommandHandler(store, shipment_decider, registry=registry)

    def policies(self) -> list[ExternalProjection]:
        return [
            _Policy("payments", ["OrderPlaced"], self._payments),
            _Policy("warehouse", ["OrderPlaced"], self._warehouse),
            _Policy(
                "orders",
                ["PaymentAuthorized", "PaymentDeclined", "StockReserved", "ShipmentScheduled"],
                self._orders,
            ),
            _Policy("shipping", ["ShipmentRequested"], self._shipping),
        ]

    async def _payments(self, event: Any) -> None:
        await self.payments.handle(
            f"payment-{event.order_id}", RequestPayment(event.order_id, event.total_cents)
        )

    async def _warehouse(self, event: Any) -> None:
        await self.warehouse.handle(
            f"stock-{event.sku}", ReserveStock(event.order_id, event.sku, event.quantity)
        )

    async def _orders(self, event: Any) -> None:
        command: Any
        match event:
            case PaymentAuthorized(order_id, attempt):
                command = ConfirmPayment(attempt)
            case PaymentDeclined(order_id, attempt, reason):
                command = FailPayment(attempt, reason)
            case StockReserved(order_id, sku):
                command = ConfirmStock(sku)
            case ShipmentScheduled(order_id, _, tracking):
                command = MarkShipped(tracking)
        log.info("order-%s: %s after %s", order_id, type(command).__name__, type(event).__name__)
        await self.orders.handle(f"order-{order_id}", command)

    async def _shipping(self, event: Any) -> None:
        await self.shipping.handle(f"shipment-{event.order_id}", ScheduleShipment(event.order_id))

    async def gateway_answers(
        self, request: RecordedEvent, *, approved: bool, reason: str = ""
    ) -> None:
        """The payment gateway's webhook: it echoes our request's ids, so the answer is
        caused by the request and belongs to the checkout's correlation."""
        asked = registry.decode(request)
        with chronik.context(
            correlation_id=request.correlation_id, causation_id=str(request.event_id)
        ):
            await self.payments.handle(
                request.stream_id,
                RecordGatewayResult(asked.order_id, asked.attempt, approved, reason),
            )

    async def payment_times_out(self, request: RecordedEvent) -> None:
        """The payment service's timer: no answer to a request in time, so ask again."""
        asked = registry.decode(request)
        with chronik.context(
            correlation_id=request.correlation_id, causation_id=str(request.event_id)
        ):
            await self.payments.handle(
                request.stream_id, RequestPayment(asked.order_id, asked.amount_cents)
            )


class _Policy(ExternalProjection):
    def __init__(self, name: str, types: list[str], react: Any) -> None:
        self.name = name
        self.event_types = types
        self._react = react

    async def handle(self, event: RecordedEvent) -> None:
        await self._react(registry.decode(event))


async def _last(store: chronik.EventStore, stream_id: str) -> RecordedEvent:
    async for event in store.read_stream(stream_id, backwards=True, limit=1):
        return event
    raise chronik.StreamNotFound(stream_id)


async def run(url: str, say: Any = print) -> dict[str, Any]:
    """Two checkouts: 1001 ships, 1002 gets stuck. Returns each order's state (for tests)."""
    async with await chronik.connect(url) as store:
        if await store.stream_version("order-1001") is not None:
            raise chronik.ChronikError(f"{url} has orders already: use a fresh store")
        services = Services(store)
        runner = ProjectionRunner(store, services.policies())

        async def settle() -> None:
            while await runner.catch_up():
                pass

        # order 1001: the happy path
        with chronik.context(correlation_id="checkout-1001", actor="web"):
            await services.orders.handle("order-1001", PlaceOrder("1001", "ada", "kettle", 1, 4900))
        await settle()
        await services.gateway_answers(await _last(store, "payment-1001"), approved=True)
        await settle()

        # order 1002: the gateway is slow with attempt 1
        with chronik.context(correlation_id="checkout-1002", actor="web"):
            await services.orders.handle("order-1002", PlaceOrder("1002", "bob", "kettle", 2, 9800))
        await runner.catch_up("payments")
        attempt_1 = await _last(store, "payment-1002")
        await services.payment_times_out(attempt_1)
        attempt_2 = await _last(store, "payment-1002")
        await services.gateway_answers(attempt_2, approved=True)
        await runner.catch_up("orders")
        await services.gateway_answers(attempt_1, approved=False, reason="issuer timeout")
        await runner.catch_up("orders")
        await settle()

        states = {}
        for order_id in ("1001", "1002"):
            loaded = await services.orders.load(f"order-{order_id}")
            states[order_id] = loaded.state
            say(f"order-{order_id}: {loaded.state.status} at version {loaded.version}")
        payment = [e.type async for e in store.read_stream("payment-1002")]
        say(f"payment-1002: {', '.join(payment)}")
        return {
            "order-1001": states["1001"].status,
            "order-1002": states["1002"].status,
            "payment-1002": payment,
        }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--store", default="sqlite:///orders.db")
    parser.add_argument("--fresh", action="store_true", help="delete the SQLite file first")
    parser.add_argument("--json-logs", action="store_true", help="JSON log lines on stderr")
    args = parser.parse_args(argv)
    if args.json_logs:
        handler = logging.StreamHandler()
        handler.addFilter(chronik.telemetry.LogContextFilter())
        handler.setFormatter(chronik.telemetry.JsonLogFormatter())
        logging.basicConfig(level=logging.INFO, handlers=[handler])
    if args.fresh and args.store.startswith("sqlite:///"):
        path = args.store[len("sqlite:///") :]
        for suffix in ("", "-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)
    asyncio.run(run(args.store))
    return 0


if __name__ == "__main__":
    sys.exit(main())
