"""Faults: a killed worker, a full queue, generations that hit their limits."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

from tschat.api.inference import InferenceClient
from tschat.api.keys import KeyStore
from tschat.api.management import ManagementClient
from tschat.errors import QueueFull, ServerError
from tschat.ops import process
from tschat.ops.serving import ServingRegistry
from tschat.settings import REPO_ROOT

pytestmark = pytest.mark.integration

ASK = [{"role": "user", "content": "Write a long story about a dragon and a knight."}]


def test_killed_worker_gives_a_clear_error_then_recovers(
    torchserve_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = torchserve_server
    (old_pid,) = [w.pid for w in server.management.describe_model(server.model).workers]
    stream = server.inference.chat_stream(server.model, ASK, max_tokens=1500, temperature=0)
    received = []
    with pytest.raises(ServerError) as error:
        for i, piece in enumerate(stream):
            received.append(piece)
            if i == 5:
                os.kill(old_pid, signal.SIGKILL)
                killed_at = time.monotonic()
    assert time.monotonic() - killed_at < 5, "the client hung after the worker died"
    assert len(received) >= 6
    assert str(error.value), "the error carries a message for the user"

    status = server.registry.wait_until_ready(server.model, timeout=120)
    (new_pid,) = [w.pid for w in status.workers]
    assert new_pid != old_pid, "TorchServe started a new worker"
    answer = server.inference.chat(server.model, ASK, max_tokens=8)
    assert answer["usage"]["completion_tokens"] == 8

    # The operator console shows the restart: the count, a warning, the new worker's PID.
    for name, value in server.settings.as_env().items():
        monkeypatch.setenv(name, value)
    console = AppTest.from_file(str(REPO_ROOT / "server_app.py"), default_timeout=60)
    console.run()
    assert not console.exception, console.exception
    restarts = [m for m in console.metric if m.label == "Worker restarts"]
    assert restarts and int(restarts[0].value) >= 1
    assert any("died and TorchServe restarted it" in w.value for w in console.warning)
    workers = console.dataframe[0].value
    assert new_pid in list(workers["PID"]) and old_pid not in list(workers["PID"])


@pytest.fixture(scope="module")
def small_queue_server(
    torchserve_server: Any, tmp_path_factory: pytest.TempPathFactory, helpers: Any
) -> Iterator[Any]:
    """A second TorchServe whose queue holds 2 requests, batch size 1."""
    root: Path = tmp_path_factory.mktemp("small_queue")
    settings = helpers.make_settings(root, job_queue_size=2)
    settings.model_store.mkdir(parents=True)
    shutil.copy(torchserve_server.settings.model_store / "smollm2.mar", settings.model_store)
    process.start(settings)
    try:
        keys = KeyStore(settings)
        management = ManagementClient(settings, keys)
        registry = ServingRegistry(management, settings.model_store)
        registry.register("smollm2.mar", batch_size=1, initial_workers=1)
        registry.wait_until_ready("smollm2", timeout=120)
        yield settings, management, InferenceClient.from_settings(settings, keys)
    finally:
        process.stop(settings)


def test_full_queue_answers_503_and_every_accepted_request_completes(
    small_queue_server: Any,
) -> None:
    settings, management, inference = small_queue_server
    outcomes: list[Any] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        try:
            stream = inference.chat_stream("smollm2", ASK, max_tokens=48, temperature=0)
            text = "".join(stream)
            result: Any = (
                stream.finish_reason,
                stream.usage.completion_tokens if stream.usage else 0,
                text,
            )
        except QueueFull as error:
            result = error
        with lock:
            outcomes.append(result)

    with ThreadPoolExecutor(12) as pool:
        list(pool.map(one, range(12)))
    refused = [o for o in outcomes if isinstance(o, QueueFull)]
    served = [o for o in outcomes if not isinstance(o, QueueFull)]
    assert refused, "some requests found the queue full"
    assert "busy" in str(refused[0]) and "Retry" in str(refused[0])
    assert len(served) >= 3, "the running request and the queued ones were served"
    for finish_reason, tokens, text in served:
        assert finish_reason == "length" and tokens == 48 and text
    assert inference.ping() and management.describe_model("smollm2").ready_workers == 1
    assert len(refused) + len(served) == 12


def test_prompt_filling_the_context_ends_with_length(torchserve_server: Any) -> None:
    server = torchserve_server
    n_ctx = server.inference.models(server.model)["data"][0]["meta"]["n_ctx"]
    # About n_ctx - 20 tokens of prompt: one short word and a space are one token each here.
    prompt = "cat " * (n_ctx - 40)
    answer = server.inference.completions(server.model, prompt, max_tokens=500, temperature=0)
    assert answer["choices"][0]["finish_reason"] == "length"
    usage = answer["usage"]
    assert usage["total_tokens"] == n_ctx, usage
    assert usage["completion_tokens"] < 500


def test_stop_sequence_never_met_ends_at_max_tokens(torchserve_server: Any) -> None:
    server = torchserve_server
    answer = server.inference.chat(
        server.model, ASK, max_tokens=20, stop=["@@@never@@@"], temperature=0
    )
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 20
