"""Fitting a conversation into the context window: the turns left out, and when nothing fits."""

from __future__ import annotations

import doctest
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tschat.chat.context
from tschat.api.inference import ChatMessage
from tschat.chat.context import plan_context


def chat(*roles_and_tokens: tuple[str, int]) -> tuple[list[ChatMessage], list[int]]:
    messages: list[ChatMessage] = [
        {"role": role, "content": f"{role} {n}"}  # type: ignore[typeddict-item]
        for n, (role, _) in enumerate(roles_and_tokens)
    ]
    return messages, [tokens for _, tokens in roles_and_tokens]


def contents(messages: Any) -> list[str]:
    return [m["content"] for m in messages]


def test_doctests() -> None:
    assert doctest.testmod(tschat.chat.context).failed == 0


def test_everything_is_sent_when_it_fits() -> None:
    messages, counts = chat(("system", 50), ("user", 100), ("assistant", 200), ("user", 100))
    plan = plan_context(messages, counts, window=2048, reserved=512)
    assert plan.fits
    assert plan.messages == tuple(messages)
    assert (plan.used_tokens, plan.sent_tokens, plan.left_out_turns) == (450, 450, 0)
    assert plan.note is None and plan.error is None
    assert plan.meter_label() == "450 of 2,048 tokens (22%)"


def test_exactly_full_still_fits() -> None:
    messages, counts = chat(("user", 1000), ("assistant", 500), ("user", 36))
    plan = plan_context(messages, counts, window=2048, reserved=500, overhead=12)
    assert plan.fits and plan.left_out_turns == 0 and plan.sent_tokens == 1548


def test_the_oldest_turns_are_left_out_whole_with_a_note() -> None:
    messages, counts = chat(
        ("system", 100),
        ("user", 300),
        ("assistant", 400),
        ("user", 300),
        ("assistant", 400),
        ("user", 300),
        ("assistant", 400),
        ("user", 200),
    )
    plan = plan_context(messages, counts, window=2048, reserved=512)
    assert plan.fits
    assert contents(plan.messages) == ["system 0", "user 5", "assistant 6", "user 7"]
    assert (plan.left_out_turns, plan.left_out_messages) == (2, 4)
    assert plan.note == "2 earlier turns left out to fit the 2,048-token window."
    assert plan.used_tokens == 2400 and plan.sent_tokens == 1000
    assert plan.fraction > 1  # the meter shows the whole conversation


def test_a_turn_holds_every_answer_until_the_next_question() -> None:
    # A stopped answer followed by a retry: both answers go with their question.
    messages, counts = chat(
        ("user", 500), ("assistant", 300), ("assistant", 300), ("user", 500), ("user", 100)
    )
    plan = plan_context(messages, counts, window=1000, reserved=200)
    assert contents(plan.messages) == ["user 3", "user 4"]
    assert plan.left_out_turns == 1 and plan.left_out_messages == 3


def test_a_reply_before_the_first_question_is_a_turn_of_its_own() -> None:
    messages, counts = chat(
        ("system", 10), ("assistant", 900), ("user", 50), ("assistant", 50), ("user", 20)
    )
    plan = plan_context(messages, counts, window=600, reserved=100)
    assert contents(plan.messages) == ["system 0", "user 2", "assistant 3", "user 4"]
    assert plan.note == "1 earlier turn left out to fit the 600-token window."


def test_the_last_question_alone_too_long_gives_a_sentence_not_a_request() -> None:
    messages, counts = chat(("system", 40), ("user", 100), ("assistant", 100), ("user", 1800))
    plan = plan_context(messages, counts, window=2048, reserved=512)
    assert not plan.fits
    assert plan.messages == ()
    assert plan.error == (
        "The last question and the system prompt take 1,840 tokens, and 512 more are kept for "
        "the answer: more than the model's 2,048-token window. Shorten the question or the "
        "system prompt, or lower Max tokens."
    )


def test_without_trimming_a_long_conversation_gives_a_sentence() -> None:
    messages, counts = chat(("user", 1000), ("assistant", 900), ("user", 100))
    plan = plan_context(messages, counts, window=2048, reserved=256, trim=False)
    assert not plan.fits and plan.messages == () and plan.left_out_turns == 0
    assert plan.error is not None
    assert plan.error.startswith("This conversation takes 2,000 tokens, and 256 more")
    assert "let earlier turns be left out" in plan.error
    fitting = plan_context(messages, counts, window=4096, reserved=256, trim=False)
    assert fitting.fits and fitting.messages == tuple(messages)


def test_the_overhead_counts() -> None:
    messages, counts = chat(("user", 500), ("assistant", 500), ("user", 500))
    assert plan_context(messages, counts, window=2000, reserved=500).left_out_turns == 0
    assert plan_context(messages, counts, window=2000, reserved=500, overhead=1).left_out_turns == 1


@pytest.mark.parametrize(
    ("counts", "options", "message"),
    [
        ([1], {}, "1 token counts for 2 messages"),
        ([1, -1], {}, "whole numbers"),
        ([1, 1.5], {}, "whole numbers"),
        ([1, True], {}, "whole numbers"),
        ([1, 1], {"window": 0}, "window must be positive"),
        ([1, 1], {"reserved": -1}, "window must be positive"),
    ],
)
def test_bad_arguments(counts: list[Any], options: dict[str, Any], message: str) -> None:
    messages, _ = chat(("user", 1), ("assistant", 1))
    values: dict[str, Any] = {"window": 100, "reserved": 10} | options
    with pytest.raises(ValueError, match=message):
        plan_context(messages, counts, **values)


ROLES = st.lists(
    st.tuples(st.sampled_from(["user", "assistant"]), st.integers(0, 800)), max_size=30
)


@given(
    system=st.lists(st.integers(0, 300), max_size=2),
    turns=ROLES,
    window=st.integers(1, 4096),
    reserved=st.integers(0, 1024),
)
def test_what_is_sent_always_fits_and_keeps_the_system_prompt_and_last_question(
    system: list[int], turns: list[tuple[str, int]], window: int, reserved: int
) -> None:
    messages, counts = chat(*[("system", n) for n in system], *turns)
    plan = plan_context(messages, counts, window=window, reserved=reserved)
    assert plan.used_tokens == sum(counts)
    if not plan.fits:
        assert plan.messages == () and plan.error
        return
    assert plan.sent_tokens <= window - reserved
    assert plan.sent_tokens == sum(counts[messages.index(m)] for m in plan.messages)
    kept = contents(plan.messages)
    assert kept[: len(system)] == contents(messages[: len(system)])
    users = [m for m in messages if m["role"] == "user"]
    if users:
        last = messages.index(users[-1])
        assert kept[-(len(messages) - last) :] == contents(messages[last:])
    # Left out: a prefix of the turns, so the kept ones are the newest, in order.
    assert kept == contents(messages[: len(system)]) + contents(
        messages[len(system) + plan.left_out_messages :]
    )
    if plan.left_out_turns:
        assert plan.note and str(plan.left_out_turns) in plan.note
        # What is kept starts at a question, and one turn fewer left out would not have fitted.
        first_kept = len(system) + plan.left_out_messages
        assert messages[first_kept]["role"] == "user"
        dropped = range(len(system), first_kept)
        last_turn_start = max(
            [i for i in dropped if messages[i]["role"] == "user"], default=len(system)
        )
        last_turn = sum(counts[last_turn_start:first_kept])
        assert plan.sent_tokens + last_turn > window - reserved
