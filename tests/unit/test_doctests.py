"""Every doctest of the package, the apps' view helpers and the benchmarks runs, module by module.

(The handler's doctests run in tests/handler, next to the real model they need.)
"""

from __future__ import annotations

import doctest
import importlib

import pytest

from tschat.settings import REPO_ROOT

FOLDERS = ("tschat", "apps", "benchmarks")


def modules_with_doctests() -> list[str]:
    """Dotted names of the modules in FOLDERS whose source holds a doctest."""
    names = []
    for folder in FOLDERS:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            if ">>> " in path.read_text(encoding="utf-8"):
                relative = path.relative_to(REPO_ROOT).with_suffix("")
                names.append(".".join(relative.parts).removesuffix(".__init__"))
    return names


def test_the_modules_are_found() -> None:
    names = modules_with_doctests()
    assert {"tschat.settings", "tschat.api.transport", "apps.tables"} <= set(names)


@pytest.mark.parametrize("name", modules_with_doctests())
def test_doctests(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0, f"{name} has '>>> ' but no doctest was found"
    assert result.failed == 0
