"""ManagementClient and the serving registry on top of it, against a local HTTP server that
plays TorchServe's management API."""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, unquote, urlparse

import pytest

from tschat.api.keys import KeyStore
from tschat.api.management import ManagementClient, ModelEntry, ModelStatus
from tschat.errors import (
    ArchiveInvalid,
    AuthError,
    ModelNotFound,
    ModelNotReady,
    QueueFull,
    ServerError,
    ServerNotRunning,
)
from tschat.ops.serving import ServingRegistry
from tschat.settings import Settings

if TYPE_CHECKING:
    from conftest import Helpers, LocalServer


def describe(
    name: str, url: str, batch_size: int, delay: int, status: str = "READY"
) -> dict[str, Any]:
    return {
        "modelName": name,
        "modelVersion": "1.0",
        "modelUrl": url,
        "runtime": "python",
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": batch_size,
        "maxBatchDelay": delay,
        "loadedAtStartup": False,
        "responseTimeout": 300,
        "startupTimeout": 120,
        "workers": [
            {
                "id": "9000",
                "startTime": "2025-01-01T12:00:00.000Z",
                "status": status,
                "memoryUsage": 0,
                "pid": 4242,
                "gpu": False,
                "gpuUsage": "N/A",
            }
        ],
        "jobQueueStatus": {"remainingCapacity": 100, "pendingRequests": 0},
    }


