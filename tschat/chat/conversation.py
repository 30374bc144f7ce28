"""The values of a conversation that the store, the answer in flight and the exports share: the
roles, the longest name, an answer's figures and how it is shown (text, JSON, tool calls, token
probabilities). Conversations themselves live in :mod:`tschat.chat.store`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

MAX_NAME_LENGTH = 80

Role = Literal["user", "assistant"]
AnswerFormat = Literal["text", "json", "tool_calls"]
ANSWER_FORMATS: tuple[str, ...] = get_args(AnswerFormat)
MAX_SAVED_TOKENS = 16_384  # token probabilities kept with one answer
STOPPED = "stopped"  # finish reason of an answer the user stopped
BROKEN = "error"  # finish reason of an answer that broke off


@dataclass(frozen=True)
class AnswerStats:
    """Figures shown under an answer. ``estimated``: counted here, because the server sent none."""

    ttft_ms: float | None = None
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    tokens_per_second: float | None = None
    finish_reason: str | None = None
    model: str | None = None
    estimated: bool = False

    def summary(self) -> str:
        """One line: time to first token, tokens, speed and finish reason.

        >>> AnswerStats(212.4, 48, 30, 20.53, "length").summary()
        'first token 212 ms · 48 tokens · 20.5 tokens/s · finish: length'
        >>> AnswerStats(None, 5, None, None, "stopped", estimated=True).summary()
        '≈5 tokens · finish: stopped'
        """
        approx = "≈" if self.estimated else ""
        parts = []
        if self.ttft_ms is not None:
            parts.append(f"first token {self.ttft_ms:.0f} ms")
        if self.completion_tokens is not None:
            plural = "" if self.completion_tokens == 1 else "s"
            parts.append(f"{approx}{self.completion_tokens} token{plural}")
        if self.tokens_per_second is not None:
            parts.append(f"{approx}{self.tokens_per_second:.1f} tokens/s")
        if self.finish_reason:
            parts.append(f"finish: {self.finish_reason}")
        return " · ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """A JSON object without the unknown figures."""
        return {key: value for key, value in asdict(self).items() if value not in (None, False)}


@dataclass(frozen=True)
class AnswerDetails:
    """How an answer is shown besides its text.

    ``format``: ``json`` for an answer made under a JSON schema, ``tool_calls`` for the calls the
    model asked for (the text then holds them as JSON); ``tokens``: the ``logprobs.content``
    entries of the answer (token, logprob, top_logprobs), when they were asked for.
    """

    format: AnswerFormat = "text"
    tokens: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any] | None:
        """A JSON object, or None when there is nothing besides the text."""
        data: dict[str, Any] = {}
        if self.format != "text":
            data["format"] = self.format
        if self.tokens:
            data["tokens"] = list(self.tokens)
        return data or None

    @classmethod
    def from_json(cls, data: object) -> AnswerDetails:
        """Read what :meth:`to_json` wrote; anything unexpected is dropped, never raised.

        >>> AnswerDetails.from_json({"format": "json", "tokens": [{"token": "{", "logprob": 0}]})
        AnswerDetails(format='json', tokens=({'token': '{', 'logprob': 0},))
        >>> AnswerDetails.from_json({"format": "<b>", "tokens": "x"})
        AnswerDetails(format='text', tokens=())
        """
        if not isinstance(data, Mapping):
            return cls()
        shown = data.get("format")
        tokens = data.get("tokens")
        return cls(
            shown if shown in ANSWER_FORMATS else "text",
            tuple(t for t in tokens[:MAX_SAVED_TOKENS] if isinstance(t, dict))
            if isinstance(tokens, list)
            else (),
        )


def slim_token(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A ``logprobs.content`` entry without its byte lists, as an answer keeps it.

    >>> slim_token({"token": "a", "logprob": -0.5, "bytes": [97],
    ...             "top_logprobs": [{"token": "a", "logprob": -0.5, "bytes": [97]}]})
    {'token': 'a', 'logprob': -0.5, 'top_logprobs': [{'token': 'a', 'logprob': -0.5}]}
    """

    def pair(item: Mapping[str, Any]) -> dict[str, Any]:
        logprob = item.get("logprob")
        finite = isinstance(logprob, (int, float)) and math.isfinite(logprob)
        return {"token": item.get("token"), "logprob": logprob if finite else -1e9}

    top = entry.get("top_logprobs")
    return pair(entry) | {
        "top_logprobs": [pair(t) for t in top if isinstance(t, Mapping)]
        if isinstance(top, list)
        else []
    }
