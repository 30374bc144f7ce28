"""Batched decoding: outputs independent of the batch, continuous joining, cancellation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import engine
import pytest
from conftest import load_handler
from contract import Sampling
from test_handler import CHAT, chat, streamed_text
from worker_harness import Harness, Prediction

QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about rain.",
    "What is 7 times 8?",
    "Describe a cat in one sentence.",
    "List two planets.",
    "Say hello in Spanish.",
    "What is the boiling point of water?",
]


def whole_text(harness: Harness, question: str, **params: object) -> tuple[str, dict]:
    _, final = harness.run([(CHAT, chat(question, **params))])
    data = json.loads(final.predictions[0].body)
    return data["choices"][0]["message"]["content"], data["usage"]


def test_greedy_tokens_alone_equal_tokens_in_a_batch_of_eight(harness: Harness) -> None:
    alone = [
        whole_text(harness, q, max_tokens=32, min_p=0, repeat_penalty=1.0)[0] for q in QUESTIONS
    ]
    _, final = harness.run(
        [(CHAT, chat(q, max_tokens=32, min_p=0, repeat_penalty=1.0)) for q in QUESTIONS]
    )
    together = [json.loads(p.body)["choices"][0]["message"]["content"] for p in final.predictions]
    assert together == alone


def test_greedy_shortcut_picks_what_llama_cpps_greedy_sampler_picks(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = Sampling(temperature=0.0, repeat_penalty=1.0)
    # Answered by one argmax over the step's logits, biased where a request asks for it.
    assert engine._only_greedy(plain)
    assert engine._only_greedy(dataclasses.replace(plain, logit_bias=((0, 5.0),), ignore_eos=True))
    assert not engine._only_greedy(dataclasses.replace(plain, repeat_penalty=1.1))
    greedy = {"max_tokens": 48, "min_p": 0, "repeat_penalty": 1.0}
    (the,) = harness.handler.engine.tokenize(" the", add_special=False)
    (a,) = harness.handler.engine.tokenize(" a", add_special=False)
    bias = {str(the): -100, str(a): 4.5, "0": 0}
    biased = {"logit_bias": bias, "ignore_eos": True, **greedy}
    shortcut = [whole_text(harness, q, **p) for q in QUESTIONS[:3] for p in (greedy, biased)]
    # Every answer through llama.cpp's own sampler chain: logit bias, then greedy.
    asked: list[Sampling] = []
    monkeypatch.setattr(engine, "_only_greedy", lambda p: asked.append(p) is not None)
    chain = [whole_text(harness, q, **p) for q in QUESTIONS[:3] for p in (greedy, biased)]
    assert len(asked) == 6
    assert [text for text, _ in chain] == [text for text, _ in shortcut]
    # The biases changed the answers, and ignore_eos ran every one to its cap.
    assert [text for text, _ in shortcut[0::2]] != [text for text, _ in shortcut[1::2]]
    assert all(usage["completion_tokens"] == 48 for _, usage in shortcut[1::2])


def test_shared_prompt_beginnings_come_from_the_cache(harness: Harness) -> None:
    greedy = {"max_tokens": 24, "min_p": 0, "repeat_penalty": 1.0}
    question = "Tell me about the moon and the tides, in detail."
    alone, usage = whole_text(harness, question, **greedy)
    again, usage_again = whole_text(harness, question, **greedy)  # the slot kept its cache
    assert again == alone
    assert usage_again["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] - 1
    # Eight at once: one prefills the prompt, the others copy its cache; the answers agree.
    _, final = harness.run([(CHAT, chat(question, **greedy)) for _ in range(8)])
    answers = [json.loads(p.body) for p in final.predictions]
    assert [a["choices"][0]["message"]["content"] for a in answers] == [alone] * 8
    cached = [a["usage"]["prompt_tokens_details"]["cached_tokens"] for a in answers]
    assert all(c == usage["prompt_tokens"] - 1 for c in cached), cached


def test_a_chats_next_turn_takes_the_slot_that_holds_its_cache(harness: Harness) -> None:
    llama = harness.handler.engine
    greedy = Sampling(max_tokens=4, temperature=0)
    first, second = (
        llama.tokenize(f"{topic.title()} and slot choice: say something about {topic} in one line.")
        for topic in ("rivers", "mountains")
    )
    a, b = llama.start(first, greedy), llama.start(second, greedy)
    for _ in llama.generate([a, b]):
        pass
    # b's chat goes on: its next prompt begins with everything b's slot holds.
    follow = llama.start(second + llama.tokenize(" And one more line, please."), greedy)
    try:
        assert follow.seq_id == b.seq_id  # not the slot a left, which would need a copy
        assert follow.cached_tokens == len(second)
    finally:
        llama.cancel(follow)


def test_a_chats_next_turn_keeps_its_slot_even_if_that_spreads_the_batch(
    harness: Harness,
) -> None:
    llama = harness.handler.engine
    prompts = [
        llama.tokenize(f"Spread test {n}: write a long list of {n} things you can see outdoors.")
        for n in ("five", "six", "seven")
    ]
    running = llama.start(prompts[0], Sampling(max_tokens=60, temperature=0, ignore_eos=True))
    short = [llama.start(p, Sampling(max_tokens=1, temperature=0)) for p in prompts[1:]]
    while not all(gen.finished for gen in short):
        llama.step()
    assert not running.finished

    def span(*slots: int) -> int:
        return max(slots) - min(slots)

    assert span(running.seq_id, short[0].seq_id) < span(running.seq_id, short[1].seq_id)
    # The slot after the running one would keep the busy slots closer, but it holds the other
    # chat's cache: each chat's next turn takes its own slot, and neither prefills again.
    joining = llama.start(prompts[2] + llama.tokenize(" Ten more."), Sampling(max_tokens=1))
    other = llama.start(prompts[1] + llama.tokenize(" Ten more."), Sampling(max_tokens=1))
    try:
        assert (joining.seq_id, other.seq_id) == (short[1].seq_id, short[0].seq_id)
        assert (joining.cached_tokens, other.cached_tokens) == (len(prompts[2]), len(prompts[1]))
    finally:
        for gen in (joining, other, running):
            llama.cancel(gen)


def test_a_new_prompt_takes_the_slot_whose_cache_is_least_worth_keeping(
    harness: Harness,
) -> None:
    llama = harness.handler.engine
    greedy = Sampling(max_tokens=1, temperature=0)
    total = llama.config.max_sequences
    # Every slot holds a different chat's cache, released in the order of the prompts.
    prompts = [
        llama.tokenize(f"Leftover {n}: name a fruit with {n} letters.") for n in range(total)
    ]
    slots = []
    for prompt in prompts:
        gen = llama.start(prompt, greedy)
        while not gen.finished:
            llama.step()
        slots.append(gen.seq_id)
    assert sorted(slots) == list(range(total))
    # A prompt no slot holds takes the slot released longest ago; the others keep theirs.
    fresh = llama.start(llama.tokenize("Something else entirely: how do tides work?"), greedy)
    try:
        assert fresh.seq_id == slots[0]
    finally:
        llama.cancel(fresh)
    # A prompt that begins like one slot's leftover, but is mostly new, reuses it in place.
    longer = prompts[5] + llama.tokenize(" Then name a vegetable, a tree and a bird, each of them")
    partly = llama.start(
        longer + llama.tokenize(" as long, and say where each of them grows."), greedy
    )
    try:
        assert 2 * len(prompts[5]) < len(partly.prompt_tokens)
        assert (partly.seq_id, partly.cached_tokens) == (slots[5], len(prompts[5]))
    finally:
        llama.cancel(partly)
    again = [llama.start(p + llama.tokenize(" Another."), greedy) for p in prompts[1:3]]
    try:
        assert [g.cached_tokens for g in again] == [len(p) for p in prompts[1:3]]
    finally:
        for gen in again:
            llama.cancel(gen)


def test_n_batch_in_the_model_config_bounds_the_tokens_of_each_step(tmp_path: Path) -> None:
    small = load_handler(tmp_path, handler={"n_batch": 64})
    llama = small.handler.engine
    try:
        assert llama.config.n_batch == 64
        prompt = llama.tokenize("Chunks: " + "one two three four five six seven eight " * 40)
        gen = llama.start(prompt, Sampling(max_tokens=1, temperature=0))
        per_step = []
        while not gen.finished:
            before = llama.times.tokens
            llama.step()
            per_step.append(llama.times.tokens - before)
        # The prompt goes through in 64-token pieces (its rest last), with nothing cached.
        full, rest = divmod(len(prompt), 64)
        assert full >= 4
        assert per_step == [64] * full + ([rest] if rest else [])
    finally:
        llama.close()


def test_a_step_takes_a_chunk_of_one_prompt_the_shortest(tmp_path: Path) -> None:
    small = load_handler(tmp_path, handler={"n_batch": 64})
    llama = small.handler.engine
    try:
        greedy = Sampling(max_tokens=8, temperature=0)
        short, shorter = (llama.tokenize(f"Short: what is {q}?") for q in ("two plus two", "pi"))
        long = llama.tokenize("Long: " + "one two three four five six seven eight " * 20)
        assert len(shorter) < len(short) and len(short) + len(shorter) < 64 < len(long)
        gens = [llama.start(tokens, greedy) for tokens in (long, short, shorter)]
        steps = []
        for _ in range(3):
            before = llama.times.tokens
            llama.step()
            steps.append(llama.times.tokens - before)
            if steps == [len(shorter)]:  # the shortest prompt first, alone
                assert [g.first_token_at is not None for g in gens] == [False, False, True]
        # Then a token of its answer and the next shortest prompt; then the long one's first
        # chunk fills the step after a token of each answer.
        assert steps == [len(shorter), 1 + len(short), 64]
        assert all(g.first_token_at is not None for g in gens[1:]) and gens[0]._n_past == 62
    finally:
        llama.close()


def test_a_prompt_chunk_sits_among_the_answers_in_slot_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a KV stream per sequence, llama.cpp cuts a batch into ubatches of consecutive
    sequence ids in batch order: slots 0, 2, then 1's chunk would make three passes over the
    weights where 0, 1's chunk, 2 makes two."""
    small = load_handler(tmp_path, handler={"n_batch": 64})
    llama = small.handler.engine
    batches: list[list[int]] = []
    decode = engine.llama_cpp.llama_decode

    def recording(ctx: object, batch: Any) -> int:
        batches.append([batch.seq_id[i][0] for i in range(batch.n_tokens)])
        return int(decode(ctx, batch))

    try:
        greedy = Sampling(max_tokens=16, temperature=0, ignore_eos=True)
        gens = [llama.start(llama.tokenize(f"Question {q}: why?"), greedy) for q in "ABC"]
        while any(len(g._pending) > 1 for g in gens):
            llama.step()
        assert [g.seq_id for g in gens] == [0, 1, 2]
        llama.cancel(gens[1])
        late = llama.start(llama.tokenize("Late question: what is rain made of?"), greedy)
        assert late.seq_id == 1  # the free slot between two busy ones
        monkeypatch.setattr(engine.llama_cpp, "llama_decode", recording)
        llama.step()
        (seqs,) = batches
        assert seqs.count(1) > 1 and seqs == sorted(seqs) and {0, 2} <= set(seqs)
    finally:
        llama.close()


