"""What a browser gets from the console: a password prompt when it is exposed, and nothing at
all through a host name rebound to 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

from apps.browser import CHROMIUM, CHROMIUM_ARGS
from tschat.ops import password
from tschat.settings import Settings

if TYPE_CHECKING:
    from conftest import Helpers, RunningApp
    from playwright.sync_api import Browser

pytestmark = [pytest.mark.browser, pytest.mark.integration]

SECRET = "a long console password"
StartApp = Callable[[str, int, Mapping[str, str]], "RunningApp"]


def listening(pid: int, port: int) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def test_exposed_console_asks_for_its_password_first(
    browser: Browser, streamlit_app: StartApp, helpers: Helpers, tmp_path: Path
) -> None:
    settings = helpers.make_settings(tmp_path, expose_apps="myserver.test")
    password.set_password(settings, SECRET)
    port = helpers.free_port()
    app = streamlit_app("server_app.py", port, settings.as_env())
    assert listening(app.process.pid, port) == {("0.0.0.0", port)}, "exposed on purpose"
    for host, status in (("myserver.test", 101), ("127.0.0.1", 101), ("other.test", 403)):
        assert helpers.websocket_status(port, f"{host}:{port}") == status, host

    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.goto(app.url)
    field = page.get_by_label("Password", exact=True)
    field.wait_for()
    assert page.get_by_role("tab").count() == 0
    assert page.get_by_role("button", name="Start").count() == 0
    field.fill("not the password")
    page.get_by_role("button", name="Unlock").click()
    page.get_by_text("That is not the console's password.").wait_for()
    assert page.get_by_role("tab").count() == 0
    page.get_by_label("Password", exact=True).fill(SECRET)
    page.get_by_role("button", name="Unlock").click()
    page.get_by_role("tab", name="Live view").wait_for()
    page.get_by_role("button", name="Start").wait_for()
    assert page.get_by_label("Password", exact=True).count() == 0
    page.close()


def test_a_page_at_a_rebound_host_name_gets_nothing_from_the_console(
    browser: Browser, streamlit_app: StartApp, helpers: Helpers, tmp_path: Path
) -> None:
    """DNS rebinding: a name that resolves to 127.0.0.1 loads Streamlit's page, but its
    WebSocket is refused, so nothing of the console ever appears."""
    settings: Settings = helpers.make_settings(tmp_path)
    port = helpers.free_port()
    app = streamlit_app("server_app.py", port, settings.as_env())
    rebinding = browser.browser_type.launch(
        executable_path=str(CHROMIUM),
        headless=True,
        args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP rebound.test 127.0.0.1"],
    )
    try:
        page = rebinding.new_page()
        page.set_default_timeout(60_000)
        page.goto(f"http://rebound.test:{port}/")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert page.get_by_role("heading", name="TorchServe console").count() == 0
            assert page.get_by_role("button", name="Start").count() == 0
            time.sleep(0.5)
        page.goto(app.url)  # the same browser, by the loopback address: the console is there
        page.get_by_role("heading", name="TorchServe console").wait_for()
    finally:
        rebinding.close()
