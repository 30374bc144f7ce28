"""Soak (make soak): 1,000 requests; the worker's memory and file descriptors stay flat."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psutil
import pytest

pytestmark = [pytest.mark.soak, pytest.mark.integration, pytest.mark.timeout(1800)]

TOTAL = 1000
CHECKPOINT = 100
CONCURRENCY = 4


def worker(server: Any) -> psutil.Process:
    (pid,) = [w.pid for w in server.management.describe_model(server.model).workers]
    return psutil.Process(pid)


def one(server: Any, i: int) -> int:
    stream = i % 2 == 0
    messages = [{"role": "user", "content": f"Request {i}: name a colour."}]
    if stream:
        chat = server.inference.chat_stream(server.model, messages, max_tokens=8, seed=i)
        "".join(chat)
        return chat.usage.completion_tokens if chat.usage else 0
    answer = server.inference.chat(server.model, messages, max_tokens=8, seed=i)
    return int(answer["usage"]["completion_tokens"])


def test_thousand_requests_without_growth(torchserve_server: Any) -> None:
    server = torchserve_server
    proc = worker(server)
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        assert all(t > 0 for t in pool.map(lambda i: one(server, i), range(CHECKPOINT)))
        rss_100, fds_100 = proc.memory_info().rss, proc.num_fds()
        assert all(t > 0 for t in pool.map(lambda i: one(server, i), range(CHECKPOINT, TOTAL)))
    rss_1000, fds_1000 = proc.memory_info().rss, proc.num_fds()
    assert worker(server).pid == proc.pid, "the worker was restarted"
    growth = rss_1000 / rss_100 - 1
    print(
        f"worker RSS after {CHECKPOINT}: {rss_100 / 2**20:.1f} MiB, after {TOTAL}: "
        f"{rss_1000 / 2**20:.1f} MiB ({growth:+.2%}); file descriptors {fds_100} -> {fds_1000}"
    )
    assert growth <= 0.05
    assert fds_1000 <= fds_100
