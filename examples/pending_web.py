"""The seed's pending states, in a browser: loyalty points "updating", a transfer "pending".

One page over the chronik HTTP app. Placing an order appends ``OrderPlaced``; the page shows
"points updating…" until the ``loyalty_points`` projection has applied that position (told
over ``/live/projections`` by ``/static/chronik-pending.js``), then the fresh balance. A
transfer appends ``TransferRequested``; the page shows "transfer pending…" until the transfer
saga's stream says ``SagaCompleted`` or ``SagaCompensated`` (over ``/live/sagas/transfer``),
then the balances. No reload, no polling loop written by hand.

Run it (the workers lag ``--delay`` seconds on purpose, so the pending state is visible)::

    python examples/pending_web.py --store sqlite:///pending-demo.db --port 8001
    # open http://127.0.0.1:8001/demo

With ``--no-workers`` the page only writes; run the workers in other processes::

    chronik --store sqlite:///pending-demo.db projections run examples.loyalty:projections
    chronik --store sqlite:///pending-demo.db sagas run examples.funds_transfer:workers
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python examples/...` works

import chronik
from chronik import NewEvent
from chronik.projections import ProjectionRunner
from examples import funds_transfer, loyalty

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>chronik: pending states</title>
<style>
 body { font: 15px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 46rem; }
 section { border: 1px solid #ccc; border-radius: 6px; padding: 1rem 1.25rem; margin: 1rem 0; }
 .chronik-pending, .pending { color: #a15c00; font-style: italic; }
 output { font-weight: 600; }
</style></head>
<body>
<h1>Pending states</h1>
<p>WORKERS</p>
<section id="loyalty">
 <h2>Loyalty points</h2>
 <p>carol has <output id="points" data-chronik-state="applied">POINTS</output> points.</p>
 <button id="order">Place an order of €42.50</button>
</section>
<section id="transfer">
 <h2>Funds transfer</h2>
 <p>Balances: <output id="balances">BALANCES</output></p>
 <p>Transfer: <output id="transfer-status" data-state="none">none yet</output></p>
 <button id="transfer-bob">Transfer €30 alice → bob</button>
 <button id="transfer-carol">Transfer €20 alice → carol (closed: refunded)</button>
</section>
<script src="/static/chronik-pending.js"></script>
<script>
"use strict";
async function post(url) {
  const r = await fetch(url, { method: "POST" });
  if (!r.ok) throw new Error(url + ": " + r.status);
  return r.json();
}
document.getElementById("order").addEventListener("click", async () => {
  const placed = await post("/demo/orders");
  chronikPending({
    projection: "loyalty_points",
    position: placed.position,
    element: document.getElementById("points"),
    pendingText: "points updating…",
    fetch: "/demo/points/carol",
    render: (value, element) => { element.textContent = value.points; },
  });
});
function follow(transfer) {
  const status = document.getElementById("transfer-status");
  status.textContent = "transfer " + transfer.id + " pending…";
  status.className = "pending";
  status.dataset.state = "pending";
  const live = new EventSource("/live/sagas/transfer?after=" + transfer.after);
  live.addEventListener("saga", async (message) => {
    const event = JSON.parse(message.data);
    if (event.stream_id !== "saga_transfer-" + transfer.id) return;
    const ended = { SagaCompleted: "completed", SagaCompensated: "refunded" }[event.type];
    if (!ended) return;
    live.close();
    const balances = await (await fetch("/demo/balances")).json();
    document.getElementById("balances").textContent = balances.text;
    status.textContent = "transfer " + transfer.id + " " + ended;
    status.className = "";
    status.dataset.state = ended;
  });
}
const transfers = [["transfer-bob", "bob", 30], ["transfer-carol", "carol", 20]];
for (const [button, target, amount] of transfers) {
  document.getElementById(button).addEventListener("click", async () => {
    follow(await post("/demo/transfers?target=" + target + "&amount=" + amount));
  });
}
</script>
</body></html>
"""


async def balances(store: chronik.EventStore) -> dict[str, int]:
    handler = chronik.CommandHandler(
        store, funds_transfer.account, registry=funds_transfer.registry
    )
    out: dict[str, int] = {}
    for name in ("alice", "bob", "carol"):
        out[name] = (await handler.load(f"account-{name}")).state.balance
    return out


async def open_accounts(store: chronik.EventStore) -> None:
    """alice (100), bob and a closed carol, once: a second start finds them there."""
    handler = chronik.CommandHandler(
        store, funds_transfer.account, registry=funds_transfer.registry
    )
    if (await handler.load("account-alice")).version >= 0:
        return
    for name in ("alice", "bob", "carol"):
        await handler.handle(f"account-{name}", {"type": "Open", "owner": name})
    await handler.handle("account-alice", {"type": "Credit", "amount": 100})
    await handler.handle("account-carol", {"type": "Close"})


