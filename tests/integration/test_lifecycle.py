"""A real TorchServe: start, status, one server only, stop leaves nothing, URLs and keys guarded."""

from __future__ import annotations

import itertools
import json
import struct
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
import requests

from tschat.api.inference import InferenceClient
from tschat.api.keys import Keys, KeyStore
from tschat.api.management import ManagementClient
from tschat.api.metrics import fetch_metrics, total
from tschat.errors import ArchiveInvalid, AuthError, ModelNotFound
from tschat.ops import process
from tschat.ops.serving import ServingRegistry
from tschat.settings import Settings

if TYPE_CHECKING:
    from conftest import Helpers, LocalServer, TorchServeServer

pytestmark = pytest.mark.integration


def _frontends(settings: Settings) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            cmdline = proc.cmdline()
        except psutil.Error:
            continue
        if process.FRONTEND_CLASS in cmdline and str(settings.config_file) in cmdline:
            found.append(proc)
    return found


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory: pytest.TempPathFactory, helpers: Helpers) -> Iterator[Settings]:
    """A TorchServe with an empty model store, started once for this module."""
    settings = helpers.make_settings(tmp_path_factory.mktemp("bare"))
    settings.model_store.mkdir(parents=True)
    process.start(settings, timeout=120)
    yield settings
    process.stop(settings)


def test_start_answers_ping_with_the_inference_key(bare_server: Settings) -> None:
    client = InferenceClient.from_settings(bare_server)
    assert client.ping() == "Healthy"
    current = process.status(bare_server)
    assert current.running and current.owned and current.health == "Healthy"
    assert current.pid is not None
    assert bare_server.pid_file.read_text().strip() == str(current.pid)
    assert bare_server.inference_port in current.open_ports


def test_run_dir_holds_config_keys_and_logs(bare_server: Settings) -> None:
    assert bare_server.config_file.stat().st_mode & 0o777 == 0o600
    assert bare_server.key_file.stat().st_mode & 0o777 == 0o600
    keys = Keys.from_file(bare_server.key_file)
    assert keys.inference and keys.management and keys.api
    log = process.tail_log(bare_server, "ts_log.log", lines=2000)
    assert f"Inference API bind to: {bare_server.inference_url}" in log
    assert "TorchServe" in process.tail_log(bare_server, "console.log")  # launcher output
    # Worker sockets and TorchServe's own pid file live in our tmp dir, not in /tmp.
    assert (bare_server.tmp_dir / ".model_server.pid").exists()


def test_second_start_reuses_the_running_server(bare_server: Settings) -> None:
    before = process.status(bare_server).pid
    again = process.start(bare_server)
    assert again.pid == before
    assert len(_frontends(bare_server)) == 1


