"""The sampler chain: penalties behind a top-k pick exactly what they pick over the whole
vocabulary, on the real model's logits."""

from __future__ import annotations

from collections.abc import Iterator

import engine
import llama_cpp
import numpy as np
import pytest
from contract import Sampling
from worker_harness import Harness

LAST = -1  # llama.cpp's index of the last logits of the last decode


@pytest.fixture
def logits(harness: Harness) -> Iterator[tuple[engine.LlamaEngine, np.ndarray]]:
    """The engine, with the logits of a prompt's next token left by its last decode."""
    eng = harness.handler.engine
    tokens = eng.tokenize("Once upon a time, in a small village by the sea, there lived a")
    gen = eng.start(tokens, Sampling(temperature=0.0, repeat_penalty=1.0, max_tokens=1))
    while not gen.finished:
        eng.step()
    row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(eng.ctx, LAST), shape=(eng.n_vocab,))
    yield eng, row.copy()


def sample(eng: engine.LlamaEngine, params: Sampling, seen: list[int]) -> int:
    chain = eng._make_sampler(params)
    try:
        for token in seen:
            llama_cpp.llama_sampler_accept(chain, token)
        return int(llama_cpp.llama_sampler_sample(chain, eng.ctx, LAST))
    finally:
        llama_cpp.llama_sampler_free(chain)


PARAMS = [
    Sampling(temperature=0.0, repeat_penalty=10.0),
    Sampling(temperature=0.0, repeat_penalty=3.0, frequency_penalty=1.0, presence_penalty=2.0),
    Sampling(temperature=0.8, repeat_penalty=1.1),  # the defaults but the seed
    Sampling(temperature=1.5, top_k=100, top_p=1.0, min_p=0.0, repeat_penalty=2.0),
    Sampling(temperature=1.0, top_k=10, repeat_last_n=256, frequency_penalty=1.0),
]


@pytest.mark.parametrize("params", PARAMS)
def test_penalties_behind_a_top_k_choose_as_over_the_whole_vocabulary(
    logits: tuple[engine.LlamaEngine, np.ndarray],
    params: Sampling,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    eng, row = logits
    assert engine._kept_before_penalties(params) > 0
    ranked = [int(t) for t in np.argsort(-row)]
    # Penalised: the likeliest (so others move up into the top k), some twice, and a few others.
    seen = ranked[:30] + ranked[:5] + ranked[500:520]
    seeds = range(1) if params.greedy else range(40)
    unpenalised = {"repeat_penalty": 1.0, "frequency_penalty": 0.0, "presence_penalty": 0.0}

    def choices(**change: object) -> list[int]:
        return [sample(eng, Sampling(**{**vars(params), "seed": s, **change}), seen) for s in seeds]

    chosen = choices()
    assert chosen != choices(**unpenalised)  # the penalties do change what is chosen here
    monkeypatch.setattr(engine, "MAX_KEPT_BEFORE_PENALTIES", 0)  # the whole vocabulary
    assert engine._kept_before_penalties(params) == 0
    assert chosen == choices()
