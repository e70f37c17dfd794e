"""What every ``chronik`` command shares: output, the ``MODULE:OBJECT`` loader, and running
workers until SIGTERM/SIGINT.

Command modules (``cli/projections.py``, ...) import from here, never from ``cli/main.py``;
``cli/main.py`` builds the parser from them and runs the chosen command.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

from chronik.app import load_object
from chronik.store.protocol import EventStore
from chronik.workers import Worker

__all__ = ["Handler", "Output", "Standalone", "load_object", "run_until_signal"]

Handler = Callable[[EventStore, argparse.Namespace, "Output"], Awaitable[int]]
"""A command that works on the store named by ``--store`` (opened and closed for it)."""

Standalone = Callable[[argparse.Namespace, "Output"], Awaitable[int]]
"""A command that opens its own stores, or none (``set_defaults(standalone=...)``)."""


class Output:
    """Writes rich tables for people and JSON for programs; messages go to stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        probe = Console()
        width = None if probe.is_terminal else 160
        self.console = Console(highlight=False, soft_wrap=False, width=width)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)  # one line a message

    def json(self, value: Any) -> None:
        sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
        sys.stdout.flush()

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        table = Table(title=title, title_justify="left")
        for index, col in enumerate(columns):
            last = index == len(columns) - 1
            table.add_column(col, overflow="fold", no_wrap=not last)
        for row in rows:
            table.add_row(*(str(v) for v in row))
        self.console.print(table)

    def records(
        self,
        title: str,
        rows: Sequence[Mapping[str, Any]],
        *,
        empty: str,
        columns: Sequence[str] | None = None,
    ) -> None:
        """``rows`` as a JSON list, or as a table of ``columns`` (default: every key of the
        first row); ``empty`` is printed for people when there is no row."""
        if self.as_json:
            self.json(list(rows))
        elif not rows:
            self.console.print(f"[dim]{empty}[/dim]")
        else:
            columns = list(columns or rows[0])
            self.table(title, columns, [[row[c] for c in columns] for row in rows])


async def run_until_signal(workers: Sequence[Worker], out: Output, what: str) -> int:
    """Run ``workers`` together until SIGTERM or SIGINT, then stop each one gracefully.

    When one worker ends by itself (it failed, or retired), the others are stopped too.
    Prints ``running WHAT`` on stderr once the signal handlers are installed (so a
    supervisor may send SIGTERM from then on).

    Returns:
        The exit status: 1 when a worker raised or ended ``failed`` (each is printed), else 0.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        out.err.print(f"running {what} (Ctrl-C or SIGTERM stops)")
        tasks = [asyncio.ensure_future(w.run_until_stopped(stop)) for w in workers]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    reasons = [(worker.name, why) for worker in workers if (why := worker.failure())]
    for name, why in reasons:
        out.err.print(f"[red]worker {name} failed:[/red] {why}")
    errors = [r for r in results if isinstance(r, BaseException)]
    for err in errors:
        out.err.print(f"[red]worker failed:[/red] {err!r}")
    return 1 if errors or reasons else 0
