"""The public API is deliberate: ``chronik.__all__`` is exactly what the package exports, every
name in it resolves, and every module of chronik says what it exports (httpx's
``tests/test_exported_members.py`` does the first)."""

from __future__ import annotations

import importlib
import re
import types
from pathlib import Path

import pytest

import chronik
import chronik.errors

SRC = Path(chronik.__file__).parent


def _modules() -> list[str]:
    """Every module of chronik, found on disk (a module that fails to import fails the test)."""
    names = []
    for path in sorted(SRC.rglob("*.py")):
        parts = ["chronik", *path.relative_to(SRC).with_suffix("").parts]
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_all_is_exactly_what_chronik_exports() -> None:
    exported = {
        name
        for name, value in vars(chronik).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    exported |= set(chronik._LAZY)  # the worker-layer names, loaded on first use
    exported.add("__version__")
    assert sorted(chronik.__all__) == sorted(exported)
    assert len(chronik.__all__) == len(set(chronik.__all__))


def test_every_exported_name_resolves() -> None:
    for name in chronik.__all__:
        assert getattr(chronik, name) is not None, name
    from chronik import Snapshotter  # a lazy name, by import statement as users write it

    assert Snapshotter.__module__ == "chronik.snapshots.worker"


def test_unknown_names_raise_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        chronik.NoSuchThing  # noqa: B018


def test_every_module_declares_all_and_its_names_exist() -> None:
    missing = []
    for name in _modules():
        if name == "chronik.__main__":  # the `python -m chronik` script: importing it runs it
            continue
        module = importlib.import_module(name)
        if not hasattr(module, "__all__"):
            missing.append(f"{name} has no __all__")
            continue
        missing += [f"{name}.{n}" for n in module.__all__ if not hasattr(module, n)]
    assert not missing, missing


def test_one_error_tree() -> None:
    """Every public error is defined in chronik.errors, derives from ChronikError, and is
    exported by chronik; the docstring's tree names each one."""
    errors = {
        name: value
        for name, value in vars(chronik.errors).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    assert sorted(chronik.errors.__all__) == sorted(n for n in errors if not n.startswith("_"))
    for name in chronik.errors.__all__:
        assert issubclass(errors[name], chronik.ChronikError), name
        assert getattr(chronik, name) is errors[name], name
        assert re.search(rf"\b{name}\b", chronik.errors.__doc__ or ""), f"{name} not in the tree"
    assert issubclass(chronik.StreamNotFound, LookupError)
    assert issubclass(chronik.InvalidStreamId, ValueError)
    modules = [importlib.import_module(m) for m in _modules() if m != "chronik.__main__"]
    elsewhere = {
        f"{value.__module__}.{value.__qualname__}"
        for module in modules
        for value in (getattr(module, name) for name in getattr(module, "__all__", []))
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__ != "chronik.errors"
    }
    assert sorted(elsewhere) == sorted(ERRORS_STILL_TO_MOVE), elsewhere


ERRORS_STILL_TO_MOVE: list[str] = []
