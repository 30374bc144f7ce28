"""The operator console behind its password when other machines can reach it (AppTest)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from streamlit import config
from streamlit.testing.v1 import AppTest

from tschat.ops import password
from tschat.settings import REPO_ROOT, Settings

if TYPE_CHECKING:
    from conftest import Helpers

APP = str(REPO_ROOT / "server_app.py")
SECRET = "a long console password"
OpenConsole = Callable[..., AppTest]


@pytest.fixture
def open_console(tmp_path: Path, helpers: Helpers, monkeypatch: pytest.MonkeyPatch) -> OpenConsole:
    """Open the console (TorchServe not running) with ``TSCHAT_*`` overrides."""

    def open_tab(**overrides: str) -> AppTest:
        settings = helpers.make_settings(tmp_path)
        for name, value in {**settings.as_env(), **overrides}.items():
            monkeypatch.setenv(name, value)
        tab = AppTest.from_file(APP, default_timeout=60)
        tab.run()
        assert not tab.exception, tab.exception
        return tab

    return open_tab


@pytest.fixture
def with_password(tmp_path: Path) -> Settings:
    settings = Settings(run_dir=tmp_path / "var")
    password.set_password(settings, SECRET)
    return settings


def drawn(tab: AppTest) -> dict[str, int]:
    """How many of each kind of element the page shows, and what the sidebar holds."""
    kinds = ("tabs", "button", "text_input", "selectbox", "number_input", "radio", "code")
    counts = {kind: len(tab.get(kind)) for kind in kinds}
    counts["sidebar"] = len(tab.sidebar.children)
    return counts


def only_the_prompt(tab: AppTest) -> None:
    (prompt,) = tab.text_input
    assert prompt.label == "Password" and type(prompt.proto).Type.Name(prompt.proto.type) == (
        "PASSWORD"
    )
    assert [b.proto.label for b in tab.get("button")] == ["Unlock"]
    counts = drawn(tab)
    assert counts["tabs"] == 0 and counts["sidebar"] == 0, counts
    assert counts["selectbox"] == counts["number_input"] == counts["radio"] == 0, counts


def test_exposed_console_shows_only_a_password_prompt_until_the_right_password(
    open_console: OpenConsole, with_password: Settings
) -> None:
    tab = open_console(TSCHAT_EXPOSE_APPS="myserver.lan")
    only_the_prompt(tab)
    for wrong in ("", "a long console passwore", SECRET.upper()):
        tab.text_input(key="password").input(wrong)
        tab.button(key="unlock_submit").click().run()
        assert not tab.exception, tab.exception
        assert [e.value for e in tab.error] == ["That is not the console's password."]
        only_the_prompt(tab)
    tab.text_input(key="password").input(SECRET)
    tab.button(key="unlock_submit").click().run()
    assert not tab.exception, tab.exception
    assert not tab.error
    assert len(tab.tabs) == 5 and tab.button(key="start") and list(tab.sidebar)
    assert "password" not in [t.key for t in tab.text_input]
    tab.run()  # the session stays open
    assert len(tab.tabs) == 5
    only_the_prompt(open_console(TSCHAT_EXPOSE_APPS="myserver.lan"))  # a new one asks again


def test_exposed_console_without_a_password_shows_nothing_but_how_to_set_one(
    open_console: OpenConsole,
) -> None:
    tab = open_console(TSCHAT_EXPOSE_APPS="myserver.lan")
    assert "python -m tschat.ops.password" in tab.error[0].value
    assert drawn(tab) == dict.fromkeys(drawn(tab), 0)


@pytest.fixture
def streamlit_on_every_interface() -> Iterator[None]:
    before = config.get_option("server.address")
    config.set_option("server.address", "0.0.0.0")
    yield
    config.set_option("server.address", before)


def test_console_started_by_hand_beyond_loopback_asks_too(
    open_console: OpenConsole, with_password: Settings, streamlit_on_every_interface: None
) -> None:
    only_the_prompt(open_console())


def test_console_on_loopback_needs_no_password(
    open_console: OpenConsole, with_password: Settings
) -> None:
    tab = open_console()
    assert len(tab.tabs) == 5 and tab.button(key="start")
    assert "password" not in [t.key for t in tab.text_input]