def test_concurrent_starts_launch_one_server(tmp_path: Path, helpers: Helpers) -> None:
    settings = helpers.make_settings(tmp_path)
    settings.model_store.mkdir(parents=True)
    results: list[object] = []

    def start() -> None:
        try:
            results.append(process.start(settings, timeout=120).pid)
        except Exception as error:  # collected and checked below
            results.append(error)

    threads = [threading.Thread(target=start) for _ in range(3)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
        assert len(results) == 3 and len(set(results)) == 1, results
        assert isinstance(results[0], int)
        assert len(_frontends(settings)) == 1
    finally:
        process.stop(settings)


def test_stop_leaves_no_process_port_or_key(tmp_path: Path, helpers: Helpers) -> None:
    settings = helpers.make_settings(tmp_path)
    settings.model_store.mkdir(parents=True)
    process.start(settings, timeout=120)
    pids = helpers.server_pids(settings)
    assert len(pids) >= 2  # frontend and launcher
    assert process.stop(settings) is True
    helpers.assert_stopped(settings, pids)
    assert process.status(settings).running is False
    assert process.stop(settings) is False  # stopping twice is harmless


def test_metrics_api_needs_no_key(bare_server: Settings) -> None:
    samples = fetch_metrics(bare_server)
    assert samples, "the metrics API returned no samples"
    assert total(samples, "Requests4XX") >= 0


class _Decoy(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"PK not an archive")

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_registration_from_outside_the_model_store_is_refused(
    bare_server: Settings, http_server: Callable[..., LocalServer], tmp_path: Path
) -> None:
    decoy = http_server(_Decoy)
    _Decoy.hits = []
    outside = tmp_path / "outside.mar"
    outside.write_bytes(b"PK")
    key = Keys.from_file(bare_server.key_file).management
    refused = [
        f"{decoy.url}/smollm2.mar",
        f"file://{outside}",
        f"file://{bare_server.model_store}/../{outside.name}",
        f"{bare_server.model_store}/../{outside.name}",
    ]
    for url in refused:
        response = requests.post(
            f"{bare_server.management_url}/models",
            params={"url": url, "initial_workers": 0},
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert response.status_code in (400, 404), (url, response.text)
    assert _Decoy.hits == [], "TorchServe fetched a URL outside the model store"
    # The client refuses such names before sending anything.
    client = ManagementClient(bare_server)
    for url in refused + ["../smollm2.mar", "sub/smollm2.mar", "missing.mar", str(tmp_path)]:
        with pytest.raises(ArchiveInvalid):
            client.register_model(url)
    with pytest.raises(ArchiveInvalid):
        ServingRegistry.for_settings(bare_server).register(str(tmp_path))
    assert client.list_models() == []


def test_torchserve_registers_a_bare_directory_anywhere_and_runs_its_handler(
    bare_server: Settings, tmp_path: Path
) -> None:
    """What allowed_urls does not cover: a plain path to a directory (not a URL) holding a
    manifest and a handler is registered from anywhere on disk, and its code runs in a worker.
    The management key is therefore as strong as running code as the server's user."""
    model = tmp_path / "not-in-the-store"
    (model / "MAR-INF").mkdir(parents=True)
    (model / "MAR-INF" / "MANIFEST.json").write_text(
        json.dumps({"runtime": "python", "model": {"modelName": "planted", "handler": "h.py",
                                                    "modelVersion": "1.0"}})
    )  # fmt: skip
    ran = tmp_path / "handler-ran"
    (model / "h.py").write_text(
        f"import pathlib\npathlib.Path({str(ran)!r}).write_text('yes')\n"
        "def handle(data, context):\n    return ['planted' for _ in data or []]\n"
    )
    key = Keys.from_file(bare_server.key_file).management
    try:
        response = requests.post(
            f"{bare_server.management_url}/models",
            params={"url": str(model), "initial_workers": 1, "synchronous": "true"},
            headers={"Authorization": f"Bearer {key}"},
            timeout=180,
        )
        assert response.status_code == 200, response.text
        assert ran.read_text() == "yes", "the planted handler ran"
        assert ManagementClient(bare_server).describe_model("planted").url == str(model)
    finally:
        requests.delete(
            f"{bare_server.management_url}/models/planted",
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
    # A directory without a manifest is refused.
    (model / "MAR-INF" / "MANIFEST.json").unlink()
    response = requests.post(
        f"{bare_server.management_url}/models",
        params={"url": str(model), "initial_workers": 0},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    )
    assert response.status_code == 400


def test_missing_and_wrong_keys_get_400_and_auth_error(bare_server: Settings) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "wrong"}):
        ping = requests.get(f"{bare_server.inference_url}/ping", headers=headers, timeout=10)
        models = requests.get(f"{bare_server.management_url}/models", headers=headers, timeout=10)
        assert ping.status_code == 400 and models.status_code == 400
        assert ping.json()["type"] == "InvalidKeyException"
    with pytest.raises(AuthError) as caught:
        InferenceClient(bare_server.inference_url, "wrong").ping()
    assert "400" in str(caught.value)
    wrong = KeyStore.explicit(management="wrong")
    with pytest.raises(AuthError):
        ManagementClient(bare_server, wrong).list_models()
    # The inference key does not open the management API.
    inference_key = Keys.from_file(bare_server.key_file).inference
    with pytest.raises(AuthError):
        ManagementClient(bare_server, KeyStore.explicit(management=inference_key)).list_models()


def test_unknown_model_is_model_not_found(bare_server: Settings) -> None:
    with pytest.raises(ModelNotFound):
        ManagementClient(bare_server).describe_model("nope")


def test_key_refresh_replaces_the_key(bare_server: Settings) -> None:
    store = KeyStore(bare_server)
    old = store.key("inference")
    new = store.refresh("inference").inference
    assert new and new != old
    assert Keys.from_file(bare_server.key_file).inference == new
    assert InferenceClient(bare_server.inference_url, new).ping() == "Healthy"
    with pytest.raises(AuthError):
        InferenceClient(bare_server.inference_url, old).ping()
    # A client holding the store recovers by itself.
    assert InferenceClient.from_settings(bare_server, store).ping() == "Healthy"


def test_expired_keys_are_refreshed_automatically(tmp_path: Path, helpers: Helpers) -> None:
    settings = helpers.make_settings(tmp_path, token_expiration_min=0.05)  # keys live 3 seconds
    settings.model_store.mkdir(parents=True)
    process.start(settings, timeout=120)
    try:
        store = KeyStore(settings, refresh_margin_s=0.5)
        inference = InferenceClient.from_settings(settings, store)
        management = ManagementClient(settings, store)
        first = Keys.from_file(settings.key_file)
        time.sleep(3.5)
        stale = requests.get(
            f"{settings.inference_url}/ping",
            headers={"Authorization": f"Bearer {first.inference}"},
            timeout=10,
        )
        assert stale.status_code == 400  # TorchServe did expire it
        assert inference.ping() == "Healthy"
        assert management.list_models() == []
        assert store.current().inference != first.inference
    finally:
        process.stop(settings)


def test_default_model_worker_is_ready(torchserve_server: TorchServeServer) -> None:
    server = torchserve_server
    status = server.management.describe_model(server.model)
    assert status.ready_workers == 1
    assert (status.batch_size, status.max_batch_delay) == (4, 50)
    assert status.url == f"{server.model}.mar"
    assert status.workers[0].pid in process.status(server.settings).worker_pids
    assert server.inference.ping() == "Healthy"


def test_logs_hold_each_line_once_and_no_line_per_call(torchserve_server: TorchServeServer) -> None:
    """TorchServe's per-call lines are left out (tschat/ops/torchserve_log4j2.xml; the worker's
    "Backend received inference" line by the handler, whose reader of calls does not write it)."""
    server = torchserve_server
    question = [{"role": "user", "content": "Count from one to twenty."}]
    stream = server.inference.chat_stream(server.model, question, max_tokens=24, temperature=0)
    assert "".join(delta.text for delta in stream.deltas())
    ts_log = process.tail_log(server.settings, "ts_log.log", lines=20_000)
    model_log = process.tail_log(server.settings, "model_log.log", lines=20_000)
    assert f"Inference API bind to: {server.settings.inference_url}" in ts_log
    assert "llama.cpp worker ready:" in model_log  # the handler's own lines stay
    for per_call in ("Backend response time", "Looping backend response", "[METRICS]"):
        assert per_call not in ts_log
    assert "Backend received inference" not in model_log
    lines = [line for line in ts_log.splitlines() if line.startswith("20")]
    assert lines and all(a != b for a, b in itertools.pairwise(lines)), "a line written twice"
    # The metrics still reach the metrics port.
    assert total(fetch_metrics(server.settings), "PredictionTime") > 0


def _jvm_counter(pid: int, name: str) -> int:
    """One long counter from a HotSpot JVM's performance data (what jstat reads), by name."""
    data = Path(f"/tmp/hsperfdata_{psutil.Process(pid).username()}/{pid}").read_bytes()
    assert data[:4] == b"\xca\xfe\xc0\xc0", "not a HotSpot performance data file"
    order = "<" if data[4] == 1 else ">"
    at, count = struct.unpack_from(order + "II", data, 24)  # first entry, number of entries
    for _ in range(count):
        length, name_at, vector_length, kind, data_at = struct.unpack_from(
            order + "IIIB3xI", data, at
        )
        end = data.index(b"\0", at + name_at)
        if data[at + name_at : end].decode() == name and kind == ord("J") and not vector_length:
            return int(struct.unpack_from(order + "q", data, at + data_at)[0])
        at += length
    raise KeyError(name)


def test_the_frontend_starts_no_thread_per_call(torchserve_server: TorchServeServer) -> None:
    """TorchServe hands each call to the worker to CompletableFuture.runAsync, which starts a new
    thread for every call when the JVM's common pool has a single thread, as on two cores. In
    continuous batching that is a thread per generated token. process.JVM_ARGS gives the pool
    two threads on any machine."""
    server = torchserve_server
    frontend = process.status(server.settings).pid
    assert frontend is not None
    question = [{"role": "user", "content": "Count from one to thirty."}]
    before = _jvm_counter(frontend, "java.threads.started")
    stream = server.inference.chat_stream(server.model, question, max_tokens=40, temperature=0)
    chunks = sum(1 for delta in stream.deltas() if delta.text)
    started = _jvm_counter(frontend, "java.threads.started") - before
    assert chunks >= 20
    assert started < 5, f"{started} Java threads started for {chunks} streamed tokens"
