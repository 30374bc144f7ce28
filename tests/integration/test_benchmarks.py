"""Smoke tests of the benchmark tools: a few streamed requests against the real server."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from tschat.bench.loadgen import LoadSpec, run_load
from tschat.settings import REPO_ROOT

pytestmark = pytest.mark.integration


@pytest.mark.timeout(60)
def test_loadgen_against_torchserve(torchserve_server: Any) -> None:
    server = torchserve_server
    spec = LoadSpec(clients=2, requests=4, max_tokens=8, timeout_s=30, duration_s=30)
    result = run_load(server.settings.inference_url, server.keys, server.model, spec)
    s = result.summary
    assert (s.requests, s.failures) == (4, 0), s.errors
    assert 4 <= s.tokens <= 32
    assert s.tokens_per_s is not None and s.tokens_per_s > 0
    assert s.ttft_p50_ms is not None and 0 < s.ttft_p50_ms <= (s.ttft_p95_ms or 0)
    assert s.itl_p50_ms is not None and s.itl_p50_ms > 0
    for record in result.records:
        # A token that ends inside a UTF-8 character sends no text of its own.
        assert record.ok and record.tokens >= len(record.token_times) >= 1


def test_runner_help() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for option in ("--quick", "--clients", "--max-tokens", "--prompt-words", "--stagger"):
        assert option in result.stdout
