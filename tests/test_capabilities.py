"""Capabilities are named, never probed: no module outside ``chronik/store/`` names a backend
class or asks a store what it can do with ``getattr``/``hasattr``/``isinstance``, and no
behaviour branches on a ``dialect`` (looking up SQL text by dialect is fine). Every backend
in the table is fed to the contract suite of each capability it declares.

Read from the source with ``ast``, like tests/test_layers.py.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

from chronik.store.capabilities import BACKENDS
from chronik.store.port import EventLog, Fencing, Inspectable, SqlStore, WorkerState

SRC = Path(__file__).parent.parent / "src" / "chronik"
TESTS = Path(__file__).parent

BACKEND_MODULES = re.compile(
    r"^chronik\.store\.(memory|sqlite|postgres|pg_support|\w+_statements)$"
)
BACKEND_NAMES = re.compile(r"^(Memory|Sqlite|Postgres)(EventStore|Tx|Statements)$")
STORE_LIKE = re.compile(r"\b(store|stores|events|log|sql|tx)\b")
"""What a store (or its transaction) is called in chronik's code."""


def probes(source: str) -> list[str]:
    """The lines of ``source`` that name a backend or probe a store."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            names = []
        if any(BACKEND_MODULES.match(n) for n in names):
            found.append(f"{line}: imports a backend module")
        if isinstance(node, ast.ImportFrom) and any(
            BACKEND_NAMES.match(a.name) for a in node.names
        ):
            found.append(f"{line}: imports a backend class")
        if isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if BACKEND_NAMES.match(name):
                found.append(f"{line}: names {name}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "isinstance")
            and node.args
            and STORE_LIKE.search(ast.unparse(node.args[0]))
        ):
            found.append(f"{line}: {node.func.id}({ast.unparse(node.args[0])}, ...)")
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr == "dialect" for s in sides):
                found.append(f"{line}: branches on a dialect")
    return found


def test_no_module_outside_the_store_probes_a_store() -> None:
    wrong = [
        f"{path.relative_to(SRC)}:{problem}"
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC).parts[0] != "store"
        for problem in probes(path.read_text(encoding="utf-8"))
    ]
    assert not wrong, "ask for a capability with chronik.store.require:\n" + "\n".join(wrong)


def test_the_check_sees_each_kind_of_probe() -> None:
    source = """
from chronik.store.memory import MemoryEventStore
import chronik.store.sqlite
from chronik.store.postgres_statements import PostgresStatements
if isinstance(store, MemoryEventStore): pass
read_page = getattr(self.store, "read_page", None)
if hasattr(store, "query"): pass
if tx.dialect == "sqlite": pass
expr = TEXT[sql.dialect]
"""
    lines = {int(p.split(":")[0]) for p in probes(source)}
    assert lines == {2, 3, 4, 5, 6, 7, 8}  # not 9: SQL text looked up by dialect


SUITES = {
    EventLog: {"EventLogContract", "EventStoreContract"},
    Inspectable: {"InspectableContract", "EventStoreContract"},
    WorkerState: {"WorkerStateContract", "EventStoreContract"},
    SqlStore: {"SqlStoreContract"},
    Fencing: {"FencingContract"},
}


def test_every_backend_is_fed_to_the_suites_of_its_capabilities() -> None:
    for scheme, target in BACKENDS.items():
        module, _, name = target.partition(":")
        backend = getattr(importlib.import_module(module), name)
        declared = backend.capabilities
        assert EventLog in declared, scheme
        test_file = TESTS / "contract" / f"test_{module.rsplit('.', 1)[1]}.py"
        assert test_file.exists(), f"{scheme}: no {test_file.name}"
        bases = {
            ast.unparse(base)
            for node in ast.walk(ast.parse(test_file.read_text(encoding="utf-8")))
            if isinstance(node, ast.ClassDef)
            for base in node.bases
        }
        for capability in declared:
            assert SUITES[capability] & bases, f"{scheme}: {test_file.name} skips {capability}"
