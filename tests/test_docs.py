"""Documentation is executable: every ```python block of README.md and docs/*.md runs.

Blocks of one document run in order in one namespace, in a scratch folder. A block that is
only an illustration uses ```py (not run).
"""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_blocks_run(doc: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = BLOCK.findall(doc.read_text(encoding="utf-8"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHRONIK_STORE", raising=False)
    module = types.ModuleType(f"doc_{doc.stem.replace('-', '_')}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    for index, source in enumerate(blocks):
        code = compile(source, f"{doc.name}[block {index}]", "exec")
        exec(code, module.__dict__)
    assert os.getcwd() == str(tmp_path)


def test_readme_shows_the_two_commands_first() -> None:
    text = (ROOT / "README.md").read_text()
    first_block = text.index("```sh")
    assert text.index("make demo") > first_block
    assert text.index("make test") < text.index("## Quickstart")
