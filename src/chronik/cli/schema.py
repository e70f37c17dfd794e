"""``chronik schema``: registered event types, their versions and upcaster chains.

``chronik schema check`` replays every stored event through its chain (upcast and decode
into the registered class) and reports failures per type and schema version. It reads
only; the exit status is 1 when anything fails.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from chronik.app import App, load_app
from chronik.cli._common import Output, load_object
from chronik.codec import EventRegistry
from chronik.errors import ChronikError, SerializationError, UnknownEventType
from chronik.store.protocol import EventStore

__all__ = ["load_registry", "register"]

APP_HELP = (
    "MODULE:OBJECT naming a chronik.App or an EventRegistry (the current folder is importable)"
)
MAX_EXAMPLES = 3


def load_registry(spec: str | None) -> EventRegistry:
    """The registry of ``--app MODULE:OBJECT``: an EventRegistry, or an App's registry."""
    if not spec:
        raise ChronikError("--app MODULE:OBJECT is needed: the App or EventRegistry to check")
    obj = load_object(spec, "--app")
    if isinstance(obj, EventRegistry):
        return obj
    if isinstance(obj, App):
        return obj.registry
    return load_app(spec).registry


def chain_text(item: dict[str, Any]) -> str:
    """One type's chain on one line: ``v1 →(fn) v2; v2 →(additive) v3``."""
    parts: list[str] = []
    for step in item["steps"]:
        to = ", ".join(
            f"v{t['version']}" if t["type"] == item["type"] else f"{t['type']} v{t['version']}"
            for t in step["to"]
        )
        how = step["function"] if step["kind"] == "upcaster" else "additive"
        parts.append(f"v{step['from_version']} →({how}) {to or '(dropped)'}")
    if item["downcasters"]:
        parts.append("downcast from " + ", ".join(f"v{v}" for v in item["downcasters"]))
    return "; ".join(parts) if parts else "-"


async def cmd_schema_list(args: argparse.Namespace, out: Output) -> int:
    registry = load_registry(args.app)
    types = registry.describe()
    problems = registry.problems()
    if out.as_json:
        out.json({"ok": not problems, "types": types, "problems": problems})
        return 1 if problems else 0
    out.table(
        f"{len(types)} event type(s)",
        ["type", "version", "class", "upcaster chain"],
        [
            [
                t["type"],
                t["version"] if t["version"] is not None else "(renamed away)",
                t["class"] or "",
                chain_text(t),
            ]
            for t in types
        ],
    )
    for problem in problems:
        out.note(("problem:", "red"), f" {problem}")
    return 1 if problems else 0


@dataclass
class _Tally:
    type: str
    schema_version: int
    events: int = 0
    ok: int = 0
    failed: int = 0
    unknown: int = 0
    becomes: set[str] = field(default_factory=set)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "schema_version": self.schema_version,
            "events": self.events,
            "ok": self.ok,
            "failed": self.failed,
            "unknown": self.unknown,
            "becomes": sorted(self.becomes),
            "errors": self.errors,
        }


async def cmd_schema_check(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    registry = load_registry(args.app)
    problems = registry.problems()
    tallies: dict[tuple[str, int], _Tally] = {}
    total = failed = unknown = 0
    if not problems:
        async for event in store.read_all(after=0, categories=args.category or None):
            key = (event.type, event.schema_version)
            tally = tallies.get(key)
            if tally is None:
                tally = tallies[key] = _Tally(event.type, event.schema_version)
            tally.events += 1
            total += 1
            try:
                decoded = registry.decode_many(event)
            except UnknownEventType as exc:
                if args.allow_unknown:
                    tally.unknown += 1
                    unknown += 1
                    continue
                error: ChronikError = exc
            except SerializationError as exc:  # UpcastError included
                error = exc
            else:
                tally.ok += 1
                for obj in decoded:
                    kind = registry.type_of(obj)
                    tally.becomes.add(f"{kind.name} v{kind.version}")
                if not decoded:
                    tally.becomes.add("(dropped)")
                continue
            tally.failed += 1
            failed += 1
            if len(tally.errors) < MAX_EXAMPLES:
                tally.errors.append(
                    {
                        "stream_id": event.stream_id,
                        "version": event.version,
                        "position": event.position,
                        "event_id": str(event.event_id),
                        "error": f"{type(error).__name__}: {error}",
                    }
                )
    ok = not problems and failed == 0
    rows = [tallies[k] for k in sorted(tallies)]
    if out.as_json:
        out.json(
            {
                "ok": ok,
                "events": total,
                "failed": failed,
                "unknown": unknown,
                "problems": problems,
                "types": [t.to_dict() for t in rows],
            }
        )
        return 0 if ok else 1
    for problem in problems:
        out.note(("problem:", "red"), f" {problem}")
    if rows:
        out.table(
            f"{total} stored event(s) replayed through their chains",
            ["stored type", "events", "ok", "failed", "becomes", "first error"],
            [
                [
                    f"{t.type} v{t.schema_version}",
                    t.events,
                    t.ok,
                    t.failed,
                    ", ".join(sorted(t.becomes)) or ("(unknown)" if t.unknown else ""),
                    t.errors[0]["error"] if t.errors else "",
                ]
                for t in rows
            ],
        )
    verdict = ("ok", "green") if ok else ("FAILED", "red")
    out.say(verdict, f": {total} events, {failed} failed, {unknown} of unknown types")
    return 0 if ok else 1


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    schema = sub.add_parser(
        "schema",
        parents=[common],
        help="event types, versions and upcaster chains (check: replay stored events)",
        description="Without an action: list the registered event types, their schema "
        "versions and upcaster chains, and any problem of the chains (exit 1).",
    )
    schema.add_argument("--app", help=APP_HELP)
    schema.set_defaults(standalone=cmd_schema_list)
    ssub = schema.add_subparsers(dest="action", required=False, metavar="ACTION")

    p = ssub.add_parser("list", parents=[common], help="the same as `chronik schema`")
    p.add_argument("--app", default=argparse.SUPPRESS, help=APP_HELP)  # keeps `schema --app`
    p.set_defaults(standalone=cmd_schema_list)

    p = ssub.add_parser(
        "check",
        parents=[common],
        help="replay every stored event through its chain; report failures (read-only)",
    )
    p.add_argument("--app", default=argparse.SUPPRESS, help=APP_HELP)
    p.add_argument("--category", action="append", help="only this category (repeatable)")
    p.add_argument(
        "--allow-unknown",
        action="store_true",
        help="count events of unregistered types without failing (raw events nobody decodes)",
    )
    p.set_defaults(handler=cmd_schema_check, standalone=None)
