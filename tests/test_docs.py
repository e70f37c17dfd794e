"""Documentation is executable: every ```python block of README.md and docs/*.md runs.

Each block is self-contained: it runs in a namespace of its own, so it makes its own
imports and opens its own store. A block that builds on the ones before it in the same
document says so on its first line (``# continues ...``): it then also sees the classes,
functions and values they defined (never their imports, never an open store). Every document
runs twice in a row in one scratch folder, as a reader who runs a snippet again would: the
files the first run left must not break the second. A block that is only an illustration
uses ```py (not run).
"""

from __future__ import annotations

import ast
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
CONTINUES = re.compile(r"\A# continues\b")


def _imported(tree: ast.Module) -> set[str]:
    """The names a block binds by importing (at module level, also inside if/try/with)."""
    names: set[str] = set()
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                todo += [n for n in getattr(node, field, []) if isinstance(n, ast.stmt)]
    return names


def _is_store(value: object) -> bool:
    return hasattr(value, "append") and hasattr(value, "read_stream")


def _run_document(doc: Path, run: int, monkeypatch: pytest.MonkeyPatch) -> None:
    defined: dict[str, Any] = {}  # what the blocks so far defined, imports and stores left out
    for index, source in enumerate(BLOCK.findall(doc.read_text(encoding="utf-8"))):
        name = f"doc_{doc.stem.replace('-', '_').replace('.', '_')}_{run}_{index}"
        module = types.ModuleType(name)
        monkeypatch.setitem(sys.modules, name, module)
        if CONTINUES.match(source):
            module.__dict__.update(defined)
        tree = ast.parse(source, f"{doc.name}[block {index}]")
        code = compile(tree, f"{doc.name}[block {index}]", "exec")
        exec(code, module.__dict__)
        imports = _imported(tree)
        for key, value in module.__dict__.items():
            if key.startswith("__") or key in imports or isinstance(value, types.ModuleType):
                continue
            if not _is_store(value):
                defined[key] = value


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_blocks_run_alone_and_twice(
    doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHRONIK_STORE", raising=False)
    for run in (1, 2):
        _run_document(doc, run, monkeypatch)
        assert os.getcwd() == str(tmp_path)


def test_a_block_sees_only_what_it_imports_or_continues() -> None:
    tree = ast.parse(
        "import os.path\nfrom a import b as c\nif True:\n    import json\n"
        "def f():\n    import sys\n"
    )
    assert _imported(tree) == {"os", "c", "json"}
    assert CONTINUES.match("# continues the quickstart\nx = 1")
    assert not CONTINUES.match("import chronik\n# continues")


def test_readme_shows_the_two_commands_first() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = text.index("```sh")
    assert text.index("make demo") > first_block
    assert text.index("make test") < text.index("## Quickstart")
