"""Closed by default: loopback binds, owner-only secrets kept out of git, no tracebacks shown."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import tomllib

from tschat.ops import process

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}  # Java reports IPv4-mapped addresses


def listening_addresses(pids: list[int]) -> set[tuple[str, int]]:
    found = set()
    for pid in pids:
        for conn in psutil.Process(pid).net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                found.add((conn.laddr.ip, conn.laddr.port))
    return found


def test_torchserve_listens_on_loopback_only(torchserve_server: Any) -> None:
    status = process.status(torchserve_server.settings)
    assert status.pid is not None
    addresses = listening_addresses([status.pid, *status.worker_pids])
    s = torchserve_server.settings
    ports = {port for _, port in addresses}
    assert {s.inference_port, s.management_port, s.metrics_port} <= ports
    assert {ip for ip, _ in addresses} <= LOOPBACK, addresses


def test_secrets_are_owner_only_and_ignored_by_git(torchserve_server: Any) -> None:
    s = torchserve_server.settings
    for path in (s.key_file, s.config_file):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, f"{path.name} is {oct(mode)}"
    ignored = subprocess.run(
        ["git", "check-ignore", "var/key_file.json", "var/config.properties", "key_file.json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ignored.stdout.split() == ["var/key_file.json", "var/config.properties", "key_file.json"]


def test_streamlit_config_hides_tracebacks_and_binds_loopback() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["showErrorDetails"] is False
    assert config["server"]["address"] == "127.0.0.1"


@pytest.mark.parametrize("app", ["client_app.py", "server_app.py"])
def test_apps_started_plainly_listen_on_loopback_only(app: str, helpers: Any) -> None:
    port = helpers.free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", app, "--server.port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        addresses = {a for a in listening_addresses([proc.pid]) if a[1] == port}
        assert addresses == {("127.0.0.1", port)}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


# ---------------------------------------------------------------- the run folder


def test_run_folder_keys_and_logs_are_never_readable_by_others(
    tmp_path: Path, helpers: Any, torchserve_server: Any
) -> None:
    """Watch the run folder from before it exists, through start, a worker, a key refresh and
    stop: it is 0700 and no file in it is ever seen readable by group or others."""
    from folder_watch import FolderWatch

    from tschat.api.keys import KeyStore
    from tschat.ops.serving import ServingRegistry

    settings = helpers.make_settings(tmp_path, model_store=torchserve_server.settings.model_store)
    with FolderWatch(tmp_path) as watch:
        process.start(settings)
        try:
            keys = KeyStore(settings)
            registry = ServingRegistry.for_settings(settings, keys)
            registry.register("smollm2.mar", initial_workers=1)
            registry.wait_until_ready("smollm2", timeout=240)
            keys.refresh("inference")
        finally:
            process.stop(settings)
        time.sleep(0.5)  # the last events
    assert not watch.overflowed
    inside = [(path, stat.S_IMODE(mode)) for path, mode in watch.seen
              if path.is_relative_to(settings.run_dir)]  # fmt: skip
    names = {path.name for path, _ in inside}
    expected = {"key_file.json", "config.properties", "torchserve.pid", "console.log",
                "ts_log.log", "model_log.log", "access_log.log", "ts_metrics.log"}  # fmt: skip
    assert expected <= names, expected - names
    assert {mode for path, mode in inside if path == settings.run_dir} == {0o700}
    readable = sorted({f"{path.relative_to(tmp_path)} {oct(mode)}" for path, mode in inside
                       if mode & 0o077})  # fmt: skip
    assert not readable, readable
