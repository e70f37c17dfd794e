"""Every ``chronik`` command fails as a person (or a script) can use: one line on stderr, no
traceback, the documented exit status, and no store left behind.

The commands are read from the parser, so a command added later is walked too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import chronik
from chronik.cli._common import positive_float
from chronik.cli.main import build_parser, main

ROOT = Path(__file__).parent.parent
SPEC = "chronik_no_such_module:app"  # for MODULE:OBJECT arguments: never loaded before the store

BAD_URLS = {
    "mysql://u@h/db": "unknown scheme 'mysql'",
    "chronik.db": "not a URL",
    "sqlite:///{tmp}/bad.db?synchronous=BOGUS": "must be one of FULL, EXTRA, NORMAL, OFF",
    "sqlite:///{tmp}/bad.db?nope=1": "takes busy_timeout_ms, max_event_bytes, synchronous",
    "sqlite:///{tmp}/bad.db?busy_timeout_ms=-1": "busy_timeout_ms='-1' must be an integer >= 0",
    "postgresql://postgres@127.0.0.1:5432/test?schema=x;drop table events": "plain SQL identifier",
    "postgresql://postgres@127.0.0.1:5432/test?schema=": "schema='' is empty",
    "postgresql://postgres@127.0.0.1:5432/test?shema=x": 'invalid URI query parameter: "shema"',
}


def _commands() -> Iterator[tuple[list[str], argparse.ArgumentParser]]:
    """Each command as its words (``["projections", "status"]``) and its parser."""

    def walk(words: list[str], parser: argparse.ArgumentParser) -> Iterator[Any]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if words and not (subs and subs[0].required):  # `schema` runs without an action
            yield words, parser
        for action in subs:
            for name, child in action.choices.items():
                yield from walk([*words, name], child)

    yield from walk([], build_parser())


COMMANDS = {" ".join(words): parser for words, parser in _commands()}


def _arguments(parser: argparse.ArgumentParser, url: str, tmp: Path) -> list[str]:
    """The arguments the command needs to parse: the first URL option (``migrate --from``)
    is ``url``, the others name other missing files."""
    argv: list[str] = []
    urls = 0
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.metavar == "URL":
            value = url if urls == 0 else f"sqlite:///{tmp}/other-{urls}.db"
            urls += 1
        elif "MODULE:" in (action.help or "") or action.dest in ("app", "workers"):
            value = SPEC
        else:
            value = "order-1"
            if callable(action.type):
                try:
                    action.type(value)
                except (ValueError, TypeError, argparse.ArgumentTypeError):
                    value = "2"  # a number (`workers resize PARTITIONS`)
        if not action.option_strings and action.nargs in (None, 1):
            argv.append(value)
        elif action.option_strings and action.required:
            argv += [action.option_strings[0], value]
    return argv


def _opens_a_store(parser: argparse.ArgumentParser) -> bool:
    """Whether the command opens ``--store`` (or URL options), rather than no store at all."""
    handler = parser.get_default("handler")
    standalone = parser.get_default("standalone")
    takes_urls = any(a.metavar == "URL" for a in parser._actions)
    return takes_urls or (handler is not None and standalone is None)


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == "", captured.out
    assert "Traceback" not in captured.err, captured.err
    lines: list[str] = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_the_walk_finds_every_command() -> None:
    assert {"init", "events", "tail", "projections status", "schema", "schema check"} <= set(
        COMMANDS
    )
    assert {"migrate copy", "relay run", "snapshots list", "trace", "replay"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_missing_sqlite_store_is_an_error_and_stays_missing(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = COMMANDS[command]
    missing = tmp_path / "typo.db"
    url = f"sqlite:///{missing}"
    argv = ["--store", url, *command.split(), *_arguments(parser, url, tmp_path)]
    if command == "init":  # the one command that creates a store
        assert main(argv) == 0
        assert missing.exists()
        return
    code = main(argv)
    line = _one_line_error(capsys)
    assert code != 0
    assert list(tmp_path.iterdir()) == [], "a command created a store"
    if _opens_a_store(parser):
        assert code == 3, line
        assert line.startswith(f"error: StoreNotFound: no chronik store at {missing}: no such file")


@pytest.mark.parametrize("bad", sorted(BAD_URLS))
@pytest.mark.parametrize("command", sorted(c for c, p in COMMANDS.items() if _opens_a_store(p)))
def test_a_bad_store_url_is_a_usage_error_naming_what_is_allowed(
    command: str, bad: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = bad.format(tmp=tmp_path)
    argv = ["--store", url, *command.split(), *_arguments(COMMANDS[command], url, tmp_path)]
    assert main(argv) == 2
    line = _one_line_error(capsys)
    assert line.startswith("error: UnsupportedStoreUrl: store URL "), line
    assert BAD_URLS[bad] in line
    assert list(tmp_path.iterdir()) == []


def _ranged(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.type is not None and a.option_strings]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_bad_arguments_are_one_line_usage_errors(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = COMMANDS[command]
    url = f"sqlite:///{tmp_path}/never.db"
    argv = ["--store", url, *command.split(), *_arguments(parser, url, tmp_path)]
    for bad in (["--no-such-option"], ["--json", "--no-such-option"]):
        with pytest.raises(SystemExit) as exited:
            main([*argv, *bad])
        assert exited.value.code == 2
        line = _one_line_error(capsys)
        if "--json" in bad:
            error = json.loads(line)["error"]
            assert error["type"] == "UsageError" and "--no-such-option" in error["message"]
        else:
            assert line.startswith("error: usage: chronik") and "--no-such-option" in line
    for action in _ranged(parser):
        assert action.type not in (int, float), f"{command} {action.option_strings}: no range"
        for value in ("-5", "abc", "0" if action.type is positive_float else "-1"):
            with pytest.raises(SystemExit) as exited:
                main([*argv, action.option_strings[0], value])
            assert exited.value.code == 2
            line = _one_line_error(capsys)
            assert f"argument {'/'.join(action.option_strings)}: " in line, line
    if any(not a.option_strings and a.nargs is None for a in parser._actions):
        with pytest.raises(SystemExit):  # a required argument left out
            main(["--store", url, *command.split()])
        assert "required" in _one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_tail_after_a_negative_position(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--store", f"sqlite:///{tmp_path}/x.db", "tail", "--after", "-5"])
    assert exited.value.code == 2
    line = _one_line_error(capsys)
    assert line == (
        "error: usage: chronik tail: argument --after: must be >= 0, not -5 "
        "(see chronik tail --help)"
    )
    with pytest.raises(SystemExit):
        main(["tail", "--after", "3", "--last", "2"])
    assert "not allowed with argument" in _one_line_error(capsys)


# -- what exists is printed literally ---------------------------------------------------------


@pytest.fixture
def marked(tmp_path: Path) -> str:
    """A store whose ids, types, data and metadata look like rich markup."""
    url = f"sqlite:///{tmp_path}/marked.db"

    async def fill() -> None:
        async with await chronik.connect(url) as store:
            event = chronik.NewEvent(
                "Tagged[bold]",
                {"label": "[vip]", "emoji": ":fire:"},
                metadata={"correlation_id": "c-[green]1"},
            )
            await store.append("order-[red]1[/red]", [event])

    asyncio.run(fill())
    return url


def test_user_data_prints_literally(marked: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--store", marked, "streams"]) == 0
    assert "order-[red]1[/red]" in capsys.readouterr().out
    assert main(["--store", marked, "events", "order-[red]1[/red]"]) == 0
    out = capsys.readouterr().out
    assert "order-[red]1[/red]" in out  # the title and the stream column
    assert '"label":"[vip]"' in out and ":fire:" in out and "Tagged[bold]" in out
    assert "c-[green]1" in out
    assert main(["--store", marked, "tail"]) == 0
    out = capsys.readouterr().out
    assert "order-[red]1[/red]@0" in out and '"label":"[vip]"' in out
    assert main(["--store", marked, "trace", "c-[green]1"]) == 0
    out = capsys.readouterr().out
    assert "correlation c-[green]1" in out and "order-[red]1[/red]" in out
    assert main(["--store", marked, "trace", "nothing-[x]"]) == 1
    assert "no events with correlation id 'nothing-[x]'" in capsys.readouterr().out
    assert main(["--store", marked, "check"]) == 0
    assert "no problems found" in capsys.readouterr().out


def test_error_messages_print_literally(marked: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--store", marked, "events", "order-[red]2[/red]"]) == 3
    line = _one_line_error(capsys)
    assert line == "error: StreamNotFound: stream 'order-[red]2[/red]' not found"


def test_json_errors(marked: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--store", marked, "events", "order-9", "--json"]) == 3
    assert json.loads(_one_line_error(capsys)) == {
        "error": {"type": "StreamNotFound", "message": "stream 'order-9' not found"}
    }
    missing = tmp_path / "nope.db"
    assert main(["--json", "--store", f"sqlite:///{missing}", "stats"]) == 3
    error = json.loads(_one_line_error(capsys))["error"]
    assert error["type"] == "StoreNotFound" and str(missing) in error["message"]
    assert main(["--json", "--store", "sqlite:///x.db?synchronous=", "stats"]) == 2
    error = json.loads(_one_line_error(capsys))["error"]
    assert error["type"] == "UnsupportedStoreUrl"


# -- other failures -------------------------------------------------------------------------


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--debug", "--store", f"sqlite:///{tmp_path}/x.db", "stats"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and "_require_store" in err
    assert err.strip().splitlines()[-1].startswith("error: StoreNotFound: ")


def test_an_unexpected_error_is_one_line_too(
    marked: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*_: object) -> int:
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr("chronik.cli.main.cmd_stats", broken)
    assert main(["--store", marked, "stats"]) == 1
    line = _one_line_error(capsys)
    assert line == (
        "error: RuntimeError: a bug over two lines (an unexpected error: --debug shows the "
        "traceback)"
    )


def test_an_unreachable_database_exits_4(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://postgres@127.0.0.1:1/test"
    assert main(["--store", url, "stats"]) == 4
    assert _one_line_error(capsys).startswith("error: StoreUnavailable: ")


def test_a_password_never_shows(capsys: pytest.CaptureFixture[str]) -> None:
    url = "postgresql://app:s3cret@127.0.0.1:5432/test?schema=Bad"
    assert main(["--store", url, "stats"]) == 2
    line = _one_line_error(capsys)
    assert "s3cret" not in line and "app:***@127.0.0.1" in line


def test_missing_postgres_driver_names_the_extra(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    monkeypatch.setitem(sys.modules, "chronik.store.postgres", None)
    assert main(["--store", "postgresql://postgres@127.0.0.1/test", "stats"]) == 1
    line = _one_line_error(capsys)
    assert line == (
        "error: MissingDependency: a postgresql:// store needs psycopg, which is not "
        "installed: pip install 'chronik[postgres]'"
    )


RELAY_WITHOUT_NATS = """
import sys
import time
sys.modules["nats"] = None  # as if nats-py were not installed
from chronik.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def test_relay_run_without_nats_py_exits_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/relay.db"
    assert main(["--store", url, "init"]) == 0
    argv = ["--store", url, "relay", "run", "--stream", "S", "--prefix", "p"]
    done = subprocess.run(
        [sys.executable, "-c", RELAY_WITHOUT_NATS, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == (
        "error: MissingDependency: chronik relay run needs nats-py, which is not installed: "
        "pip install 'chronik[nats]'"
    )


def _chronik(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chronik", *args], stdout=subprocess.DEVNULL, stderr=sink
        )
    return proc, err


def _until(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_wait_for_store_waits_and_a_signal_ends_the_wait_with_4(tmp_path: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:1/test"
    proc, err = _chronik(tmp_path, "--store", url, "--wait-for-store", "stats")
    try:
        _until(lambda: "waiting for the store" in err.read_text(), "the waiting line")
        assert proc.poll() is None  # still waiting, not exited 4
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 4
    finally:
        if proc.poll() is None:
            proc.kill()


def test_wait_for_store_goes_on_once_the_store_can_be_reached(tmp_path: Path) -> None:
    """A SQLite store in a folder that appears later (a volume mounted after start)."""
    db = tmp_path / "later" / "events.db"
    proc, err = _chronik(tmp_path, "--store", f"sqlite:///{db}", "--wait-for-store", "init")
    try:
        _until(lambda: "waiting for the store" in err.read_text(), "the waiting line")
        assert proc.poll() is None
        db.parent.mkdir()
        assert proc.wait(30) == 0, err.read_text()
        assert db.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
