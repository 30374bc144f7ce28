"""Settings: defaults, TSCHAT_* overrides, and clear errors for bad values."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tschat.errors import SettingsError
from tschat.settings import REPO_ROOT, Settings, describe_settings


def test_defaults_stay_on_loopback_with_the_usual_ports() -> None:
    settings = Settings()
    assert settings.host == "127.0.0.1"
    assert settings.inference_url == "http://127.0.0.1:8080"
    assert settings.management_url == "http://127.0.0.1:8081"
    assert settings.metrics_url == "http://127.0.0.1:8082"
    assert settings.run_dir == REPO_ROOT / "var"
    assert settings.model_store == REPO_ROOT / "model_store"
    assert settings.key_file == REPO_ROOT / "var" / "key_file.json"
    assert settings.log_dir == REPO_ROOT / "var" / "logs"
    assert settings.config_file == REPO_ROOT / "var" / "config.properties"
    assert settings.model_name == "smollm2"


def test_repo_root_is_the_parent_of_the_package() -> None:
    assert (REPO_ROOT / "tschat" / "settings.py").is_file()


def test_every_field_is_documented_and_overridable() -> None:
    rows = describe_settings()
    assert [row[0] for row in rows] == [
        "TSCHAT_" + field.name.upper() for field in dataclasses.fields(Settings)
    ]
    assert all(description.endswith(".") for _, _, description in rows)
    host_help = next(text for name, _, text in rows if name == "TSCHAT_HOST")
    assert "network" in host_help  # the risk of binding elsewhere is spelled out


def test_environment_overrides_each_type(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "TSCHAT_HOST": "localhost",
            "TSCHAT_INFERENCE_PORT": " 9080 ",
            "TSCHAT_MANAGEMENT_PORT": "9081",
            "TSCHAT_METRICS_PORT": "9082",
            "TSCHAT_RUN_DIR": str(tmp_path / "run"),
            "TSCHAT_MODEL_STORE": str(tmp_path / "store"),
            "TSCHAT_MODEL_NAME": "other",
            "TSCHAT_JOB_QUEUE_SIZE": "7",
            "TSCHAT_TOKEN_EXPIRATION_MIN": "0.5",
            "TSCHAT_MAX_REQUEST_SIZE": "100000",
            "UNRELATED": "x",
        }
    )
    assert settings.inference_url == "http://localhost:9080"
    assert settings.management_port == 9081 and settings.metrics_port == 9082
    assert settings.run_dir == tmp_path / "run"
    assert settings.key_file == tmp_path / "run" / "key_file.json"
    assert settings.model_store == tmp_path / "store"
    assert settings.model_name == "other"
    assert settings.job_queue_size == 7
    assert settings.token_expiration_min == 0.5
    assert settings.max_request_size == 100000


def test_keyword_overrides_win_over_the_environment() -> None:
    settings = Settings.from_env({"TSCHAT_INFERENCE_PORT": "9080"}, inference_port=9090)
    assert settings.inference_port == 9090


def test_relative_paths_become_absolute(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({"TSCHAT_RUN_DIR": "here"})
    assert settings.run_dir == tmp_path / "here"
    assert settings.run_dir.is_absolute()


def test_ipv6_hosts_are_bracketed_in_urls() -> None:
    assert Settings(host="::1").inference_url == "http://[::1]:8080"


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("TSCHAT_INFERENCE_PORT", "http", "not a whole number"),
        ("TSCHAT_INFERENCE_PORT", "8080.5", "not a whole number"),
        ("TSCHAT_MANAGEMENT_PORT", "70000", "between 1 and 65535"),
        ("TSCHAT_METRICS_PORT", "0", "between 1 and 65535"),
        ("TSCHAT_JOB_QUEUE_SIZE", "-3", "out of range"),
        ("TSCHAT_TOKEN_EXPIRATION_MIN", "soon", "not a number"),
        ("TSCHAT_TOKEN_EXPIRATION_MIN", "nan", "not a number"),
        ("TSCHAT_MAX_REQUEST_SIZE", "12", "out of range"),
        ("TSCHAT_RUN_DIR", "", "empty"),
        ("TSCHAT_HOST", "  ", "empty"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str, words: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({variable: value})
    message = str(caught.value)
    assert words in message
    if variable != "TSCHAT_HOST":
        assert variable in message


def test_two_services_cannot_share_a_port() -> None:
    with pytest.raises(SettingsError, match="inference_port and management_port are both 9000"):
        Settings(inference_port=9000, management_port=9000)


def test_apps_cannot_share_a_port_with_torchserve() -> None:
    with pytest.raises(SettingsError, match="metrics_port and console_port"):
        Settings(metrics_port=8501)


def test_bounds_apply_to_direct_construction_too() -> None:
    with pytest.raises(SettingsError, match="inference_port"):
        Settings(inference_port=-1)


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Settings().host = "0.0.0.0"  # type: ignore[misc]


def test_apps_stay_on_loopback_whatever_the_torchserve_host() -> None:
    for host in ("127.0.0.1", "0.0.0.0", "::", "myserver.lan"):
        settings = Settings.from_env({"TSCHAT_HOST": host})
        assert settings.apps_address == "127.0.0.1" and not settings.apps_exposed
        assert settings.apps_allowed_hosts == ("127.0.0.1", "localhost")


def test_exposing_the_apps_takes_its_own_setting() -> None:
    settings = Settings.from_env({"TSCHAT_EXPOSE_APPS": " myserver.lan,10.0.0.5 ,localhost"})
    assert settings.apps_exposed and settings.apps_address == "0.0.0.0"
    assert settings.exposed_hostnames == ("myserver.lan", "10.0.0.5", "localhost")
    assert settings.apps_allowed_hosts == ("127.0.0.1", "localhost", "myserver.lan", "10.0.0.5")
    assert settings.host == "127.0.0.1", "TorchServe stays where it was"
    assert Settings.from_env(settings.as_env()).expose_apps == settings.expose_apps
    assert "TSCHAT_EXPOSE_APPS" not in Settings().as_env()


@pytest.mark.parametrize("value", ["*", "*.example.com", "http://myserver", "myserver:8501",
                                   "my server", "-bad", "a..b"])  # fmt: skip
def test_exposure_names_are_host_names(value: str) -> None:
    with pytest.raises(SettingsError, match="TSCHAT_EXPOSE_APPS holds"):
        Settings.from_env({"TSCHAT_EXPOSE_APPS": f"ok.lan,{value}"})


def test_streamlit_config_answers_the_loopback_names_only() -> None:
    import tomllib

    from tschat.settings import LOOPBACK_HOSTNAMES

    config = tomllib.loads((REPO_ROOT / ".streamlit" / "config.toml").read_text())
    assert tuple(config["server"]["allowedHosts"]) == LOOPBACK_HOSTNAMES
    assert config["server"]["address"] == Settings().apps_address
    assert config["server"]["enableCORS"] is True


def test_readme_lists_every_variable() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name, _, _ in describe_settings() if f"| `{name}` |" not in readme]
    assert not missing, missing
