"""Closed by default: loopback binds, owner-only secrets kept out of git, no tracebacks shown,
apps that answer only their own host names."""

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

from tschat import run
from tschat.ops import process
from tschat.settings import Settings

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


# ---------------------------------------------------------------- the apps under `make run`


def page(port: int, host_header: str) -> tuple[int, bytes]:
    """Status and body of the app's page ``/`` requested with ``host_header``."""
    request = f"GET / HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture(scope="module")
def apps_of_make_run(tmp_path_factory: pytest.TempPathFactory, helpers: Any) -> Any:
    """Both apps as `make run` starts them, with TSCHAT_HOST=0.0.0.0 (TorchServe not started)."""
    console_port, chat_port = helpers.free_ports(2)
    settings = Settings.from_env(
        {
            "TSCHAT_HOST": "0.0.0.0",
            "TSCHAT_CONSOLE_PORT": str(console_port),
            "TSCHAT_CHAT_PORT": str(chat_port),
            "TSCHAT_RUN_DIR": str(tmp_path_factory.mktemp("apps") / "var"),
        }
    )
    apps = run.start_apps(settings)
    try:
        for port in (console_port, chat_port):
            helpers.wait_listening(port, timeout=60)
        yield settings, apps
    finally:
        for app in apps:
            process.stop_child(app)


def test_torchserve_host_0000_leaves_both_apps_on_loopback(apps_of_make_run: Any) -> None:
    settings, apps = apps_of_make_run
    for app, port in zip(apps, (settings.console_port, settings.chat_port), strict=True):
        addresses = {a for a in listening_addresses([app.pid]) if a[1] == port}
        assert addresses == {("127.0.0.1", port)}, addresses


@pytest.mark.parametrize("foreign", ["rebound.example", "rebound.example:{port}", "0.0.0.0:{port}",
                                     "127.0.0.1.rebound.example:{port}", ""])  # fmt: skip
def test_a_websocket_addressed_to_a_foreign_host_is_refused(
    apps_of_make_run: Any, foreign: str, helpers: Any
) -> None:
    settings, _ = apps_of_make_run
    for port in (settings.console_port, settings.chat_port):
        assert helpers.websocket_status(port, foreign.format(port=port)) == 403
        assert helpers.websocket_status(port, f"127.0.0.1:{port}") == 101
        assert helpers.websocket_status(port, f"localhost:{port}") == 101


def test_a_page_for_a_foreign_host_is_only_streamlits_empty_shell(apps_of_make_run: Any) -> None:
    """The page is Streamlit's static frontend, the same for both apps: everything an app shows
    or does goes over the WebSocket, which a foreign Host does not get."""
    settings, _ = apps_of_make_run
    console = page(settings.console_port, "rebound.example")
    chat = page(settings.chat_port, "rebound.example")
    assert console[0] == chat[0] == 200
    own = page(settings.console_port, f"127.0.0.1:{settings.console_port}")
    assert console[1] == chat[1] == own[1]
    for text in (b"TorchServe", b"console", b"smollm2", str(settings.run_dir).encode()):
        assert text not in console[1]


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
