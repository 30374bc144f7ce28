"""Scenarios: seeded, distinct where they should be, lengths spread as documented, chats fit."""

from __future__ import annotations

import doctest
import statistics

import pytest

from tschat.bench import scenarios
from tschat.bench.scenarios import (
    CHAT_TOKEN_BUDGET,
    DISTINCT,
    MULTI_TURN,
    SHARED_PREFIX,
    TOKENS_PER_MESSAGE,
    build,
    estimate_tokens,
)


def test_doctests() -> None:
    assert doctest.testmod(scenarios).failed == 0


@pytest.mark.parametrize("name", scenarios.SCENARIOS)
def test_the_same_arguments_give_the_same_conversations(name: str) -> None:
    assert build(name, 30, first=5) == build(name, 30, first=5)


def test_the_seed_and_the_start_change_what_is_asked() -> None:
    assert build(DISTINCT, 10, seed=1) != build(DISTINCT, 10, seed=2)
    assert build(MULTI_TURN, 10, turns=3, seed=1) != build(MULTI_TURN, 10, turns=3, seed=2)
    # Conversation i is the same whatever the count: a longer load begins like a shorter one.
    assert build(DISTINCT, 5) == build(DISTINCT, 50)[:5]
    assert build(DISTINCT, 5, first=3)[0] == build(DISTINCT, 4)[3]


def messages(name: str, count: int, first: int = 0) -> list[str]:
    return [c.turns[0].user for c in build(name, count, first=first)]


def test_distinct_prompts_are_all_different_even_across_cells() -> None:
    prompts = messages(DISTINCT, 640)
    assert len(set(prompts)) == 640
    assert not set(messages(DISTINCT, 50, first=1000)) & set(messages(DISTINCT, 50, first=2000))


def test_distinct_lengths_are_spread_as_documented() -> None:
    conversations = build(DISTINCT, 400, max_tokens=256)
    words = [len(c.turns[0].user.split()) for c in conversations]
    caps = [c.turns[0].max_tokens for c in conversations]
    assert all(c.requests == 1 for c in conversations)
    # Short questions, passages and documents: a wide spread of prompt lengths.
    assert min(words) >= 5 and max(words) <= 700
    short = sum(w <= 45 for w in words) / len(words)
    long = sum(w >= 150 for w in words) / len(words)
    assert 0.45 <= short <= 0.65, short
    assert 0.15 <= long <= 0.40, long
    # Caps log-uniform in [32, 256]: median near sqrt(32 * 256) = 90.5.
    assert min(caps) >= 32 and max(caps) <= 256
    assert 75 <= statistics.median(caps) <= 110
    assert len(set(caps)) > 50


def test_caps_follow_max_tokens() -> None:
    caps = [c.turns[0].max_tokens for c in build(DISTINCT, 100, max_tokens=64)]
    assert min(caps) >= 8 and max(caps) <= 64


def test_multi_turn_chats_fit_their_context() -> None:
    chats = build(MULTI_TURN, 40 * 10, turns=10, max_tokens=256)
    assert len(chats) == 40 and all(c.requests == 10 for c in chats)
    for chat in chats:
        users = [t.user for t in chat.turns]
        history = sum(estimate_tokens(u) + TOKENS_PER_MESSAGE for u in users)
        assert history + sum(t.max_tokens for t in chat.turns) <= CHAT_TOKEN_BUDGET
        assert all(t.max_tokens >= 1 for t in chat.turns)
        assert len(set(users)) > 1  # follow-ups, not the same question again
    openings = [c.turns[0].user for c in chats]
    assert len(set(openings)) == 40


def test_multi_turn_rounds_up_to_whole_chats() -> None:
    assert [c.requests for c in build(MULTI_TURN, 7, turns=3)] == [3, 3, 3]


def test_shared_prefix_is_one_prompt() -> None:
    chats = build(SHARED_PREFIX, 5, prompt="Hi there", max_tokens=12)
    assert {(c.turns[0].user, c.turns[0].max_tokens) for c in chats} == {("Hi there", 12)}


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("nope", 3), {}, "unknown scenario"),
        ((DISTINCT, 0), {}, "at least 1"),
        ((MULTI_TURN, 3), {"turns": 0}, "at least one turn"),
        ((MULTI_TURN, 3), {"turns": 200}, "do not fit"),
    ],
)
def test_bad_arguments_are_refused(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build(*args, **kwargs)
