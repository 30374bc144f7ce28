"""Run an app with Streamlit on loopback and drive it in headless Chromium.

The browser tests, the chat's load test and the screenshot scripts share these: the same
Streamlit command line as ``make run`` (:func:`tschat.run.streamlit_argv`), the same health
check, Debian's ``/usr/bin/chromium`` launched by Playwright (never a downloaded browser), and
the steps a person takes in the chat page (move a slider, ask, wait for the answers).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from tschat.ops.process import free_loopback_ports, stop_child
from tschat.run import ROOT, streamlit_argv
from tschat.settings import Settings

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

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
READY_TIMEOUT_MS = 60_000  # a page's first run, or a chat input to be enabled again
ANSWER_TIMEOUT_S = 240.0  # a whole answer on a busy 2-core machine


class AppDidNotStart(RuntimeError):
    """The app's process exited, or its health check did not answer in time."""


@dataclass(frozen=True)
class RunningApp:
    """A Streamlit app served on loopback, and its process."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path


def start_app(script: str, port: int, env: Mapping[str, str], log: Path) -> RunningApp:
    """``streamlit run SCRIPT`` on 127.0.0.1:PORT with ``env`` (e.g. ``settings.as_env()``)
    added to a copy of this environment without TSCHAT_* variables; waits for its health check.
    """
    argv = streamlit_argv(script, port, Settings.from_env(env))
    argv += ["--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TSCHAT_")}
    full_env.update(env)
    with open(log, "wb") as output:
        app = subprocess.Popen(
            argv,
            cwd=ROOT,
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
            stop_app(app)
            raise AppDidNotStart(f"{script} did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.25)


def stop_app(app: subprocess.Popen[bytes]) -> None:
    """Stop one app process started by :func:`start_app`."""
    stop_child(app)


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's chromium, headless, closed afterwards."""
    if not CHROMIUM.exists():
        raise FileNotFoundError(
            f"{CHROMIUM} is not installed: run scripts/install_system.sh --browser"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def private_server(run_dir: Path, model_store: Path) -> tuple[Settings, int]:
    """Settings for a TorchServe of its own under ``run_dir`` on free loopback ports, and a
    free port for the app. Keep ``run_dir`` short: worker socket paths must stay under 108
    bytes."""
    ports = free_loopback_ports(6)
    settings = Settings(
        run_dir=run_dir,
        model_store=model_store,
        inference_port=ports[0],
        management_port=ports[1],
        metrics_port=ports[2],
        grpc_inference_port=ports[3],
        grpc_management_port=ports[4],
    )
    return settings, ports[5]


# ---------------------------------------------------------------------------- the chat page


def open_chat(browser: Browser, url: str, ready_text: str = "Connected to") -> Page:
    """A page in a browser context of its own (its own Streamlit session), once it shows
    ``ready_text``."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(url)
    page.get_by_text(ready_text).first.wait_for(timeout=READY_TIMEOUT_MS)
    return page


def press_slider(page: Page, label: str, *keys: str) -> None:
    """Move a slider with the keyboard, as a person without a mouse would."""
    thumb = page.get_by_test_id("stSlider").filter(has_text=label).locator("input[type=range]")
    thumb.first.focus()
    for key in keys:  # to the focused thumb, without finding it again for every key
        page.keyboard.press(key)


def slider_value(page: Page, label: str) -> str:
    thumb = page.get_by_test_id("stSlider").filter(has_text=label).locator("input[type=range]")
    return thumb.first.get_attribute("value") or ""


def settle(page: Page) -> None:
    """Wait until the script run caused by the last input has finished."""
    page.wait_for_timeout(600)
    page.get_by_test_id("stStatusWidget").wait_for(state="hidden", timeout=30_000)


def ask(page: Page, question: str) -> None:
    """Type a question into the chat input once it takes one, and send it."""
    box = page.get_by_test_id("stChatInput").locator("textarea")
    box.wait_for(state="visible")
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=stChatInput] textarea').disabled",
        timeout=READY_TIMEOUT_MS,
    )
    box.fill(question)
    box.press("Enter")


def wait_answers(page: Page, count: int, timeout_s: float = ANSWER_TIMEOUT_S) -> None:
    """Wait until ``count`` answers are complete (each shows its finish reason)."""
    page.wait_for_function(
        """count => [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
            .filter(c => c.innerText.includes("finish:")).length >= count
            && !document.querySelector(".st-key-w_stop")""",
        arg=count,
        timeout=timeout_s * 1000,
    )
