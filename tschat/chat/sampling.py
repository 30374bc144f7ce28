"""Sampling settings of the chat: the parameters, their ranges and defaults, and the stop
sequences; what each request sends besides the conversation."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from tschat.errors import (
    SettingsError,
)

MAX_STOP_SEQUENCES = 4  # the handler refuses more


@dataclass(frozen=True)
class Knob:
    """One numeric sampling parameter with its slider range (the server accepts at least this)."""

    name: str
    label: str
    low: float
    high: float
    default: float
    step: float
    help: str

    @property
    def whole(self) -> bool:
        """Whether the parameter takes whole numbers."""
        return all(float(v).is_integer() for v in (self.low, self.high, self.default, self.step))


KNOBS: tuple[Knob, ...] = (
    Knob(
        "temperature",
        "Temperature",
        0.0,
        2.0,
        0.7,
        0.05,
        "Randomness of the answer: 0 always picks the likeliest token, higher values vary more.",
    ),
    Knob(
        "top_p",
        "Top-p",
        0.0,
        1.0,
        0.95,
        0.01,
        "Sample only from the likeliest tokens whose probabilities add up to this.",
    ),
    Knob(
        "top_k",
        "Top-k",
        0,
        200,
        40,
        1,
        "Sample only from this many likeliest tokens (0 = no limit).",
    ),
    Knob(
        "min_p",
        "Min-p",
        0.0,
        1.0,
        0.05,
        0.01,
        "Drop tokens less likely than this fraction of the likeliest one.",
    ),
    Knob(
        "max_tokens",
        "Max tokens",
        1,
        2048,
        512,
        1,
        "Longest answer, in tokens; the answer ends with finish reason “length” when reached.",
    ),
    Knob(
        "repeat_penalty",
        "Repeat penalty",
        1.0,
        2.0,
        1.1,
        0.01,
        "Penalty on tokens already used; 1 = none. Raise it if answers loop.",
    ),
)
KNOB = {knob.name: knob for knob in KNOBS}
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}
_ESCAPE = re.compile(r"\\([nt\\])")
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class SamplingSettings:
    """The sampling parameters of a request; ``seed`` None draws a new seed on the server."""

    temperature: float = KNOB["temperature"].default
    top_p: float = KNOB["top_p"].default
    top_k: int = int(KNOB["top_k"].default)
    min_p: float = KNOB["min_p"].default
    max_tokens: int = int(KNOB["max_tokens"].default)
    repeat_penalty: float = KNOB["repeat_penalty"].default
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for knob in KNOBS:
            value = getattr(self, knob.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SettingsError(f"{knob.label} must be a number.")
            if not (math.isfinite(value) and knob.low <= value <= knob.high):
                raise SettingsError(
                    f"{knob.label} must be between {knob.low:g} and {knob.high:g}; got {value}."
                )
        if self.seed is not None and not 0 <= self.seed <= SEED_MAX:
            raise SettingsError(f"The seed must be between 0 and {SEED_MAX}.")
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise SettingsError(f"At most {MAX_STOP_SEQUENCES} stop sequences are allowed.")

    def request_params(self) -> dict[str, Any]:
        """The keyword arguments for ``InferenceClient.chat_stream``.

        >>> SamplingSettings(max_tokens=3, seed=7, stop=("END",)).request_params()["stop"]
        ['END']
        >>> "seed" in SamplingSettings().request_params()
        False
        """
        params: dict[str, Any] = {knob.name: getattr(self, knob.name) for knob in KNOBS}
        if self.seed is not None:
            params["seed"] = self.seed
        if self.stop:
            params["stop"] = list(self.stop)
        return params


def parse_stop_sequences(text: str) -> tuple[str, ...]:
    r"""Stop sequences from a text box: one per line, where ``\n``, ``\t`` and ``\\`` are escapes.

    >>> parse_stop_sequences("END\n\n###\\n\nC:\\\\x")
    ('END', '###\n', 'C:\\x')
    >>> parse_stop_sequences("a\nb\nc\nd\ne")
    Traceback (most recent call last):
    ...
    tschat.errors.SettingsError: At most 4 stop sequences are allowed; 5 were given.
    """
    sequences = [
        _ESCAPE.sub(lambda match: _ESCAPES[match.group(1)], line)
        for line in text.splitlines()
        if line
    ]
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise SettingsError(
            f"At most {MAX_STOP_SEQUENCES} stop sequences are allowed; {len(sequences)} were given."
        )
    return tuple(sequences)
