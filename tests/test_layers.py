"""Dependencies point one way: each module imports only its own layer and the layers below.

    faces        chronik (the re-exporting package), chronik.__main__, chronik.cli.*,
                 chronik.kurrent.*
    tools        debugging, integrity, migrate, testing.*
    workers      workers, subscriptions, projections, sagas, nats, snapshots.worker,
                 and the chronik.snapshots package (it re-exports the Snapshotter)
    application  aggregate, app, snapshots.{config,load,policies,store}, projections.kinds
                 (what a projection is, apart from the runner)
    store        store.*
    domain       events, errors, decider, codec, upcasting, context, telemetry, _version

Every import counts, also one inside a function; an import under ``if TYPE_CHECKING:`` obeys
the layers too but is left out of the cycle check (it never runs). Read from the source with
``ast``, so a module need not import cleanly to be checked.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parent.parent / "src" / "chronik"

LAYERS = [
    ("domain", ["events", "errors", "decider", "codec", "upcasting", "context", "telemetry",
                "_version"]),
    ("store", ["store"]),
    ("application", ["aggregate", "app", "snapshots.config", "snapshots.load",
                     "snapshots.policies", "snapshots.store", "projections.kinds",
                     "projections.control",
                     "security"]),
    ("workers", ["workers", "subscriptions", "projections", "sagas", "nats", "snapshots.worker",
                 "snapshots", "scaleout"]),
    ("tools", ["debugging", "integrity", "migrate", "testing", "ops"]),
    ("faces", ["", "__main__", "cli", "server", "kurrent"]),
]  # fmt: skip
WORKER_MODULES = ["workers", "subscriptions", "projections", "sagas", "nats", "snapshots.worker",
                  "scaleout"]  # fmt: skip


def _module_name(path: Path) -> str:
    parts = ["chronik", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rank(module: str) -> int:
    """The layer of a chronik module: the longest prefix listed wins."""
    best, rank = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            full = f"chronik.{prefix}" if prefix else "chronik"
            inside = module.startswith(full + ".") and bool(prefix)  # "": the package only
            if (module == full or inside) and len(full) > best:
                best, rank = len(full), index
    assert rank >= 0, f"{module} is in no layer: add it to LAYERS in tests/test_layers.py"
    return rank


def _imports(path: Path) -> list[tuple[str, bool]]:
    """The chronik modules ``path`` imports, each with "only under TYPE_CHECKING"."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            assert not isinstance(node, ast.ImportFrom), f"{path}: write absolute imports"
            continue
        found += [(n, id(node) in typing_only) for n in names if n.split(".")[0] == "chronik"]
    return found


GRAPH = {_module_name(p): _imports(p) for p in sorted(SRC.rglob("*.py"))}


def test_imports_point_down_the_layers() -> None:
    wrong = [
        f"{module} ({LAYERS[_rank(module)][0]}) imports {target} ({LAYERS[_rank(target)][0]})"
        for module, imports in GRAPH.items()
        for target, _ in imports
        if _rank(target) > _rank(module)
    ]
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(set(wrong)))


def test_no_import_cycles() -> None:
    edges = {
        m: sorted({t for t, typing_only in imps if not typing_only}) for m, imps in GRAPH.items()
    }
    state: dict[str, str] = {}
    cycles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in edges.get(module, []):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in edges:
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_import_chronik_loads_no_worker_module() -> None:
    code = "import sys, chronik; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert "chronik.snapshots.config" in loaded  # the check sees chronik's modules at all
    banned = [f"chronik.{m}" for m in [*WORKER_MODULES, "cli"]]
    wrong = sorted(m for m in loaded for b in banned if m == b or m.startswith(b + "."))
    assert not wrong, f"`import chronik` loads {wrong}"
