"""Fit a conversation into the model's context window before it is sent.

The server counts the tokens of each message (its tokenize route); :func:`plan_context` takes
those counts, the window and the tokens kept free for the answer, and decides what to send:
everything when it fits; otherwise the oldest turns are left out (never the system prompt, never
the last question), with a note saying how many; or, when even the last question does not fit or
leaving turns out is turned off, a sentence saying what to do instead of a server error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from tschat.api.inference import ChatMessage


@dataclass(frozen=True)
class ContextPlan:
    """What a request sends and how much of the window the conversation uses.

    ``messages`` is what to send (empty when nothing fits); ``used_tokens`` counts the whole
    conversation, for the meter; ``sent_tokens`` counts what is sent. ``note`` says what was
    left out; ``error`` (only when ``fits`` is false) says why nothing can be sent.
    """

    messages: tuple[ChatMessage, ...]
    used_tokens: int
    sent_tokens: int
    window: int
    reserved: int
    left_out_turns: int = 0
    left_out_messages: int = 0
    note: str | None = None
    error: str | None = None

    @property
    def fits(self) -> bool:
        """Whether the request can be sent."""
        return self.error is None

    @property
    def fraction(self) -> float:
        """The share of the window the whole conversation uses (may exceed 1).

        >>> plan_context([{"role": "user", "content": "Hi"}], [512], window=2048,
        ...              reserved=0).fraction
        0.25
        """
        return self.used_tokens / self.window

    def meter_label(self) -> str:
        """The context meter's line.

        >>> plan_context([{"role": "user", "content": "Hi"}], [1234], window=2048,
        ...              reserved=256).meter_label()
        '1,234 of 2,048 tokens (60%)'
        """
        return f"{self.used_tokens:,} of {self.window:,} tokens ({self.fraction:.0%})"


def plan_context(
    messages: Sequence[ChatMessage],
    token_counts: Sequence[int],
    *,
    window: int,
    reserved: int,
    trim: bool = True,
    overhead: int = 0,
) -> ContextPlan:
    """Decide which messages to send so that the prompt and ``reserved`` fit in ``window``.

    Args:
        messages: the system prompt (if any) and the visible branch, oldest first.
        token_counts: the tokens of each message, in the same order.
        window: the model's context window in tokens.
        reserved: tokens kept free for the answer (e.g. max_tokens).
        trim: leave out the oldest turns when needed; False gives a message instead.
        overhead: tokens the request adds around the messages (e.g. the answer's header).

    A turn is a question with the answers that follow it; turns are left out whole, oldest
    first. Leading system messages and everything from the last question on are always sent.

    >>> turns = [{"role": "system", "content": "s"}, {"role": "user", "content": "q1"},
    ...          {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
    ...          {"role": "assistant", "content": "a2"}, {"role": "user", "content": "q3"}]
    >>> plan = plan_context(turns, [10, 500, 700, 400, 600, 300], window=2048, reserved=512)
    >>> [m["content"] for m in plan.messages], plan.note
    (['s', 'q2', 'a2', 'q3'], '1 earlier turn left out to fit the 2,048-token window.')
    >>> print(plan_context(turns, [10, 5, 5, 5, 5, 1900], window=2048, reserved=512).error)
    The last question and the system prompt take 1,910 tokens, and 512 more are kept for the \
answer: more than the model's 2,048-token window. Shorten the question or the system prompt, or \
lower Max tokens.
    """
    if len(token_counts) != len(messages):
        raise ValueError(f"{len(token_counts)} token counts for {len(messages)} messages")
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in token_counts):
        raise ValueError("token counts must be whole numbers, 0 or more")
    if window < 1 or reserved < 0 or overhead < 0:
        raise ValueError("the window must be positive; reserved and overhead 0 or more")
    head = 0
    while head < len(messages) and messages[head]["role"] == "system":
        head += 1
    last_question = next(
        (i for i in range(len(messages) - 1, head - 1, -1) if messages[i]["role"] == "user"),
        head,  # no question: nothing counts as an earlier turn
    )
    # Turns between the system prompt and the last question: each starts at a question.
    starts = [head] + [i for i in range(head + 1, last_question) if messages[i]["role"] == "user"]
    turns = [
        range(start, end)
        for start, end in zip(starts, [*starts[1:], last_question], strict=True)
        if start < end
    ]
    used = sum(token_counts) + overhead
    budget = window - reserved
    kept = list(range(len(messages)))
    sent = used
    left_out_turns = 0
    while sent > budget and trim and left_out_turns < len(turns):
        dropped = turns[left_out_turns]
        sent -= sum(token_counts[i] for i in dropped)
        kept = [i for i in kept if i not in dropped]
        left_out_turns += 1
    plan = ContextPlan(
        messages=tuple(messages[i] for i in kept),
        used_tokens=used,
        sent_tokens=sent,
        window=window,
        reserved=reserved,
        left_out_turns=left_out_turns,
        left_out_messages=len(messages) - len(kept),
    )
    if sent <= budget:
        if not left_out_turns:
            return plan
        plural = "" if left_out_turns == 1 else "s"
        note = f"{left_out_turns} earlier turn{plural} left out to fit the {window:,}-token window."
        return replace(plan, note=note)
    needs = (
        f"and {reserved:,} more are kept for the answer: more than the model's "
        f"{window:,}-token window."
    )
    if not trim and turns:
        error = (
            f"This conversation takes {used:,} tokens, {needs} Start a new conversation, let "
            "earlier turns be left out, or lower Max tokens."
        )
    else:
        error = (
            f"The last question and the system prompt take {sent:,} tokens, {needs} Shorten "
            "the question or the system prompt, or lower Max tokens."
        )
    return replace(plan, messages=(), error=error)
