"""Load: 200 streamed requests at concurrency 16 against batch size 8, nothing lost or mixed up."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

pytestmark = pytest.mark.integration

MODEL = "smollm2-b8"
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
GREEDY = {"max_tokens": 12, "temperature": 0, "repeat_penalty": 1.0, "min_p": 0}


@pytest.fixture(scope="module")
def batch8(torchserve_server: Any) -> Iterator[Any]:
    """The default archive registered a second time, with batch size 8."""
    server = torchserve_server
    server.management.register_model(
        "smollm2.mar", model_name=MODEL, batch_size=8, max_batch_delay=50
    )
    try:
        server.management.wait_until_ready(MODEL, timeout=120)
        yield server
    finally:
        server.management.unregister_model(MODEL)


def ask(server: Any, prompt: str) -> tuple[str, str | None, int]:
    stream = server.inference.chat_stream(MODEL, [{"role": "user", "content": prompt}], **GREEDY)
    text = "".join(stream)
    return text, stream.finish_reason, stream.usage.completion_tokens if stream.usage else -1


def test_two_hundred_streams_at_concurrency_sixteen(batch8: Any) -> None:
    solo = {p: ask(batch8, p) for p in PROMPTS}
    jobs = [PROMPTS[i % len(PROMPTS)] for i in range(200)]
    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda p: ask(batch8, p), jobs))
    elapsed = time.perf_counter() - started
    assert len(results) == 200
    mismatched = [(p, r, solo[p]) for p, r in zip(jobs, results, strict=True) if r != solo[p]]
    assert not mismatched, (
        f"{len(mismatched)} answers differ from their solo answer: {mismatched[:3]}"
    )
    tokens = sum(r[2] for r in results)
    print(f"200 streams, concurrency 16: {elapsed:.1f} s, {tokens / elapsed:.0f} tokens/s")
    status = batch8.management.describe_model(MODEL)
    assert status.batch_size == 8 and status.ready_workers == 1
