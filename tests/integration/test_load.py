"""Load: 200 streamed requests at concurrency 16 against batch size 8, nothing lost or mixed up.

Run against both batching modes: the default archive (continuous batching) and one packaged
with --dynamic-batching.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
PROMPTS = [
    "Name a fruit.",
    "Name a country in Europe.",
    "What is 3 plus 4?",
    "Name a planet.",
    "Say hello in Italian.",
    "Name a musical instrument.",
    "What colour is the sky?",
    "Name a programming language.",
    "What is the opposite of hot?",
    "Name a large animal.",
]
GREEDY = {"max_tokens": 8, "temperature": 0, "repeat_penalty": 1.0, "min_p": 0}


@pytest.fixture(scope="module", params=["continuous", "dynamic"])
def batch8(request: pytest.FixtureRequest, torchserve_server: Any) -> Iterator[tuple[Any, str]]:
    """The default model registered a second time with batch size 8, in one batching mode."""
    server = torchserve_server
    name = f"smollm2-{request.param}"
    argv = [
        "bash",
        str(REPO / "package_model.sh"),
        "--output-dir",
        str(server.settings.model_store),
    ]
    argv += ["--name", name, f"--{request.param}-batching", "--force"]
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    server.registry.register(f"{name}.mar", batch_size=8, max_batch_delay=50)
    try:
        server.registry.wait_until_ready(name, timeout=120)
        yield server, name
    finally:
        server.management.unregister_model(name)


def ask(server: Any, model: str, prompt: str) -> tuple[str, str | None, int]:
    stream = server.inference.chat_stream(model, [{"role": "user", "content": prompt}], **GREEDY)
    text = "".join(stream)
    return text, stream.finish_reason, stream.usage.completion_tokens if stream.usage else -1


def test_two_hundred_streams_at_concurrency_sixteen(batch8: tuple[Any, str]) -> None:
    server, model = batch8
    solo = {p: ask(server, model, p) for p in PROMPTS}
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(200)]
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda p: ask(server, model, p), jobs))
    elapsed = time.perf_counter() - started
    assert len(results) == 200
    mismatched = [(p, r, solo[p]) for p, r in zip(jobs, results, strict=True) if r != solo[p]]
    assert not mismatched, (
        f"{len(mismatched)} answers differ from their solo answer: {mismatched[:3]}"
    )
    tokens = sum(r[2] for r in results)
    print(f"{model}: 200 streams, concurrency 16: {elapsed:.1f} s, {tokens / elapsed:.0f} tokens/s")
    status = server.management.describe_model(model)
    assert status.batch_size == 8 and status.ready_workers == 1
