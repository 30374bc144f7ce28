"""What the chat draws of a message: its text (safe Markdown, or JSON), the line under it, the
token-probability strip, and the context meter's words.

Model output only ever reaches the page through :func:`apps.safe_markdown.safe_markdown` (with
Streamlit's HTML off), ``st.json``/``st.code``, or the escaped token strip: nothing in an answer
loads anything by itself.
"""

from __future__ import annotations

import json

import streamlit as st

from apps.safe_markdown import safe_markdown
from apps.token_view import token_strip_html
from tschat.chat.context import ContextPlan
from tschat.chat.conversation import AnswerFormat, AnswerStats
from tschat.chat.logprobs import token_views

CURSOR = "▌"
STATE_NOTES = {
    "stopped": "⏹ stopped: partial answer",
    "broken": "⚠ broke off: partial answer",
    "streaming": "… still coming",
}
FORMAT_NOTES = {"json": "JSON", "tool_calls": "tool calls"}


def draw_text(text: str, answer_format: AnswerFormat = "text", *, streaming: bool = False) -> None:
    """An answer's (or a question's) text: JSON as JSON, anything else as safe Markdown."""
    if answer_format != "text":
        value = _parsed(text) if not streaming else None
        if value is not None:
            st.json(value)
        elif text:
            st.code(text + (CURSOR if streaming else ""), language="json", wrap_lines=True)
        elif streaming:
            st.markdown(CURSOR)
        return
    if text:
        st.markdown(safe_markdown(text) + (f" {CURSOR}" if streaming else ""))
    elif streaming:
        st.markdown(CURSOR)
    else:
        st.caption("(no text)")


def answer_note(state: str, stats: AnswerStats | None, answer_format: AnswerFormat = "text") -> str:
    """The line under an answer: how it ended, its figures, its format.

    >>> answer_note("stopped", AnswerStats(120.0, 5, estimated=True, finish_reason="stopped"))
    '⏹ stopped: partial answer · first token 120 ms · ≈5 tokens · finish: stopped'
    >>> answer_note("complete", None, "json")
    'JSON'
    """
    notes = []
    if state in STATE_NOTES:
        notes.append(STATE_NOTES[state])
    if stats is not None and stats.summary():
        notes.append(stats.summary())
    if answer_format in FORMAT_NOTES:
        notes.append(FORMAT_NOTES[answer_format])
    return " · ".join(notes)


def draw_tokens(tokens: tuple[dict[str, object], ...]) -> None:
    """The token-probability strip of an answer, if it has one."""
    try:
        views = token_views(list(tokens))
    except ValueError:
        return  # damaged: the text above still stands
    if not views:
        return
    st.caption(
        "Token probabilities: the more orange, the less sure the model was. Hover over or "
        "click a token to see what else it considered."
    )
    st.html(token_strip_html(views))


def meter_line(plan: ContextPlan) -> str:
    """The context meter's caption: the tokens used, and what the next request must leave out.

    >>> from tschat.chat.context import plan_context
    >>> turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
    ...          {"role": "user", "content": "c"}]
    >>> meter_line(plan_context(turns, [100, 100, 100], window=2048, reserved=512))
    'Context: 300 of 2,048 tokens (15%), 512 kept for the answer'
    >>> meter_line(plan_context(turns, [1000, 1000, 100], window=2048, reserved=512))
    'Context: 2,100 of 2,048 tokens (103%), 512 kept for the answer · the next request leaves \
out the oldest turn'
    """
    line = f"Context: {plan.meter_label()}, {plan.reserved:,} kept for the answer"
    if not plan.fits:
        return f"{line} · too long for the next request"
    if plan.left_out_turns == 1:
        return f"{line} · the next request leaves out the oldest turn"
    if plan.left_out_turns:
        return f"{line} · the next request leaves out the {plan.left_out_turns} oldest turns"
    return line


def _parsed(text: str) -> object | None:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, (dict, list)) else None
