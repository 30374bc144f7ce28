"""Shared test fixtures: free ports, a tiny local HTTP server, and a real TorchServe."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest

from tschat.api.inference import InferenceClient
from tschat.api.keys import KeyStore
from tschat.api.management import ManagementClient
from tschat.ops import process
from tschat.ops.serving import ServingRegistry
from tschat.settings import REPO_ROOT, Settings

MODEL_NAME = "smollm2"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: slower tests that run real processes, archives or models"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_listening(port: int, timeout: float = 30.0) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def websocket_status(port: int, host_header: str) -> int:
    """The HTTP status a Streamlit app gives a WebSocket handshake addressed to ``host_header``
    (101: accepted); the connection itself always goes to 127.0.0.1."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /_stcore/stream HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: streamlit\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request.encode())
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (held open together while choosing, so none repeats)."""
    return process.free_loopback_ports(count)


def make_settings(root: Path, **overrides: object) -> Settings:
    """Settings for a throwaway TorchServe under ``root`` on free loopback ports."""
    ports = free_ports(5)
    values: dict[str, object] = {
        "run_dir": root / "var",
        "model_store": root / "model_store",
        "inference_port": ports[0],
        "management_port": ports[1],
        "metrics_port": ports[2],
        "grpc_inference_port": ports[3],
        "grpc_management_port": ports[4],
        "startup_timeout_s": 180.0,
        "request_timeout_s": 120.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def assert_stopped(settings: Settings, pids: list[int]) -> None:
    """Nothing of a stopped TorchServe is left: no process, no open port, no key file."""
    alive = [pid for pid in pids if psutil.pid_exists(pid) and not _zombie(pid)]
    assert not alive, f"processes left after stop: {alive}"
    for port in (
        settings.inference_port,
        settings.management_port,
        settings.metrics_port,
        settings.grpc_inference_port,
        settings.grpc_management_port,
    ):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            raise AssertionError(f"port {port} still answers after stop")
    assert not settings.key_file.exists()
    assert not settings.pid_file.exists()


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def server_pids(settings: Settings) -> list[int]:
    """The frontend, its launcher and its workers, as the OS lists them now."""
    current = process.status(settings)
    pids = [pid for pid in (current.pid, *current.worker_pids) if pid]
    if current.pid:
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(current.pid).parent()
            if parent is not None:
                pids.append(parent.pid)
    return pids


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TSCHAT_* or TS_CONFIG_FILE from the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("TSCHAT_") or name == "TS_CONFIG_FILE":
            monkeypatch.delenv(name)


# ---------------------------------------------------------------- a tiny local HTTP server


@dataclass
class LocalServer:
    """A threaded http.server on 127.0.0.1 with its base URL."""

    url: str
    port: int
    server: ThreadingHTTPServer


@pytest.fixture
def http_server() -> Iterator[Callable[[type[BaseHTTPRequestHandler]], LocalServer]]:
    """Start local HTTP servers with a given handler class; all are shut down after the test."""
    started: list[ThreadingHTTPServer] = []

    def start(handler: type[BaseHTTPRequestHandler]) -> LocalServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        started.append(server)
        port = int(server.server_address[1])
        return LocalServer(f"http://127.0.0.1:{port}", port, server)

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Helpers:
    """The helpers of this conftest, handed to test modules as the ``helpers`` fixture.

    (Test modules cannot import conftest reliably: other test folders have their own.)
    """

    free_port: Callable[[], int] = free_port
    free_ports: Callable[[int], list[int]] = free_ports
    wait_listening: Callable[..., None] = wait_listening
    make_settings: Callable[..., Settings] = make_settings
    assert_stopped: Callable[[Settings, list[int]], None] = assert_stopped
    server_pids: Callable[[Settings], list[int]] = server_pids
    websocket_status: Callable[[int, str], int] = websocket_status


@pytest.fixture(scope="session")
def helpers() -> Helpers:
    """free_port, free_ports, make_settings, assert_stopped, server_pids, websocket_status."""
    return Helpers()


# ---------------------------------------------------------------- a real TorchServe


@dataclass(frozen=True)
class TorchServeServer:
    """A running TorchServe with the default model registered, and clients for it."""

    settings: Settings
    keys: KeyStore
    management: ManagementClient
    inference: InferenceClient
    model: str
    registry: ServingRegistry


def package_default_model(store: Path) -> Path:
    """Build store/smollm2.mar with the project's packaging script."""
    store.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "package_model.sh"), "--output-dir", str(store)]
        + ["--name", MODEL_NAME],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"package_model.sh failed:\n{result.stdout}\n{result.stderr}"
    return store / f"{MODEL_NAME}.mar"


@pytest.fixture(scope="session")
def torchserve_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TorchServeServer]:
    """A real TorchServe on free loopback ports with smollm2.mar registered (batch 4, 50 ms)."""
    root = tmp_path_factory.mktemp("torchserve")
    settings = make_settings(root)
    package_default_model(settings.model_store)
    try:
        process.start(settings)
        keys = KeyStore(settings)
        management = ManagementClient(settings, keys)
        inference = InferenceClient.from_settings(settings, keys)
        registry = ServingRegistry(management, settings.model_store)
        registry.register(f"{MODEL_NAME}.mar", batch_size=4, max_batch_delay=50, initial_workers=1)
        registry.wait_until_ready(MODEL_NAME, timeout=180)
    except BaseException:
        process.stop(settings)
        raise
    pids = server_pids(settings)
    yield TorchServeServer(settings, keys, management, inference, MODEL_NAME, registry)
    pids = server_pids(settings) + pids
    process.stop(settings)
    assert_stopped(settings, pids)
