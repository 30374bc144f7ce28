"""`make run`'s Streamlit command lines: loopback unless the apps are exposed on purpose, and
never exposed without the console's password."""

from __future__ import annotations

from pathlib import Path

import pytest

from tschat import run
from tschat.errors import SettingsError
from tschat.ops import password
from tschat.settings import Settings


def option_values(argv: list[str], option: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == option]


@pytest.mark.parametrize("script", ["server_app.py", "client_app.py"])
def test_apps_listen_on_loopback_whatever_torchserve_host_says(script: str) -> None:
    argv = run.streamlit_argv(script, 8501, Settings.from_env({"TSCHAT_HOST": "0.0.0.0"}))
    assert option_values(argv, "--server.address") == ["127.0.0.1"]
    assert option_values(argv, "--server.allowedHosts") == ["127.0.0.1", "localhost"]


@pytest.mark.parametrize("script", ["server_app.py", "client_app.py"])
def test_exposed_apps_listen_everywhere_but_answer_only_their_names(script: str) -> None:
    settings = Settings.from_env({"TSCHAT_EXPOSE_APPS": "myserver.lan,10.0.0.5"})
    argv = run.streamlit_argv(script, 8501, settings)
    assert option_values(argv, "--server.address") == ["0.0.0.0"]
    assert option_values(argv, "--server.allowedHosts") == [
        "127.0.0.1", "localhost", "myserver.lan", "10.0.0.5",
    ]  # fmt: skip


def test_apps_are_not_exposed_without_the_console_password(tmp_path: Path) -> None:
    settings = Settings(expose_apps="myserver.lan", run_dir=tmp_path / "var")
    with pytest.raises(SettingsError, match="python -m tschat.ops.password"):
        run.start_apps(settings)
    password.set_password(settings, "a long console password")
    run.check_exposure(settings)  # now allowed
    run.check_exposure(Settings(run_dir=tmp_path / "other"))  # on loopback: no password needed


def test_make_run_refuses_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TSCHAT_EXPOSE_APPS", "myserver.lan")
    monkeypatch.setenv("TSCHAT_RUN_DIR", str(tmp_path / "var"))
    assert run.main([]) == 1
    assert "has no password" in capsys.readouterr().err
    assert not (tmp_path / "var" / "config.properties").exists(), "TorchServe was not started"