class FakeManagement(BaseHTTPRequestHandler):
    """Keeps registered models in a dict; refuses registering a batch size listed in ``refuse``."""

    protocol_version = "HTTP/1.1"
    valid_key: ClassVar[str] = "mkey"
    key_file: ClassVar[Path | None] = None
    models: ClassVar[dict[str, dict[str, Any]]] = {}
    calls: ClassVar[list[tuple[str, str, dict[str, str]]]] = []
    refuse: ClassVar[set[str]] = set()
    worker_status: ClassVar[str] = "READY"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, kind: str, message: str) -> None:
        self._send(status, {"code": status, "type": kind, "message": message})

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        params = {key: values[0] for key, values in parse_qs(url.query).items()}
        type(self).calls.append((method, url.path, params))
        if url.path == "/token":
            assert self.key_file is not None and self.headers["Authorization"] == "Bearer api"
            data = json.loads(self.key_file.read_text())
            data[params["type"]]["key"] = self.valid_key
            self.key_file.write_text(json.dumps(data))
            self._send(200, "")
            return
        if self.headers.get("Authorization") != f"Bearer {self.valid_key}":
            self._error(400, "InvalidKeyException", "Token Authorization failed.")
            return
        parts = [unquote(part) for part in url.path.split("/")[1:]]
        name = parts[1] if len(parts) > 1 else None
        if name == "busy":
            self._error(503, "ServiceUnavailableException", "no worker")
        elif name == "boom":
            self._error(500, "InternalServerException", "it broke")
        elif method == "GET" and name is None:
            self._list(params)
        elif method == "POST" and name is None:
            self._register(params)
        elif name not in self.models:
            self._error(404, "ModelNotFoundException", f"Model not found: {name}")
        elif method == "GET":
            self._send(200, [self.models[name]])
        elif method == "DELETE":
            del self.models[name]
            self._send(200, {"status": f'Model "{name}" unregistered'})
        elif method == "PUT":
            self._send(
                200, {"status": f"Workers scaled to {params['min_worker']} for model: {name}"}
            )

    def _list(self, params: dict[str, str]) -> None:
        names = sorted(self.models)
        start = int(params.get("next_page_token", 0))
        page = {
            "models": [
                {"modelName": n, "modelUrl": self.models[n]["modelUrl"]}
                for n in names[start : start + 2]
            ]
        }
        if start + 2 < len(names):
            page["nextPageToken"] = str(start + 2)
        self._send(200, page)

    def _register(self, params: dict[str, str]) -> None:
        url = params["url"]
        if params.get("batch_size") in self.refuse:
            # TorchServe unregisters a model whose workers fail to start, then answers 500.
            self._error(500, "InternalServerException", "Failed to start workers for model")
            return
        if url == "broken.mar":
            self._error(400, "InvalidModelException", "Missing Model entry in manifest file.")
            return
        name = params.get("model_name") or url.removesuffix(".mar")
        self.models[name] = describe(
            name,
            url,
            int(params.get("batch_size", 1)),
            int(params.get("max_batch_delay", 100)),
            self.worker_status,
        )
        self._send(
            200, {"status": f'Model "{name}" Version: 1.0 registered with 1 initial workers'}
        )

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._route("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._route("DELETE")


@pytest.fixture
def fake(http_server: Callable[..., LocalServer]) -> LocalServer:
    FakeManagement.valid_key = "mkey"
    FakeManagement.key_file = None
    FakeManagement.models = {}
    FakeManagement.calls = []
    FakeManagement.refuse = set()
    FakeManagement.worker_status = "READY"
    return http_server(FakeManagement)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    store = tmp_path / "model_store"
    store.mkdir()
    for name in ("smollm2.mar", "other.mar", "broken.mar"):
        (store / name).write_bytes(b"PK")
    return Settings(model_store=store, run_dir=tmp_path / "var", request_timeout_s=10)


def client_for(fake: LocalServer, settings: Settings, key: str = "mkey") -> ManagementClient:
    return ManagementClient(settings, KeyStore.explicit(management=key), base_url=fake.url)


def registry_for(fake: LocalServer, settings: Settings) -> ServingRegistry:
    return ServingRegistry(client_for(fake, settings), settings.model_store)


def test_register_sends_a_bare_archive_name_and_batch_settings(
    fake: LocalServer, settings: Settings
) -> None:
    client = client_for(fake, settings)
    status = client.register_model(
        "smollm2.mar", batch_size=4, max_batch_delay=50, initial_workers=1
    )
    assert "registered" in status
    method, path, params = FakeManagement.calls[-1]
    assert (method, path) == ("POST", "/models")
    assert params == {
        "url": "smollm2.mar",
        "initial_workers": "1",
        "synchronous": "true",
        "batch_size": "4",
        "max_batch_delay": "50",
    }


@pytest.mark.parametrize(
    "archive",
    [
        "http://example.com/smollm2.mar",
        "file:///tmp/smollm2.mar",
        "/abs/smollm2.mar",
        "../smollm2.mar",
        "sub/smollm2.mar",
        "smollm2.tar.gz",
        ".hidden.mar",
        "missing.mar",
        "",
    ],
)
def test_archives_outside_the_store_are_refused_before_any_request(
    fake: LocalServer, settings: Settings, archive: str
) -> None:
    with pytest.raises(ArchiveInvalid) as caught:
        registry_for(fake, settings).register(archive)
    assert "package_model.sh" in str(caught.value)
    assert FakeManagement.calls == []


def test_archive_torchserve_rejects_is_archive_invalid(
    fake: LocalServer, settings: Settings
) -> None:
    with pytest.raises(ArchiveInvalid, match="Missing Model entry"):
        client_for(fake, settings).register_model("broken.mar")


def test_describe_model(fake: LocalServer, settings: Settings) -> None:
    client = client_for(fake, settings)
    client.register_model("smollm2.mar", batch_size=4, max_batch_delay=50)
    status = client.describe_model("smollm2")
    assert isinstance(status, ModelStatus)
    assert (status.name, status.version, status.url) == ("smollm2", "1.0", "smollm2.mar")
    assert (status.batch_size, status.max_batch_delay) == (4, 50)
    assert (status.min_workers, status.max_workers, status.response_timeout) == (1, 1, 300)
    assert status.workers[0].pid == 4242 and status.workers[0].ready
    assert status.ready_workers == 1
    assert status.pending_requests == 0 and status.remaining_capacity == 100


def test_list_models_follows_pages(fake: LocalServer, settings: Settings) -> None:
    for name in ("a", "b", "c", "d", "e"):
        FakeManagement.models[name] = describe(name, f"{name}.mar", 1, 100)
    models = client_for(fake, settings).list_models()
    assert models == [ModelEntry(name, f"{name}.mar") for name in "abcde"]
    assert [call[2].get("next_page_token") for call in FakeManagement.calls] == [None, "2", "4"]


def test_unregister_and_scale(fake: LocalServer, settings: Settings) -> None:
    client = client_for(fake, settings)
    client.register_model("smollm2.mar")
    assert "Workers scaled to 2" in client.scale_workers("smollm2", 2)
    assert FakeManagement.calls[-1][2] == {
        "min_worker": "2",
        "max_worker": "2",
        "synchronous": "true",
    }
    client.unregister_model("smollm2", "1.0")
    assert FakeManagement.calls[-1][:2] == ("DELETE", "/models/smollm2/1.0")
    with pytest.raises(ModelNotFound) as caught:
        client.unregister_model("smollm2")
    assert caught.value.model == "smollm2"


def test_model_names_are_quoted_in_paths(fake: LocalServer, settings: Settings) -> None:
    with pytest.raises(ModelNotFound):
        client_for(fake, settings).describe_model("a/b?c")
    assert FakeManagement.calls[-1][1] == "/models/a%2Fb%3Fc"


@pytest.mark.parametrize(
    ("name", "error"), [("busy", QueueFull), ("boom", ServerError), ("nope", ModelNotFound)]
)
def test_error_statuses(
    fake: LocalServer, settings: Settings, name: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        client_for(fake, settings).describe_model(name)


def test_wrong_key_is_an_auth_error(fake: LocalServer, settings: Settings) -> None:
    with pytest.raises(AuthError):
        client_for(fake, settings, key="wrong").list_models()


def test_refused_key_is_refreshed_once(
    fake: LocalServer, settings: Settings, tmp_path: Path
) -> None:
    key_file = tmp_path / "key_file.json"
    key_file.write_text(
        json.dumps({"management": {"key": "old"}, "inference": {"key": "i"}, "API": {"key": "api"}})
    )
    FakeManagement.key_file = key_file
    client = ManagementClient(
        settings, KeyStore(key_file, management_url=fake.url), base_url=fake.url
    )
    assert client.list_models() == []
    assert [call[1] for call in FakeManagement.calls] == ["/models", "/token", "/models"]


def test_no_server(settings: Settings, helpers: Helpers) -> None:
    client = ManagementClient(
        settings,
        KeyStore.explicit(management="k"),
        base_url=f"http://127.0.0.1:{helpers.free_port()}",
    )
    with pytest.raises(ServerNotRunning, match="make run"):
        client.list_models()


def test_retune_registers_new_batch_settings(fake: LocalServer, settings: Settings) -> None:
    registry = registry_for(fake, settings)
    client = registry.management
    client.register_model("smollm2.mar", batch_size=4, max_batch_delay=50)
    status = registry.retune("smollm2", batch_size=2, max_batch_delay=10)
    assert (status.batch_size, status.max_batch_delay, status.url) == (2, 10, "smollm2.mar")
    register = [call for call in FakeManagement.calls if call[0] == "POST"][-1][2]
    assert register["model_name"] == "smollm2" and register["response_timeout"] == "300"


def test_retune_puts_the_old_settings_back_when_the_new_ones_fail(
    fake: LocalServer, settings: Settings
) -> None:
    registry = registry_for(fake, settings)
    client = registry.management
    client.register_model("smollm2.mar", batch_size=4, max_batch_delay=50)
    FakeManagement.refuse = {"8"}
    with pytest.raises(ServerError, match="Failed to start workers"):
        registry.retune("smollm2", batch_size=8, max_batch_delay=20)
    restored = client.describe_model("smollm2")
    assert (restored.batch_size, restored.max_batch_delay) == (4, 50)


def test_retune_reports_when_even_the_restore_fails(fake: LocalServer, settings: Settings) -> None:
    registry = registry_for(fake, settings)
    client = registry.management
    client.register_model("smollm2.mar", batch_size=4, max_batch_delay=50)
    FakeManagement.refuse = {"8", "4"}
    with pytest.raises(ServerError, match="Register it again"):
        registry.retune("smollm2", batch_size=8, max_batch_delay=20)


def test_retune_of_an_unregistered_model_just_registers(
    fake: LocalServer, settings: Settings
) -> None:
    status = registry_for(fake, settings).retune("other", batch_size=3, max_batch_delay=5)
    assert (status.name, status.url, status.batch_size) == ("other", "other.mar", 3)


def test_wait_until_ready(fake: LocalServer, settings: Settings) -> None:
    registry = registry_for(fake, settings)
    client = registry.management
    client.register_model("smollm2.mar")
    assert registry.wait_until_ready("smollm2", timeout=1).ready_workers == 1
    FakeManagement.worker_status = "UNLOADING"
    client.register_model("other.mar")
    with pytest.raises(ModelNotReady, match="UNLOADING"):
        registry.wait_until_ready("other", timeout=0.2, poll_s=0.05)