def web(store: chronik.EventStore, delay: float, workers: bool = True) -> object:
    """The chronik HTTP app (API, live push, console) with the demo's page and routes."""
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse
    from starlette.routing import Route

    from chronik.server import create_app

    async def page(request: Request) -> HTMLResponse:
        points = await _points(store)
        text = _balances_text(await balances(store))
        html = PAGE.replace("WORKERS", _workers_text(delay, workers)).replace("POINTS", str(points))
        return HTMLResponse(html.replace("BALANCES", text))

    async def order(request: Request) -> JSONResponse:
        result = await store.append(
            f"order-{uuid.uuid4().hex[:12]}",
            [NewEvent("OrderPlaced", {"customer": "carol", "total_eur": 42.5})],
            expected_version=chronik.NO_STREAM,
        )
        return JSONResponse({"position": str(result.position)})

    async def points(request: Request) -> JSONResponse:
        return JSONResponse({"points": await _points(store)})

    async def transfer(request: Request) -> JSONResponse:
        target = request.query_params.get("target", "bob")
        text = request.query_params.get("amount", "30")
        amount = int(text) if text.isascii() and text.isdigit() and len(text) < 6 else 0
        if target not in ("bob", "carol") or not 0 < amount <= 1000:
            return JSONResponse({"error": "target is bob or carol, amount 1..1000"}, 400)
        after = await store.head_position()
        transfer_id = uuid.uuid4().hex[:8]
        await funds_transfer.request_transfer(store, transfer_id, "alice", target, amount)
        return JSONResponse({"id": transfer_id, "after": str(after)})

    async def balances_now(request: Request) -> JSONResponse:
        found = await balances(store)
        return JSONResponse({**found, "text": _balances_text(found)})

    app = chronik.App(
        registry=funds_transfer.registry,
        projections=loyalty.projections(),
        extras={"sagas": [funds_transfer.transfer_saga]},
    )
    routes = [
        Route("/demo", page),
        Route("/demo/orders", order, methods=["POST"]),
        Route("/demo/points/{customer}", points),
        Route("/demo/transfers", transfer, methods=["POST"]),
        Route("/demo/balances", balances_now),
    ]
    return create_app(store, app=app, extra_routes=routes)


async def _points(store: chronik.EventStore) -> int:
    try:
        return await loyalty.points_of(store, "carol")
    except chronik.ChronikError:  # the projection's table is not there before its setup
        return 0


def _workers_text(delay: float, workers: bool) -> str:
    if workers:
        return f"The workers apply each write about {delay:g} s late, on purpose: watch."
    return (
        "No worker runs in this process: each write stays pending until the projection "
        "and the saga run elsewhere (see examples/pending_web.py)."
    )


def _balances_text(found: dict[str, int]) -> str:
    return ", ".join(f"{name} €{amount}" for name, amount in found.items())


async def run_workers(store: chronik.EventStore, delay: float) -> None:
    """The loyalty projection and the transfer saga, each pass ``delay`` s after the last."""
    runner = ProjectionRunner(store, loyalty.projections(), poll_interval=0.1)
    while True:
        await asyncio.sleep(delay)
        await runner.catch_up()
        await funds_transfer.settle(store)


@contextlib.asynccontextmanager
async def demo(url: str, delay: float, workers: bool) -> AsyncIterator[object]:
    """The store opened, accounts there, workers running (unless not): the ASGI app."""
    async with await chronik.connect(url) as store:
        await open_accounts(store)
        # the projection is known to the store (at position 0) before any worker runs, so
        # the page can wait for it: a worker started later, anywhere, takes it from there
        await ProjectionRunner(store, loyalty.projections()).setup()
        task = asyncio.create_task(run_workers(store, delay)) if workers else None
        try:
            yield web(store, delay, workers)
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def serve(url: str, host: str, port: int, delay: float, workers: bool) -> None:
    import uvicorn

    async with demo(url, delay, workers) as app:
        config = uvicorn.Config(app, host=host, port=port, log_level="warning")  # type: ignore[arg-type]
        print(f"open http://{host}:{port}/demo (Ctrl-C stops)", flush=True)
        await uvicorn.Server(config).serve()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="sqlite:///pending-demo.db")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--delay", type=float, default=1.5, help="worker lag, seconds")
    parser.add_argument("--no-workers", dest="workers", action="store_false")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.store, args.host, args.port, args.delay, args.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