def test_a_sequence_moves_down_into_a_gap_its_answer_unchanged_and_the_gaps_cache_kept(
    tmp_path: Path, harness: Harness
) -> None:
    """A slot left free between running sequences (a client gone) would cost every later step
    a second ubatch; after PACK_AFTER_STEPS steps the highest sequence moves down into it."""
    small = load_handler(tmp_path, handler={"n_batch": 64})
    llama = small.handler.engine
    try:
        greedy = Sampling(max_tokens=24, temperature=0, ignore_eos=True)
        prompts = [llama.tokenize(f"Question {q}: why is the sky blue?") for q in "ABC"]
        gens = [llama.start(prompt, greedy) for prompt in prompts]
        while any(len(g._pending) > 1 for g in gens):
            llama.step()
        low, middle, top = sorted(gens, key=lambda g: g.seq_id)
        assert (low.seq_id, middle.seq_id, top.seq_id) == (0, 1, 2)
        llama.cancel(middle)  # its client left: slot 1 keeps its cache, unused
        for _ in range(engine.PACK_AFTER_STEPS):
            llama.step()
            assert top.seq_id == 2
        llama.step()
        assert (top.seq_id, llama.times.moves) == (1, 1)
        while not top.finished:
            llama.step()
        # The copied cache gives the answer the sequence gives alone, in another engine.
        other = harness.handler.engine
        alone = other.start(top.prompt_tokens, greedy)
        while not alone.finished:
            other.step()
        assert alone.cached_tokens == 0 and top._tokens == alone._tokens
        # The cache slot 1 held went to another free slot, where the same chat finds it.
        follow_up = middle.prompt_tokens + llama.tokenize(" Answer briefly.")
        again, fresh = llama.start(follow_up, greedy), other.start(follow_up, greedy)
        assert again.cached_tokens == len(middle.prompt_tokens) and fresh.cached_tokens == 0
        while not (again.finished and fresh.finished):
            llama.step()
            other.step()
        assert again._tokens == fresh._tokens
    finally:
        llama.close()


