"""Token probabilities of an answer, ready to draw: where the model hesitated, and what else it had.

:func:`token_views` reads the ``logprobs.content`` entries of OpenAI chat answers (``token``,
``logprob``, ``top_logprobs``) into :class:`TokenView` values: the token's text, its probability,
a shade and a background colour (stronger where the model was less sure), and the alternatives it
considered. The chat draws them with ``apps/token_view.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

MAX_ALTERNATIVES = 20  # OpenAI allows top_logprobs up to 20


@dataclass(frozen=True)
class Alternative:
    """A token the model could have picked at this place, with its probability."""

    text: str
    probability: float


@dataclass(frozen=True)
class TokenView:
    """One token of an answer as the probability view draws it.

    ``alternatives`` are the likeliest tokens at this place, likeliest first (the chosen one
    among them when it was likely enough).
    """

    text: str
    probability: float
    alternatives: tuple[Alternative, ...] = ()

    @property
    def shade(self) -> float:
        """How unsure the model was, from 0 (certain) to 1."""
        return 1.0 - self.probability

    @property
    def colour(self) -> str:
        """A CSS background: transparent when sure, a stronger orange the less sure it was.

        >>> TokenView("a", 1.0).colour, TokenView("b", 0.5).colour
        ('rgba(255, 140, 0, 0.00)', 'rgba(255, 140, 0, 0.35)')
        """
        return f"rgba(255, 140, 0, {0.7 * self.shade:.2f})"

    def hover(self) -> str:
        """The hover text: the token's probability, then the alternatives.

        >>> print(TokenView(" Paris", 0.62, (Alternative(" Paris", 0.62),
        ...                                  Alternative(" Lyon", 0.201))).hover())
        “ Paris” 62.0%
        alternatives: “ Paris” 62.0% · “ Lyon” 20.1%
        """
        lines = [f"{_quoted(self.text)} {_percent(self.probability)}"]
        if self.alternatives:
            listed = " · ".join(
                f"{_quoted(a.text)} {_percent(a.probability)}" for a in self.alternatives
            )
            lines.append(f"alternatives: {listed}")
        return "\n".join(lines)


def token_views(content: object) -> list[TokenView]:
    """Read the ``choices[0].logprobs.content`` list of a chat answer (or of its chunks, joined).

    Raises ValueError, saying which entry is wrong, when an entry is not shaped as OpenAI's.

    >>> views = token_views([{"token": "Hi", "logprob": -0.105,
    ...                       "top_logprobs": [{"token": "Hello", "logprob": -2.4},
    ...                                        {"token": "Hi", "logprob": -0.105}]}])
    >>> views[0].text, round(views[0].probability, 2), [a.text for a in views[0].alternatives]
    ('Hi', 0.9, ['Hi', 'Hello'])
    """
    if content is None:
        return []
    if isinstance(content, (str, bytes)) or not isinstance(content, Sequence):
        raise ValueError("logprobs.content must be a list")
    views = []
    for index, entry in enumerate(content):
        where = f"logprobs.content[{index}]"
        text, probability = _token(entry, where)
        raw_top = entry.get("top_logprobs") or []
        if not isinstance(raw_top, Sequence) or isinstance(raw_top, (str, bytes)):
            raise ValueError(f"{where}.top_logprobs must be a list")
        alternatives = sorted(
            (
                Alternative(*_token(item, f"{where}.top_logprobs[{n}]"))
                for n, item in enumerate(raw_top[:MAX_ALTERNATIVES])
            ),
            key=lambda alternative: -alternative.probability,
        )
        views.append(TokenView(text, probability, tuple(alternatives)))
    return views


def _token(entry: object, where: str) -> tuple[str, float]:
    """The text and probability of one ``{token, logprob}`` object."""
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be an object with token and logprob")
    text, logprob = entry.get("token"), entry.get("logprob")
    if not isinstance(text, str):
        raise ValueError(f"{where}.token must be text")
    if isinstance(logprob, bool) or not isinstance(logprob, (int, float)) or math.isnan(logprob):
        raise ValueError(f"{where}.logprob must be a number")
    # A log-probability is at most 0; rounding on the server may leave a tiny positive one.
    return text, math.exp(min(float(logprob), 0.0))


def _quoted(text: str) -> str:
    """A token between quotes, with its newlines and tabs written out so they can be seen."""
    return "“" + text.replace("\n", "\\n").replace("\t", "\\t") + "”"


def _percent(probability: float) -> str:
    return f"{probability:.1%}"
