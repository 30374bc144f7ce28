"""config.properties content and permissions, Java and port checks, logs, status when stopped."""

from __future__ import annotations

import os
import re
import socket
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tschat.errors import JavaMissing, PortInUse, SettingsError
from tschat.ops import process
from tschat.settings import Settings

if TYPE_CHECKING:
    from conftest import Helpers


def read_properties(path: Path) -> dict[str, str]:
    """Parse like java.util.Properties for the subset we write (key=value, backslash escapes)."""
    values = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, raw = line.partition("=")
        values[key] = re.sub(
            r"\\(u[0-9a-fA-F]{4}|.)",
            lambda m: (
                chr(int(m.group(1)[1:], 16))
                if m.group(1)[0] == "u" and len(m.group(1)) == 5
                else {"n": "\n", "t": "\t", "r": "\r", "f": "\f"}.get(m.group(1), m.group(1))
            ),
            raw,
        )
    return values


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        run_dir=tmp_path / "var",
        model_store=tmp_path / "model_store",
        inference_port=9080,
        management_port=9081,
        metrics_port=9082,
        job_queue_size=7,
        token_expiration_min=15,
        max_request_size=123456,
        default_response_timeout=99,
    )


def test_config_file_is_owner_only(settings: Settings) -> None:
    old_umask = os.umask(0)  # even with a permissive umask
    try:
        path = process.write_config(settings)
    finally:
        os.umask(old_umask)
    assert path == settings.config_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    process.write_config(settings)  # rewriting tightens it again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_config_content(settings: Settings) -> None:
    values = read_properties(process.write_config(settings))
    assert values["inference_address"] == "http://127.0.0.1:9080"
    assert values["management_address"] == "http://127.0.0.1:9081"
    assert values["metrics_address"] == "http://127.0.0.1:9082"
    assert values["grpc_inference_address"] == values["grpc_management_address"] == "127.0.0.1"
    assert (values["grpc_inference_port"], values["grpc_management_port"]) == ("7070", "7071")
    assert values["model_store"] == str(settings.model_store)
    assert values["enable_model_api"] == "true"
    assert values["metrics_mode"] == "prometheus"
    assert values["enable_envvars_config"] == "false"
    assert values["install_py_dep_per_model"] == "false"
    assert values["default_workers_per_model"] == "1"
    assert values["job_queue_size"] == "7"
    assert values["max_request_size"] == "123456"
    assert values["token_expiration_min"] == "15"
    assert values["vmargs"].split() == [
        "-Xmx1g",
        "-XX:+UseContainerSupport",
        "-Djava.util.concurrent.ForkJoinPool.common.parallelism=2",  # not a thread per call
    ]
    assert values["default_response_timeout"] == "99"
    assert values["disable_system_metrics"] == "false"
    assert "disable_token_authorization" not in values


def test_allowed_urls_admit_only_archives_in_the_store(settings: Settings) -> None:
    pattern = read_properties(process.write_config(settings))["allowed_urls"]
    assert "," not in pattern  # TorchServe splits the list at commas
    store = settings.model_store

    def allowed(
        url: str,
    ) -> bool:  # TorchServe: Pattern.compile(p, CASE_INSENSITIVE).matcher(url).matches()
        return re.fullmatch(pattern, url, re.IGNORECASE) is not None

    assert allowed(f"file://{store}/smollm2.mar")
    assert allowed(f"FILE://{store}/smollm2.MAR")
    for url in (
        "http://127.0.0.1:8000/smollm2.mar",
        "https://example.com/smollm2.mar",
        f"http://{store}/smollm2.mar",
        f"file://{store}/sub/smollm2.mar",
        f"file://{store}/smollm2.mar.zip",
        f"file://{store}x/smollm2.mar",
        f"file://{store.parent}/smollm2.mar",
        "file:///etc/smollm2.mar",
        "s3://bucket/smollm2.mar",
        # Bare names are not URLs: TorchServe loads them from the store without matching.
        # Matching them would make TorchServe "download" the store file onto itself and fail.
        "smollm2.mar",
    ):
        assert not allowed(url), url


def test_special_characters_in_paths_are_escaped(tmp_path: Path) -> None:
    store = tmp_path / "my models (v1.0) é+"
    settings = Settings(run_dir=tmp_path / "var", model_store=store)
    text = process.config_text(settings)
    assert text.isascii()
    values = read_properties(process.write_config(settings))
    assert values["model_store"] == str(store)
    assert re.fullmatch(values["allowed_urls"], f"file://{store}/a.mar", re.IGNORECASE)
    assert not re.fullmatch(values["allowed_urls"], f"file://{tmp_path}/my models (v1X0) é+/a.mar")


def test_store_path_with_a_comma_is_refused(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path / "var", model_store=tmp_path / "a,b")
    with pytest.raises(SettingsError, match="comma"):
        process.config_text(settings)