def test_no_sequence_moves_into_a_gap_whose_cache_would_have_nowhere_to_go(
    tmp_path: Path,
) -> None:
    small = load_handler(tmp_path, handler={"n_batch": 64})
    llama = small.handler.engine
    try:
        greedy = Sampling(max_tokens=24, temperature=0, ignore_eos=True)
        total = llama.config.max_sequences
        prompts = [llama.tokenize(f"Chat {n}: hello there.") for n in range(total)]
        gens = [llama.start(prompt, greedy) for prompt in prompts]
        while any(len(g._pending) > 1 for g in gens):
            llama.step()
        middle = next(g for g in gens if g.seq_id == total // 2)
        llama.cancel(middle)  # every other slot is busy: its cache could only be overwritten
        for _ in range(2 * engine.PACK_AFTER_STEPS):
            llama.step()
        assert llama.times.moves == 0 and total // 2 in llama._slot_tokens
    finally:
        llama.close()


def test_seeded_sampling_is_reproducible_inside_a_batch(harness: Harness) -> None:
    params = {"temperature": 0.9, "seed": 1234, "max_tokens": 24}
    alone = whole_text(harness, QUESTIONS[2], **params)[0]
    _, final = harness.run([(CHAT, chat(q, **params)) for q in QUESTIONS[:4]])
    assert json.loads(final.predictions[2].body)["choices"][0]["message"]["content"] == alone


def stream_body(pieces: list[Prediction]) -> bytes:
    return b"".join(p.body for p in pieces)


def test_continuous_request_joins_a_running_batch(continuous: Harness, harness: Harness) -> None:
    long_q, late_q = "Write a long story about a dragon and a knight.", QUESTIONS[0]
    arrivals = {
        0: [(CHAT, chat(long_q, stream=True, max_tokens=40))],
        6: [(CHAT, chat(late_q, stream=True, max_tokens=12))],
    }
    sent = continuous.run_continuous(arrivals)
    first, late = sent.values()
    # The late request got its first token while the first one was still generating.
    late_flags = [p.headers.get("ts_stream_next") for p in late]
    assert late_flags[-1] == "false" and len(late) >= 12
    assert len(first) > 6 + len(late), "the late request finished before the first one"
    assert all(p.headers.get("ts_stream_next") == "true" for p in first[: 6 + len(late) - 1])
    # And both say what they would say alone.
    for pieces, (q, n) in ((first, (long_q, 40)), (late, (late_q, 12))):
        text, final = streamed_text(stream_body(pieces))
        assert text == whole_text(harness, q, max_tokens=n)[0]
        assert final["usage"]["completion_tokens"] == n
    assert not continuous.handler.running and continuous.handler.engine.free_slots == 8


def test_continuous_client_that_leaves_stops_costing_compute(continuous: Harness) -> None:
    arrivals = {
        0: [
            (CHAT, chat(QUESTIONS[2], stream=True, max_tokens=500)),
            (CHAT, chat(QUESTIONS[3], stream=True, max_tokens=8)),
        ]
    }
    sent = continuous.run_continuous(arrivals, leave={0: 5})
    gone, stayed = sent.values()
    assert len(gone) == 5, "no step was spent on the request after its client left"
    assert gone[-1].headers.get("ts_stream_next") == "true"
    assert streamed_text(stream_body(stayed))[1]["usage"]["completion_tokens"] == 8
    assert not continuous.handler.running and continuous.handler.engine.free_slots == 8


def test_continuous_whole_answers_and_errors(continuous: Harness) -> None:
    arrivals = {
        0: [
            (CHAT, chat(QUESTIONS[5], max_tokens=10)),
            (CHAT, {"messages": "nope"}),
            ("v1/models", b""),
        ],
        2: [("v1/completions", {"prompt": "1, 2, 3,", "max_tokens": 5, "temperature": 0})],
    }
    whole, bad, models, completion = continuous.run_continuous(arrivals).values()
    data = json.loads(stream_body(whole))
    assert data["usage"]["completion_tokens"] == 10 and data["choices"][0]["message"]["content"]
    assert whole[0].status == 200 and whole[-1].headers["ts_stream_next"] == "false"
    assert len(bad) == 1 and bad[0].status == 400 and "ts_stream_next" not in bad[0].headers
    assert "must be a list" in json.loads(bad[0].body)["error"]["message"]
    assert len(models) == 1 and json.loads(models[0].body)["data"][0]["id"] == "smollm2"
    assert json.loads(stream_body(completion))["usage"]["completion_tokens"] == 5


def test_engine_doctests() -> None:
    import doctest

    import engine

    assert doctest.testmod(engine).failed == 0
