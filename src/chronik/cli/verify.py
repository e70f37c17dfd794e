"""``chronik verify``: the tamper-evident log (docs/security.md "Tamper evidence").

Thin: calls :mod:`chronik.ops.chain` and prints. Exit status 0 when every link holds, 6 when
one is broken (the first is printed: position, stream, version, what), else the usual ones.
"""

from __future__ import annotations

import argparse
from typing import Any

from chronik.cli._common import Output
from chronik.errors import TamperDetected
from chronik.ops.chain import KEY_ENV, ChainKey, sign_checkpoint, verify
from chronik.store.protocol import EventStore

__all__ = ["TAMPERED", "register"]

TAMPERED = 6
"""The exit status of ``chronik verify`` (and ``--sign``) when a link is broken."""


def _position(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a position (an integer >= 0)")
    return int(text)


def _key(args: argparse.Namespace, needed: bool) -> ChainKey | None:
    import os

    if args.key_file is None and not os.environ.get(KEY_ENV) and not needed:
        return None
    return ChainKey.load(args.key_file)


async def cmd_verify(store: EventStore, args: argparse.Namespace, out: Output) -> int:
    key = _key(args, needed=args.sign)
    if args.sign:
        assert key is not None
        try:
            cp = await sign_checkpoint(store, key)
        except TamperDetected as exc:
            if out.as_json:
                out.json({"ok": False, "signed": None, "error": str(exc)})
            else:
                out.say(("broken", "red"), f": {exc}")
            return TAMPERED
        if out.as_json:
            out.json({"ok": True, "signed": cp.to_dict()})
        else:
            out.say(("signed", "green"), f" checkpoint {cp.id} at position {cp.position} "
                    f"({cp.events:,} events since the previous one, {cp.algorithm}, "
                    f"key {cp.key_id})")  # fmt: skip
        return 0
    report = await verify(store, since=args.since, key=key)
    if out.as_json:
        out.json(report.to_dict())
        return 0 if report.ok else TAMPERED
    first = report.first_break
    if first is None:
        signed = (
            "signatures checked" if report.signatures_checked else "signatures NOT checked (no key)"
        )
        out.say(("ok", "green"), f": {report.events:,} events of {report.streams:,} streams chain, "
                f"{report.checkpoints} checkpoints match ({signed})")  # fmt: skip
        if report.anchored_streams:
            out.note(f"{report.anchored_streams} streams start after retention removed events: "
                     "their first kept event anchors the chain")  # fmt: skip
        return 0
    where = f"position {first.position}"
    if first.through_position is not None:
        where = f"positions {first.position}..{first.through_position}"
    if first.stream_id is not None:
        where += f", stream {first.stream_id} version {first.version}"
    out.say(("broken", "red"), f": {first.what} at {where}: {first.message}")
    out.note(f"{report.broken_links} broken links in all")
    return TAMPERED


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "verify",
        parents=[common],
        help="recompute every stream's hash chain and the signed checkpoints; report the first "
        f"broken link (exit status {TAMPERED})",
    )
    p.add_argument("--since", type=_position, default=0, metavar="POSITION",
                   help="start at the last signed checkpoint at or below POSITION")  # fmt: skip
    p.add_argument("--key-file", default=None,
                   help=f"an HMAC secret (>= 32 bytes) or an Ed25519 PEM key; default ${KEY_ENV}"
                   " (HMAC)")  # fmt: skip
    p.add_argument("--sign", action="store_true",
                   help="verify since the last checkpoint, then record a signed checkpoint of "
                   "the head")  # fmt: skip
    p.set_defaults(handler=cmd_verify)
