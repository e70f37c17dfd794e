"""What every ``chronik`` command shares: output, the ``MODULE:OBJECT`` loader, and running
workers until SIGTERM/SIGINT.

Command modules (``cli/projections.py``, ...) import from here, never from ``cli/main.py``;
``cli/main.py`` builds the parser from them and runs the chosen command.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from chronik.app import load_object
from chronik.errors import MissingDependency
from chronik.store.protocol import EventStore
from chronik.workers import Worker

__all__ = [
    "Handler",
    "Output",
    "Part",
    "Standalone",
    "at_least",
    "load_object",
    "positive_float",
    "require_extra",
    "run_until_signal",
]

Handler = Callable[[EventStore, argparse.Namespace, "Output"], Awaitable[int]]
"""A command that works on the store named by ``--store`` (opened and closed for it)."""

Standalone = Callable[[argparse.Namespace, "Output"], Awaitable[int]]
"""A command that opens its own stores, or none (``set_defaults(standalone=...)``)."""

Part = str | tuple[str, str]
"""A piece of a line of output: a plain string, printed as it is, or ``(text, style)``."""


class Output:
    """Writes rich tables for people and JSON for programs; messages go to stderr.

    Nothing is read as rich markup: user data (stream ids, types, JSON data, error messages)
    prints exactly as stored, ``[vip]`` included. Styles come only from chronik's own
    labels, given as ``(text, style)`` parts (:meth:`say`, :meth:`note`) or Text objects.
    """

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        probe = Console()
        width = None if probe.is_terminal else 160
        self.console = Console(
            soft_wrap=False, width=width, highlight=False, markup=False, emoji=False
        )
        self.err = Console(  # one line a message
            stderr=True, soft_wrap=True, highlight=False, markup=False, emoji=False
        )

    def json(self, value: Any) -> None:
        sys.stdout.write(msgspec.json.encode(value).decode() + "\n")
        sys.stdout.flush()

    def raw(self, text: str) -> None:
        """``text`` on stdout exactly (a Mermaid or Graphviz picture, say)."""
        sys.stdout.write(text)
        sys.stdout.flush()

    def say(self, *parts: Part) -> None:
        """One line on stdout: strings as they are, ``(text, style)`` pairs styled."""
        self.console.print(Text.assemble(*parts), soft_wrap=True)

    def note(self, *parts: Part) -> None:
        """One line on stderr (progress, warnings), like :meth:`say`."""
        self.err.print(Text.assemble(*parts))

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table whose title and cells print as given (``str(value)``, never markup)."""
        table = Table(title=Text(title), title_justify="left")
        for index, col in enumerate(columns):
            last = index == len(columns) - 1
            table.add_column(Text(col), overflow="fold", no_wrap=not last)
        for row in rows:
            table.add_row(*(v if isinstance(v, Text) else Text(str(v)) for v in row))
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
            self.say((empty, "dim"))
        else:
            columns = list(columns or rows[0])
            self.table(title, columns, [[row[c] for c in columns] for row in rows])


def is_async_callable(obj: object) -> bool:
    """An ``async def`` function, or an object whose ``__call__`` is one (a handler that
    returns no awaitable would fail every message)."""
    import inspect

    call = getattr(obj, "__call__", None)  # noqa: B004
    return inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(call)


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``minimum`` (a usage error otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def positive_float(text: str) -> float:
    """An argparse ``type``: a number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number > 0, not {text}")
    return value


def require_extra(module: str, what: str, package: str, extra: str) -> None:
    """Import ``module`` now, or fail at once with the pip command that installs it.

    Raises:
        MissingDependency: ``module`` cannot be imported.
    """
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(what, package, extra) from exc


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
        out.note(f"running {what} (Ctrl-C or SIGTERM stops)")
        tasks = [asyncio.ensure_future(w.run_until_stopped(stop)) for w in workers]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    reasons = [(worker.name, why) for worker in workers if (why := worker.failure())]
    for name, why in reasons:
        out.note((f"worker {name} failed:", "red"), f" {why}")
    errors = [r for r in results if isinstance(r, BaseException)]
    for err in errors:
        out.note(("worker failed:", "red"), f" {err!r}")
    return 1 if errors or reasons else 0
