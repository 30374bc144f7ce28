"""The operator console in headless chromium: start, register, watch, stop; and double Start.

Each test runs ``streamlit run server_app.py`` against a TorchServe of its own (free ports, a
temporary run directory) that the console itself starts and stops.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from tschat.api.inference import InferenceClient
from tschat.api.keys import KeyStore
from tschat.ops import process
from tschat.settings import Settings

if TYPE_CHECKING:
    from conftest import Helpers, RunningApp
    from playwright.sync_api import Browser, Locator, Page

pytestmark = [pytest.mark.browser, pytest.mark.integration]

SLOW_MS = 180_000  # starting TorchServe, loading the model in a worker
VIEWPORT = {"width": 1400, "height": 1000}

StartApp = Callable[[str, int, Mapping[str, str]], "RunningApp"]


def _frontends(settings: Settings) -> list[int]:
    """TorchServe frontends started with this run directory's config, as the OS lists them."""
    found = []
    for candidate in psutil.process_iter():
        try:
            cmdline = candidate.cmdline()
        except psutil.Error:
            continue
        if process.FRONTEND_CLASS in cmdline and str(settings.config_file) in cmdline:
            found.append(candidate.pid)
    return found


def _open(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(SLOW_MS)
    page.goto(url)
    page.get_by_role("heading", name="TorchServe console").wait_for()
    return page


def _text(page: Page, text: str) -> None:
    page.get_by_text(text).first.wait_for()


def _count(locator: Locator, count: int) -> None:
    from playwright.sync_api import expect

    expect(locator).to_have_count(count, timeout=SLOW_MS)


def test_start_register_watch_and_stop(
    browser: Browser,
    streamlit_app: StartApp,
    helpers: Helpers,
    tmp_path: Path,
    smollm2_store: Path,
) -> None:
    settings = helpers.make_settings(tmp_path, model_store=smollm2_store)
    app = streamlit_app("server_app.py", helpers.free_port(), settings.as_env())
    page = _open(browser, app.url)
    try:
        _text(page, "TorchServe is stopped")
        page.get_by_role("button", name="Start").click()
        _text(page, "TorchServe is running")
        assert process.status(settings).owned

        page.get_by_role("tab", name="Models").click()
        page.get_by_role("button", name="Register", exact=True).click()
        _text(page, "smollm2 is registered from smollm2.mar")

        # Some traffic, so the charts have something to draw.
        client = InferenceClient.from_settings(settings, KeyStore(settings))
        for _ in range(2):
            client.chat("smollm2", [{"role": "user", "content": "Hi"}], max_tokens=8)

        page.get_by_role("tab", name="Live view").click()
        # The grid is drawn on a canvas; its cells are mirrored in a hidden accessible table.
        workers = page.locator("[data-testid=stDataFrame] table").first
        workers.get_by_text("READY", exact=True).wait_for(state="attached")
        pid = str(process.status(settings).worker_pids[0])
        assert pid in workers.locator("td").all_inner_texts()
        # Plotly has drawn a line once two samples were taken.
        page.locator(".js-plotly-plot .scatterlayer .trace path.js-line").first.wait_for()
        # Four charts once the fragment's rerun settles (while it reruns, the
        # previous run's elements can still be in the page beside the new ones).
        _count(page.locator(".js-plotly-plot"), 4)

        pids = helpers.server_pids(settings)
        page.get_by_role("button", name="Stop").click()
        _text(page, "TorchServe stopped; no worker or port is left.")
        _text(page, "TorchServe is stopped")
        helpers.assert_stopped(settings, pids)
    finally:
        page.close()
        process.stop(settings)
    assert "Traceback" not in app.log.read_text(errors="replace")


def _console_of_a_stopped_server(
    streamlit_app: StartApp, helpers: Helpers, tmp_path: Path
) -> tuple[Settings, RunningApp]:
    """The console, for a TorchServe that is not started, with an empty model store."""
    settings = helpers.make_settings(tmp_path)
    settings.model_store.mkdir(parents=True)
    return settings, streamlit_app("server_app.py", helpers.free_port(), settings.as_env())


def test_start_clicked_in_two_tabs_runs_one_torchserve(
    browser: Browser, streamlit_app: StartApp, helpers: Helpers, tmp_path: Path
) -> None:
    settings, app = _console_of_a_stopped_server(streamlit_app, helpers, tmp_path)
    first, second = _open(browser, app.url), _open(browser, app.url)
    try:
        for page in (first, second):
            _text(page, "TorchServe is stopped")
        # Both tabs still show Start enabled: click both at once, then once more.
        first.get_by_role("button", name="Start").click()
        second.get_by_role("button", name="Start").click()
        for page in (first, second):
            _text(page, "TorchServe is running")
        frontends = _frontends(settings)
        assert len(frontends) == 1, frontends
        assert process.status(settings).pid == frontends[0]
        second.reload()
        _text(second, "TorchServe is running")
        assert second.get_by_role("button", name="Start").is_disabled()
        time.sleep(1)  # any late second launch would show up by now
        assert _frontends(settings) == frontends

        pids = helpers.server_pids(settings)
        first.get_by_role("button", name="Stop").click()
        _text(first, "TorchServe is stopped")
        helpers.assert_stopped(settings, pids)
    finally:
        first.close()
        second.close()
        process.stop(settings)


HIDE_PAGE_JS = """
(hidden) => {
  // What the browser does when the tab goes to the background or comes back.
  const state = hidden ? "hidden" : "visible";
  Object.defineProperty(document, "visibilityState", { value: state, configurable: true });
  Object.defineProperty(document, "hidden", { value: hidden, configurable: true });
  document.dispatchEvent(new Event("visibilitychange"));
}
"""


def test_a_hidden_page_or_a_quiet_tab_asks_for_no_refresh(
    browser: Browser, streamlit_app: StartApp, helpers: Helpers, tmp_path: Path
) -> None:
    _, app = _console_of_a_stopped_server(streamlit_app, helpers, tmp_path)
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(SLOW_MS)
    sent: list[object] = []  # every message the page sends the console (a refresh is one)
    page.on("websocket", lambda ws: ws.on("framesent", lambda frame: sent.append(frame)))

    def sent_during(seconds: float) -> int:
        before = len(sent)
        page.wait_for_timeout(seconds * 1000)  # (Playwright's events arrive while it waits)
        return len(sent) - before

    def refreshes(count: int, within: float = 12) -> bool:
        """Whether the page sends ``count`` messages within ``within`` seconds."""
        before, deadline = len(sent), time.monotonic() + within
        while len(sent) - before < count and time.monotonic() < deadline:
            page.wait_for_timeout(250)
        return len(sent) - before >= count

    try:
        page.goto(app.url)
        _text(page, "Nothing to watch while TorchServe is stopped")
        page.get_by_role("combobox", name="Live view refresh").click()
        page.get_by_role("option", name="2 s", exact=True).click()
        assert refreshes(3), "a shown page refreshes every 2 s"
        page.evaluate(HIDE_PAGE_JS, True)
        page.wait_for_timeout(3000)  # the rerun that tells the console
        assert sent_during(6) == 0, "a hidden page refreshes nothing"
        page.evaluate(HIDE_PAGE_JS, False)
        assert refreshes(3), "shown again, it refreshes again"
        page.get_by_role("tab", name="Models").click()
        page.wait_for_timeout(3000)
        assert sent_during(6) == 0, "a tab without live parts refreshes nothing"
    finally:
        page.close()
    assert "Traceback" not in app.log.read_text(errors="replace")