def test_escape_property() -> None:
    assert process.escape_property("plain") == "plain"
    assert process.escape_property("a\\b") == "a\\\\b"
    assert process.escape_property(" lead") == "\\ lead"
    assert process.escape_property("x\ny") == "x\\ny"
    assert process.escape_property("😀") == "\\ud83d\\ude00"


def fake_java(tmp_path: Path, output: str) -> dict[str, str]:
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text(f"#!/bin/sh\necho '{output}' >&2\n")
    java.chmod(0o755)
    return {"JAVA_HOME": str(home), "PATH": os.environ.get("PATH", "")}


def test_java_17_or_newer_is_accepted(tmp_path: Path) -> None:
    assert process.check_java(fake_java(tmp_path, 'openjdk version "21.0.2" 2024-01-16')) == 21


def test_old_java_is_refused_with_advice(tmp_path: Path) -> None:
    with pytest.raises(JavaMissing, match="Java 17 or newer, but found Java 11"):
        process.check_java(fake_java(tmp_path, 'openjdk version "11.0.2" 2019-01-15'))
    with pytest.raises(JavaMissing, match="Java 8"):
        process.check_java(fake_java(tmp_path / "8", 'java version "1.8.0_392"'))


def test_missing_java(tmp_path: Path) -> None:
    with pytest.raises(JavaMissing, match="no `java` command"):
        process.check_java({"PATH": str(tmp_path)})
    with pytest.raises(JavaMissing):
        process.check_java({"JAVA_HOME": str(tmp_path / "nowhere"), "PATH": ""})


def test_port_in_use_names_the_port_and_setting(tmp_path: Path, helpers: Helpers) -> None:
    ports = helpers.free_ports(5)
    settings = Settings(
        run_dir=tmp_path,
        inference_port=ports[0],
        management_port=ports[1],
        metrics_port=ports[2],
        grpc_inference_port=ports[3],
        grpc_management_port=ports[4],
    )
    process.check_ports_free(settings)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[1]))
        busy.listen()
        with pytest.raises(PortInUse) as caught:
            process.check_ports_free(settings)
    assert caught.value.port == ports[1]
    assert f"Port {ports[1]} on 127.0.0.1" in str(caught.value)
    assert "TSCHAT_MANAGEMENT_PORT" in str(caught.value)


def test_status_and_stop_when_nothing_runs(tmp_path: Path, helpers: Helpers) -> None:
    ports = helpers.free_ports(5)
    settings = Settings(
        run_dir=tmp_path / "var",
        inference_port=ports[0],
        management_port=ports[1],
        metrics_port=ports[2],
        grpc_inference_port=ports[3],
        grpc_management_port=ports[4],
    )
    settings.run_dir.mkdir()
    settings.pid_file.write_text("1\n")  # a pid that is not TorchServe
    current = process.status(settings)
    assert (current.running, current.pid, current.health, current.open_ports) == (
        False,
        None,
        None,
        (),
    )
    assert current.summary == "TorchServe is stopped."
    assert process.stop(settings) is False
    assert not settings.pid_file.exists()


def test_tail_log(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path)
    assert process.tail_log(settings, "model_log.log") == ""
    settings.log_dir.mkdir()
    lines = [f"line {index} é" for index in range(5000)]
    (settings.log_dir / "model_log.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert (
        process.tail_log(settings, "model_log.log", lines=3)
        == "line 4997 é\nline 4998 é\nline 4999 é"
    )
    assert process.tail_log(settings, "model_log.log", lines=10_000).splitlines() == lines
    with pytest.raises(ValueError, match="unknown log"):
        process.tail_log(settings, "../key_file.json")  # type: ignore[arg-type]


def test_logs_roll_by_size_only() -> None:
    """A roll at midnight would leave the console reading empty logs: no worker engines, no
    restarts (tschat/ops/monitor.py reads both from the tail of the current files)."""
    from xml.etree import ElementTree

    appenders = ElementTree.parse(process.LOG_CONFIG).getroot().iter("RollingFile")
    names = set()
    for appender in appenders:
        names.add(f"{appender.get('name')}.log")
        policies = appender.find("Policies")
        assert policies is not None
        assert [policy.tag for policy in policies] == ["SizeBasedTriggeringPolicy"], names
        assert appender.get("filePattern", "").endswith(".%i.log.gz")
    assert {"model_log.log", "ts_log.log"} <= names


def test_long_run_dir_is_refused_before_starting(tmp_path: Path) -> None:
    settings = Settings(run_dir=tmp_path / ("x" * 120))
    with pytest.raises(SettingsError, match="too long"):
        process.start(settings)
    assert not settings.run_dir.exists()


def test_workers_spin_briefly_unless_told_otherwise(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    assert process._launch_env(settings)["GOMP_SPINCOUNT"] == "1000"
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")  # an operator's own choice stands
    assert process._launch_env(settings)["GOMP_SPINCOUNT"] == "300000"
