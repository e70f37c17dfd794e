"""The web console in a real browser (Debian's Chromium through Playwright) against a real
server (uvicorn on a free loopback port): one test per page, each with a screenshot, none
allowed a request outside loopback; markup in stream ids and data stays text; an append by
another process turns a "pending" checkpoint into the new position without a reload.

``CHRONIK_UPDATE_SCREENSHOTS=1`` also writes the dashboard to docs/images/ for the README.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from examples import funds_transfer as ft

import chronik
from chronik import NewEvent
from chronik.projections import Projection, ProjectionRunner
from chronik.sagas import SagaRunner
from chronik.store.protocol import Tx
from tests.server.conftest import GuardedPage

pytestmark = pytest.mark.timeout(120)
T = TypeVar("T")

ROOT = Path(__file__).parent.parent.parent
SCREENSHOT = ROOT / "docs" / "images" / "console-dashboard.png"
INJECTED = "<script>window.__pwned = 1</script>"
INJECTED_DATA = '<img src="x" onerror="window.__pwned = 1">'

# -- the application the console is shown with ---------------------------------------------

registry = chronik.EventRegistry()


@registry.event("CartOpened")
@dataclass(frozen=True)
class CartOpened:
    owner: str


@registry.event("ItemAdded", version=2)
@dataclass(frozen=True)
class ItemAdded:
    sku: str
    price: int
    currency: str


@registry.upcaster("ItemAdded", 1)
def _add_currency(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "currency": "EUR"}


@registry.event("CartCheckedOut")
@dataclass(frozen=True)
class CartCheckedOut:
    pass


@dataclass(frozen=True)
class Cart:
    owner: str = ""
    items: tuple[str, ...] = ()
    total: int = 0
    checked_out: bool = False


def _evolve(state: Cart, event: object) -> Cart:
    match event:
        case CartOpened(owner):
            return replace(state, owner=owner)
        case ItemAdded(sku, price, _):
            return replace(state, items=(*state.items, sku), total=state.total + price)
        case CartCheckedOut():
            return replace(state, checked_out=True)
    return state


def _decide(command: object, state: Cart) -> Sequence[object]:
    return []


cart = chronik.Decider(decide=_decide, evolve=_evolve, initial_state=Cart)
FAILING = {"poison": True}
SLOW = {"seconds": 0.0}


class CartTotals(Projection):
    name = "cart_totals"
    event_types = ["ItemAdded", "Poison"]
    max_attempts = 1
    retry_backoff = 0.0

    async def setup(self, tx: Tx) -> None:
        await tx.execute(
            "CREATE TABLE IF NOT EXISTS cart_totals_v1 (cart TEXT PRIMARY KEY, total INTEGER)"
        )

    async def teardown(self, tx: Tx) -> None:
        await tx.execute("DROP TABLE IF EXISTS cart_totals_v1")

    async def handle(self, event: chronik.RecordedEvent, tx: Tx) -> None:
        await asyncio.sleep(SLOW["seconds"])
        if event.type == "Poison":
            if FAILING["poison"]:
                raise ValueError("cannot digest <b>poison</b>")
            return
        await tx.execute(
            "INSERT INTO cart_totals_v1 (cart, total) VALUES (:cart, :price) "
            "ON CONFLICT (cart) DO UPDATE SET total = cart_totals_v1.total + excluded.total",
            {"cart": event.stream_id, "price": int(event.data["price"])},
        )


def make_app() -> chronik.App:
    return chronik.App(
        registry=registry,
        deciders={"cart": cart},
        projections=[CartTotals()],
        extras={"sagas": [ft.transfer_saga]},
    )


# -- the store, seeded once per module and copied for each test ------------------------------

CORRELATION = "checkout-7"


async def _seed(url: str) -> None:
    async with await chronik.connect(url) as store:
        root, child, grandchild = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

        def meta(cause: uuid.UUID | None = None) -> dict[str, str]:
            out = {"correlation_id": CORRELATION, "user": "dora"}
            return out if cause is None else {**out, "causation_id": str(cause)}

        await store.append("cart-1", [
            NewEvent("CartOpened", {"owner": "dora"}, meta(), event_id=root),
            NewEvent("ItemAdded", {"sku": "tea", "price": 4}, meta(root), schema_version=1,
                     event_id=child),
            NewEvent("ItemAdded", {"sku": "cup", "price": 9, "currency": "EUR"}, meta(child),
                     schema_version=2, event_id=grandchild),
        ])  # fmt: skip
        await store.append("shipment-1", [NewEvent("ShipmentRequested", {"cart": "cart-1"},
                                                    meta(grandchild))])  # fmt: skip
        await store.append("cart-1", [NewEvent("CartCheckedOut", {}, meta(grandchild))])
        await store.append("cart-2", [NewEvent("CartOpened", {"owner": "eve"})])
        await store.append(f"cart-{INJECTED}", [
            NewEvent("CartOpened", {"owner": INJECTED_DATA},
                     {"correlation_id": INJECTED}),
        ])  # fmt: skip
        await store.append("cart-3", [NewEvent("Poison", {"n": 1}), NewEvent("Poison", {"n": 2})])
        runner = ProjectionRunner(store, [CartTotals()])
        await runner.catch_up()
        # sagas: t1 completes, t2 is compensated (carol's account is closed), t3 waits
        handler = chronik.CommandHandler(store, ft.account, registry=ft.registry)
        for name in ("alice", "bob", "carol"):
            await handler.handle(f"account-{name}", {"type": "Open", "owner": name})
        await handler.handle("account-alice", {"type": "Credit", "amount": 100})
        await handler.handle("account-carol", {"type": "Close"})
        await ft.request_transfer(store, "t1", "alice", "bob", 30)
        await ft.request_transfer(store, "t2", "alice", "carol", 20)
        await ft.settle(store)
        await store.append("transfer-t3", [NewEvent("TransferRequested", {
            "source": "alice", "target": "bob", "amount": 5, "timeout": 3600})])  # fmt: skip
        await SagaRunner(store, ft.transfer_saga).run_once()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("console") / "seed.db"
    run(_seed(f"sqlite:///{path}"))
    return path


@dataclass
class Console:
    url: str
    """The server's base URL (the console is under /console/)."""
    store_url: str
    page: GuardedPage
    shots: Path

    def open(self, path: str) -> Any:
        response = self.page.page.goto(self.url + "/console" + path)
        assert response is not None and response.status == 200, (path, response)
        return self.page.page

    def shot(self, name: str) -> Path:
        target = self.shots / f"{name}.png"
        self.page.page.screenshot(path=str(target), full_page=True)
        return target


