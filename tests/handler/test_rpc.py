"""The model split over two llama.cpp RPC servers answers as the local model does."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from contract import Sampling
from engine import EngineConfig, LlamaEngine
from worker_harness import ROOT, default_gguf

GREEDY = Sampling(max_tokens=32, temperature=0, repeat_penalty=1.0, min_p=0)
PROMPT = "<|im_start|>user\nWrite about the sea.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def rpc_servers(helpers: Any) -> Iterator[tuple[str, ...]]:
    ports = [helpers.free_port(), helpers.free_port()]
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "rpc_server.py"), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in ports
    ]
    try:
        for port in ports:
            helpers.wait_listening(port)
        yield tuple(f"127.0.0.1:{port}" for port in ports)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)


def greedy_text(**config: object) -> tuple[str, dict[str, object]]:
    engine = LlamaEngine(
        EngineConfig(model_path=str(default_gguf()), n_ctx=512, max_sequences=1, **config)
    )
    try:
        gen = engine.start(engine.tokenize(PROMPT), GREEDY)
        for _ in engine.generate([gen]):
            pass
        assert gen.completion_tokens == 32
        return gen.text, engine.describe()
    finally:
        engine.close()


def test_split_over_two_rpc_servers_matches_local(rpc_servers: tuple[str, ...]) -> None:
    local, local_info = greedy_text()
    remote, info = greedy_text(rpc_servers=rpc_servers)
    assert local_info["layers_by_device"] == {"CPU": 31}
    layers = info["layers_by_device"]
    assert isinstance(layers, dict) and set(layers) == {"RPC0", "RPC1"}
    assert all(n >= 10 for n in layers.values()), layers
    assert info["backend"] == "rpc+cpu"
    assert remote == local


def test_tensor_split_moves_layers(rpc_servers: tuple[str, ...]) -> None:
    _, info = greedy_text(rpc_servers=rpc_servers, tensor_split=(3.0, 1.0))
    layers = info["layers_by_device"]
    assert isinstance(layers, dict) and layers["RPC0"] > 2 * layers["RPC1"], layers


def test_unreachable_rpc_server_is_a_clear_error(helpers: Any) -> None:
    with pytest.raises(RuntimeError, match="could not reach the llama.cpp RPC server"):
        LlamaEngine(
            EngineConfig(
                model_path=str(default_gguf()), rpc_servers=(f"127.0.0.1:{helpers.free_port()}",)
            )
        )
