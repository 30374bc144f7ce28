"""The layers keep their rules: read from the source, so a change that breaks one fails here.

* The package never imports Streamlit (the apps draw; the package does the work).
* handlers/ imports nothing of the package but the contract module (it is packed into the
  archive beside the handler), and the contract module only the standard library.
* Imports go one way: apps -> package; inside the package, the API clients import only the
  transport's neighbours (errors, settings), never operations, the chat or benchmarking.
* One module registers models: only the serving registry calls the management API's
  register, unregister and scale endpoints.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tschat.ops import packaging
from tschat.settings import REPO_ROOT

REGISTRY = "tschat/ops/serving.py"
# What every layer of the package may import: the errors, the settings and the request contract.
BASE = ("tschat.errors", "tschat.settings", "tschat.contract")
MANAGEMENT_CLIENT = "tschat/api/management.py"
WRITE_CALLS = {"register_model", "unregister_model", "scale_workers"}
# Everything that is not a test: the package, the apps, the scripts and the benchmarks.
SOURCE_GLOBS = ("tschat/**/*.py", "apps/*.py", "*.py", "scripts/*.py", "benchmarks/*.py")


def python_files(*globs: str) -> list[Path]:
    return sorted({path for pattern in globs for path in REPO_ROOT.glob(pattern)})


def imported_modules(path: Path) -> Iterator[str]:
    """The modules a file imports (absolute names; relative imports are not used here)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def relative(path: Path) -> str:
    return path.relative_to(REPO_ROOT).as_posix()


def test_the_package_never_imports_streamlit() -> None:
    found = [
        f"{relative(path)}: {name}"
        for path in python_files("tschat/**/*.py")
        for name in imported_modules(path)
        if name == "streamlit" or name.startswith("streamlit.")
    ]
    assert found == []


def test_handlers_import_only_the_contract_of_the_package() -> None:
    handlers = python_files("handlers/*.py")
    assert handlers
    ours = ("tschat", "apps", "benchmarks", "scripts")
    found = [
        f"{relative(path)}: {name}"
        for path in handlers
        for name in imported_modules(path)
        if name.split(".")[0] in ours and name not in ("tschat", "tschat.contract")
    ]
    assert found == []
    # In the archive the contract sits next to the handler and is imported as ``contract``;
    # the rest is the standard library, the worker's own packages and the handler's modules.
    shipped = {Path(name).stem for _, name in packaging.HANDLER_FILES}
    allowed = shipped | set(sys.stdlib_module_names) | {"llama_cpp", "numpy", "ts"}
    found = [
        f"{relative(path)}: {name}"
        for path in handlers
        for name in imported_modules(path)
        if name.split(".")[0] not in allowed and name != "__future__"
    ]
    assert found == []


def test_the_contract_needs_only_the_standard_library() -> None:
    found = [
        name
        for name in imported_modules(REPO_ROOT / "tschat" / "contract.py")
        if name.split(".")[0] not in sys.stdlib_module_names and name != "__future__"
    ]
    assert found == []


@pytest.mark.parametrize(
    ("layer", "allowed"),
    [
        ("tschat/api", ("tschat.api", *BASE)),
        ("tschat/chat", ("tschat.chat", "tschat.api", *BASE)),
        ("tschat/ops", ("tschat.ops", "tschat.api", *BASE)),
        ("tschat/bench", ("tschat.bench", "tschat.ops", "tschat.api", *BASE)),
    ],
)  # fmt: skip
def test_imports_go_one_way(layer: str, allowed: tuple[str, ...]) -> None:
    found = [
        f"{relative(path)}: {name}"
        for path in python_files(f"{layer}/*.py")
        for name in imported_modules(path)
        if name.split(".")[0] in ("tschat", "apps", "benchmarks")
        and name != "tschat"
        and not name.startswith(allowed)
    ]
    assert found == []


def test_the_package_never_imports_the_apps() -> None:
    found = [
        f"{relative(path)}: {name}"
        for path in python_files("tschat/**/*.py")
        for name in imported_modules(path)
        if name.split(".")[0] in ("apps", "benchmarks", "scripts")
    ]
    assert found == []


def test_only_the_serving_registry_registers_models() -> None:
    callers: dict[str, set[str]] = {}
    for path in python_files(*SOURCE_GLOBS):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in WRITE_CALLS
            ):
                callers.setdefault(relative(path), set()).add(node.func.attr)
    assert set(callers) == {REGISTRY}, callers


def test_only_the_management_client_sends_to_the_models_endpoint() -> None:
    senders = [
        relative(path)
        for path in python_files(*SOURCE_GLOBS)
        if '"/models"' in path.read_text(encoding="utf-8")
    ]
    assert senders == [MANAGEMENT_CLIENT]