@pytest.fixture
def console(
    seeded: Path, tmp_path: Path, serve: Callable[..., str], loopback_page: GuardedPage
) -> Iterator[Console]:
    """A server over a fresh copy of the seeded store, with the app, and a guarded page."""
    db = tmp_path / "events.db"
    shutil.copy(seeded, db)
    store_url = f"sqlite:///{db}"
    FAILING["poison"], SLOW["seconds"] = True, 0.0
    yield Console(serve(store_url, app=make_app()), store_url, loopback_page, tmp_path)
    loopback_page.check()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end in a thread of its own (Playwright's loop holds this one)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _text(page: Any) -> str:
    return str(page.inner_text("main"))


# -- one test per page -----------------------------------------------------------------------


def test_dashboard(console: Console) -> None:
    page = console.open("/")
    text = _text(page).lower()  # the cards' titles are upper case by CSS
    for expected in ("head position", "appended, last minute", "cart_totals", "dead letters",
                     "sagas", "latest events"):  # fmt: skip
        assert expected in text
    assert page.get_by_test_id("checkpoint-cart_totals").inner_text() != ""
    dead = page.locator(".card", has_text="Dead letters").locator(".big")
    assert dead.inner_text() == "2"
    sagas = page.locator(".card", has_text="Sagas")
    assert "1 compensated" not in sagas.inner_text()  # counts by status are shown apart
    assert "failed" in sagas.inner_text()
    page.wait_for_selector(".live.on", timeout=5000)  # the live stream is open
    console.shot("dashboard")
    if os.environ.get("CHRONIK_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_empty_store_shows_empty_states(
    tmp_path: Path, serve: Callable[..., str], loopback_page: GuardedPage
) -> None:
    base = serve(f"sqlite:///{tmp_path}/empty.db")  # and no --app
    page = loopback_page.page
    for path, expected in [
        ("/", "The store is empty"),
        ("/streams", "The store is empty"),
        ("/projections", "No projection to show"),
        ("/dead-letters", "No dead letters"),
        ("/sagas", "No saga instance yet"),
        ("/correlation", "Give a correlation id"),
    ]:
        response = page.goto(base + "/console" + path)
        assert response is not None and response.status == 200, path
        assert expected in _text(page), path
    page.screenshot(path=str(tmp_path / "empty.png"), full_page=True)
    missing = httpx.get(base + "/console/time-travel?stream_id=cart-1")
    assert missing.status_code == 404 and "no stream &#39;cart-1&#39;" in missing.text


def test_stream_browser_searches(console: Console) -> None:
    page = console.open("/streams?prefix=cart-")
    rows = page.locator("table.streams tbody tr")
    assert rows.count() == 4  # cart-1, cart-2, cart-3 and the one with markup in its id
    page = console.open("/streams?type=ItemAdded")
    assert page.locator("table.events tbody tr").count() == 2
    page = console.open(f"/streams?correlation_id={CORRELATION}")
    assert "5 event(s) of correlation" in _text(page)
    page = console.open("/streams?since=2000-01-01T00:00&prefix=shipment-")
    assert page.locator("table.events tbody tr").count() == 1
    page = console.open("/streams?until=2000-01-01T00:00&type=CartOpened")
    assert "No matching event" in _text(page)
    page = console.open("/streams")
    page.fill("input[name=prefix]", "account-")
    page.click("form.search button[type=submit]")
    page.wait_for_url(re.compile(r".*prefix=account-.*"))
    assert page.locator("table.streams tbody tr").count() == 3
    console.shot("streams")


def test_event_detail_shows_stored_and_upcast(console: Console) -> None:
    page = console.open("/event?stream_id=cart-1&version=1")
    stored = page.get_by_test_id("stored-data").inner_text()
    assert '"sku": "tea"' in stored and "currency" not in stored
    upcast = page.get_by_test_id("upcast-data").inner_text()
    assert '"currency": "EUR"' in upcast
    assert "ItemAdded v2" in _text(page)
    assert '"user": "dora"' in page.get_by_test_id("metadata").inner_text()
    console.shot("event")
    page = console.open("/event?stream_id=cart-1&version=2")  # stored at the current version
    assert "read as it is" in _text(page)


def test_time_travel_slides_over_versions(console: Console) -> None:
    page = console.open("/time-travel?stream_id=cart-1")
    state = page.locator("[data-step]:not([hidden]) [data-testid=state]")
    assert '"checked_out": true' in state.inner_text()
    slider = page.locator("input[type=range]")
    slider.fill("1")  # no reload: the step is on the page already
    visible = page.locator("[data-step]:not([hidden])")
    assert visible.get_attribute("data-step") == "1"
    assert '"total": 4' in visible.get_by_test_id("state").inner_text()
    assert "items[0]" in visible.locator("table.changes").inner_text()
    assert page.locator("[data-version-label]").inner_text() == "1"
    console.shot("time-travel")


def test_time_travel_without_app_says_how(
    seeded: Path, tmp_path: Path, serve: Callable[..., str], loopback_page: GuardedPage
) -> None:
    shutil.copy(seeded, tmp_path / "events.db")
    base = serve(f"sqlite:///{tmp_path}/events.db")
    page = loopback_page.page
    page.goto(base + "/console/time-travel?stream_id=cart-1")
    assert "Time travel needs your application's deciders" in _text(page)
    assert "--app MODULE:OBJECT" in _text(page)
    page.screenshot(path=str(tmp_path / "time-travel-no-app.png"), full_page=True)


def test_correlation_graph_is_a_tree(console: Console) -> None:
    page = console.open(f"/correlation?correlation_id={CORRELATION}")
    tree = page.get_by_test_id("trace-tree")
    # CartOpened → ItemAdded v1 → ItemAdded v2 → {ShipmentRequested, CartCheckedOut}
    nested = tree.locator("ul ul ul ul li")
    assert nested.count() == 2
    assert "ShipmentRequested" in nested.first.inner_text()
    assert "flowchart TD" in str(page.locator("details pre").text_content())
    console.shot("correlation")


def test_projections_rebuild_with_progress(console: Console) -> None:
    page = console.open("/projections")
    assert "cart_totals" in _text(page)
    SLOW["seconds"] = 0.3  # each event takes a while: the progress shows
    page.check("input[name=confirm]")
    page.click("form[action$='/projections/rebuild'] button[type=submit]")
    page.wait_for_url(re.compile(r".*notice=rebuild.*"))
    page.get_by_test_id("rebuild-progress").wait_for(timeout=5_000)
    console.shot("rebuilding")
    SLOW["seconds"] = 0.0
    page.get_by_test_id("rebuild-done").wait_for(timeout=10_000)  # no reload: polled
    assert "events applied" in page.get_by_test_id("rebuild-done").inner_text()
    console.shot("projections")


def test_projections_pause_and_resume(console: Console) -> None:
    page = console.open("/projections")
    page.fill("form[action$='/projections/pause'] input[name=by]", "<b>night</b> ops")
    page.get_by_test_id("pause-cart_totals").click()
    page.wait_for_url(re.compile(r".*notice=paused.*"))
    assert "cart_totals paused" in _text(page)
    page.get_by_test_id("paused-cart_totals").wait_for()
    assert "by <b>night</b> ops" in _text(page)  # shown as text, not markup
    state = run(_paused(console.store_url))
    assert state == {"cart_totals": "<b>night</b> ops"}
    console.shot("projection-paused")
    page.get_by_test_id("resume-cart_totals").click()
    page.wait_for_url(re.compile(r".*notice=resumed.*"))
    assert "cart_totals resumed" in _text(page)
    assert page.get_by_test_id("paused-cart_totals").count() == 0
    assert run(_paused(console.store_url)) == {}


async def _paused(url: str) -> dict[str, str]:
    from chronik.projections.control import paused_projections

    async with await chronik.connect(url) as store:
        return {name: p.by for name, p in (await paused_projections(store)).items()}


def test_dead_letters_inspect_retry_skip(console: Console) -> None:
    page = console.open("/dead-letters")
    rows = page.locator("table.letters tbody tr")
    assert rows.count() == 2
    page.locator("table.letters tbody tr a", has_text=re.compile(r"^\d+$")).first.click()
    assert "cannot digest <b>poison</b>" in page.get_by_test_id("letter-error").inner_text()
    console.shot("dead-letter")
    page.go_back()
    FAILING["poison"] = False  # the handler is fixed
    rows.first.locator("form[action$='/retry'] button").click()
    page.wait_for_url(re.compile(r".*notice=retried.*"))
    assert "1 fixed, 0 still failing" in _text(page)
    assert rows.count() == 1
    page.once("dialog", lambda dialog: dialog.accept())
    rows.first.locator("form[action$='/skip'] button").click()
    page.wait_for_url(re.compile(r".*notice=skipped.*"))
    assert "No dead letters" in _text(page)
    console.shot("dead-letters")


def test_forms_refuse_other_origins_and_missing_tokens(console: Console) -> None:
    letters = console.url + "/console/dead-letters/skip"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    r = httpx.post(letters, content=b"id=1", headers=form)
    assert r.status_code == 403 and "token" in r.text
    r = httpx.post(letters, content=b"id=1&csrf=x", headers={**form, "Origin": "http://evil"})
    assert r.status_code == 403 and "CrossSiteRequest" in r.text  # the server's origin guard
    page = console.open("/dead-letters")
    assert page.locator("table.letters tbody tr").count() == 2  # nothing was skipped


def test_sagas_state_deadlines_compensations(console: Console) -> None:
    page = console.open("/sagas")
    text = _text(page)
    assert "transfer" in text and "Pending deadlines" in text
    assert page.locator("table.deadlines tbody tr").count() == 1  # t3's timeout
    assert "in 59 min" in page.locator("table.deadlines").inner_text()
    page.click("table.instances a:text-is('t2')")
    page.wait_for_url(re.compile(r".*/saga\?.*key=t2"))
    text = _text(page)
    assert "compensated" in text
    assert "start:carol:20" in page.get_by_test_id("saga-state").inner_text()
    assert "SagaCompensated" in page.locator("table.history").inner_text()
    assert page.locator("table.commands tr.compensation").count() >= 1
    console.shot("saga")


def test_markup_in_stream_ids_and_data_stays_text(console: Console) -> None:
    page = console.page.page
    stream_id = f"cart-{INJECTED}"
    for path in ("/streams?prefix=cart-", f"/streams?correlation_id={INJECTED}"):
        console.open(path)
        assert INJECTED in _text(page), path
    page.get_by_role("link", name=stream_id).first.click()
    page.get_by_role("link", name="v0").click()
    stored = page.get_by_test_id("stored-data").inner_text()
    assert '"owner": "<img src=\\"x\\" onerror=' in stored  # as JSON text, not an element
    assert page.locator("main img").count() == 0
    console.open(f"/correlation?correlation_id={INJECTED}")
    assert INJECTED in _text(page)
    assert page.evaluate("window.__pwned") is None
    console.shot("markup")


# -- live: an append in another process -----------------------------------------------------

APPEND = """
import asyncio, sys
import chronik

async def main():
    async with await chronik.connect(sys.argv[1]) as store:
        event = chronik.NewEvent("ItemAdded", {"sku": "jam", "price": 5, "currency": "EUR"},
                                 schema_version=2)
        print((await store.append("cart-2", [event])).position)

asyncio.run(main())
"""


def test_append_elsewhere_turns_pending_into_the_new_position(console: Console) -> None:
    page = console.open("/")
    page.wait_for_selector(".live.on", timeout=5000)
    page.evaluate("window.__same_page = true")
    cell = page.get_by_test_id("checkpoint-cart_totals")
    before = cell.inner_text()
    done = subprocess.run([sys.executable, "-c", APPEND, console.store_url], cwd=ROOT,
                          capture_output=True, text=True, check=True, timeout=30)  # fmt: skip
    position = int(done.stdout.strip())
    pending = page.locator("[data-testid=checkpoint-cart_totals][data-chronik-state=pending]")
    pending.wait_for(timeout=10_000)
    assert pending.inner_text() == "pending…"
    console.shot("pending")

    async def apply() -> None:  # the projection runs here, in the test's process
        async with await chronik.connect(console.store_url) as store:
            await ProjectionRunner(store, [CartTotals()]).catch_up()

    run(apply())
    shown = f"{position:,}".replace(",", "\u202f")
    page.wait_for_function(
        "([shown]) => { const el = document.querySelector("
        "'[data-testid=checkpoint-cart_totals]'); return el && el.textContent === shown; }",
        arg=[shown],
        timeout=10_000,
    )
    assert cell.inner_text() != before
    assert page.evaluate("window.__same_page") is True  # no reload
    console.shot("applied")


# -- PostgreSQL: the same pages render (its SQL, its wide positions) -----------------------


@pytest.mark.postgres
def test_every_page_renders_on_postgres(pg_url: str, serve: Callable[..., str]) -> None:
    run(_seed(pg_url))
    base = serve(pg_url, app=make_app()) + "/console"
    for path in [
        "/", "/fragments/dashboard", "/streams?prefix=cart-", "/streams?type=ItemAdded",
        "/streams?since=2000-01-01T00:00", f"/streams?correlation_id={CORRELATION}",
        "/stream?stream_id=cart-1", "/event?stream_id=cart-1&version=1",
        "/time-travel?stream_id=cart-1", f"/correlation?correlation_id={CORRELATION}",
        "/projections", "/dead-letters", "/sagas", "/sagas?saga=transfer&status=running",
    ]:  # fmt: skip
        response = httpx.get(base + path, timeout=10)
        assert response.status_code == 200, (path, response.text[-500:])
    page = httpx.get(base + "/", timeout=10).text
    assert "cart_totals" in page and "<script>window" not in page
