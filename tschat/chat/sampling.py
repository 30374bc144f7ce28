"""Sampling settings of the chat: the parameters, their ranges and defaults, and the stop
sequences; what each request sends besides the conversation.

Every parameter, its range and its default come from the request contract
(:mod:`tschat.contract`), the same declarations the handler validates with.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from tschat import contract
from tschat.errors import SettingsError

MAX_STOP_SEQUENCES = contract.MAX_STOP_SEQUENCES


@dataclass(frozen=True)
class Knob:
    """One numeric sampling parameter and its control's range (the server accepts all of it)."""

    name: str
    label: str
    low: float
    high: float
    default: float
    step: float
    help: str
    whole: bool  # takes whole numbers


def _knob(name: str) -> Knob:
    field = contract.FIELD[name]
    control = field.control
    assert control is not None, f"{name} has no control in the contract"
    start = field.default if field.default is not None else control.start
    assert start is not None
    return Knob(
        name, control.label, control.low, control.high, start, control.step, field.doc, field.whole
    )


# The numeric fields the chat shows, in the order it shows them.
KNOBS: tuple[Knob, ...] = tuple(
    _knob(name)
    for name in (
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "max_tokens",
        "repeat_penalty",
        "presence_penalty",
        "frequency_penalty",
    )
)
KNOB = {knob.name: knob for knob in KNOBS}
SEED = _knob("seed")
SEED_MAX = int(SEED.high)
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}
_ESCAPE = re.compile(r"\\([nt\\])")


@dataclass(frozen=True)
class SamplingSettings:
    """The sampling parameters of a request; ``seed`` None draws a new seed on the server."""

    temperature: float = KNOB["temperature"].default
    top_p: float = KNOB["top_p"].default
    top_k: int = int(KNOB["top_k"].default)
    min_p: float = KNOB["min_p"].default
    max_tokens: int = int(KNOB["max_tokens"].default)
    repeat_penalty: float = KNOB["repeat_penalty"].default
    presence_penalty: float = KNOB["presence_penalty"].default
    frequency_penalty: float = KNOB["frequency_penalty"].default
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
        if self.seed is not None and not SEED.low <= self.seed <= SEED_MAX:
            raise SettingsError(f"The seed must be between {SEED.low:g} and {SEED_MAX}.")
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
