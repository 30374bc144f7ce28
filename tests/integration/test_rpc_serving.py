"""TorchServe serving the default model split over two llama.cpp RPC servers on loopback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NAME = "smollm2-rpc"
GREEDY = {"max_tokens": 32, "temperature": 0, "repeat_penalty": 1.0, "min_p": 0}
ASK = [{"role": "user", "content": "Write about the sea."}]


@pytest.fixture(scope="module")
def rpc_model(torchserve_server: Any, helpers: Any) -> Iterator[Any]:
    server = torchserve_server
    ports = [helpers.free_port(), helpers.free_port()]
    script = str(REPO / "scripts" / "rpc_server.py")
    procs = [
        subprocess.Popen([sys.executable, script, "--port", str(p)], stdout=subprocess.DEVNULL)
        for p in ports
    ]
    try:
        for port in ports:
            helpers.wait_listening(port)
        servers = ",".join(f"127.0.0.1:{p}" for p in ports)
        argv = [
            "bash",
            str(REPO / "package_model.sh"),
            "--output-dir",
            str(server.settings.model_store),
        ]
        argv += ["--name", NAME, "--rpc-servers", servers, "--force"]
        subprocess.run(argv, check=True, capture_output=True, timeout=300)
        server.registry.register(f"{NAME}.mar", batch_size=4, max_batch_delay=50)
        try:
            server.registry.wait_until_ready(NAME, timeout=120)
            yield server
        finally:
            server.management.unregister_model(NAME)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def test_split_model_answers_like_the_local_one(rpc_model: Any) -> None:
    server = rpc_model
    local = server.inference.chat(server.model, ASK, **GREEDY)
    remote = server.inference.chat(NAME, ASK, **GREEDY)
    assert remote["usage"]["completion_tokens"] == 32
    assert remote["choices"][0]["message"]["content"] == local["choices"][0]["message"]["content"]
    meta = server.inference.models(NAME)["data"][0]["meta"]
    assert meta["backend"] == "rpc+cpu"
    assert set(meta["layers_by_device"]) == {"RPC0", "RPC1"}
