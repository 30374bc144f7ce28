"""The speed of an answer while it streams, and its figures once it ends.

A :class:`SpeedMeter` is fed the time each piece of the answer arrived and how many tokens it
holds (the handler sends one token per piece). Until the first token the model is reading the
prompt; after it, tokens per second are counted from the first token to the latest one, so the
figure changes as tokens arrive and does not sag while the view waits between them. Times are
passed in (seconds from any monotonic clock), so the meter is pure and the tests choose them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from tschat.api.inference import Timings, Usage
from tschat.chat.conversation import AnswerStats

READING: Final = "reading the prompt"
GENERATING: Final = "generating"
Phase = Literal["reading the prompt", "generating"]


@dataclass(frozen=True)
class SpeedReading:
    """What the live line under a streaming answer shows."""

    phase: Phase
    elapsed_s: float
    tokens: int
    ttft_ms: float | None
    tokens_per_second: float | None

    def label(self) -> str:
        """The live line.

        >>> SpeedReading(READING, 1.24, 0, None, None).label()
        'reading the prompt… 1.2 s'
        >>> SpeedReading(GENERATING, 3.0, 42, 212.0, 18.26).label()
        'generating · 42 tokens · 18.3 tokens/s · first token 212 ms'
        >>> SpeedReading(GENERATING, 0.3, 1, 250.0, None).label()
        'generating · 1 token · first token 250 ms'
        """
        if self.phase == READING:
            return f"{READING}… {self.elapsed_s:.1f} s"
        parts = [GENERATING, f"{self.tokens} token{'' if self.tokens == 1 else 's'}"]
        if self.tokens_per_second is not None:
            parts.append(f"{self.tokens_per_second:.1f} tokens/s")
        if self.ttft_ms is not None:
            parts.append(f"first token {self.ttft_ms:.0f} ms")
        return " · ".join(parts)


class SpeedMeter:
    """Tokens per second of one answer, from the arrival time of each piece.

    >>> meter = SpeedMeter(started_at=10.0)
    >>> meter.reading(now=10.5).phase
    'reading the prompt'
    >>> meter.add(at=10.75)           # the first token, 750 ms after the request
    >>> for n in range(1, 11):
    ...     meter.add(at=10.75 + n * 0.0625)
    >>> reading = meter.reading(now=11.5)
    >>> reading.phase, reading.tokens, reading.tokens_per_second, reading.ttft_ms
    ('generating', 11, 16.0, 750.0)
    """

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.tokens = 0
        self.first_at: float | None = None
        self.first_tokens = 0
        self.last_at = started_at

    def add(self, at: float, tokens: int = 1) -> None:
        """A piece holding ``tokens`` tokens arrived at ``at`` (a piece without any is ignored)."""
        if tokens < 0:
            raise ValueError("a piece cannot hold a negative number of tokens")
        if tokens == 0:
            return
        at = max(at, self.last_at)  # a clock never runs backwards here
        if self.first_at is None:
            self.first_at = at
            self.first_tokens = tokens
        self.tokens += tokens
        self.last_at = at

    @property
    def ttft_ms(self) -> float | None:
        """Milliseconds from the request to the first token."""
        return None if self.first_at is None else (self.first_at - self.started_at) * 1000

    @property
    def tokens_per_second(self) -> float | None:
        """Tokens after the first one, per second since the first one (None: too early)."""
        if self.first_at is None or self.last_at <= self.first_at:
            return None
        return (self.tokens - self.first_tokens) / (self.last_at - self.first_at)

    def reading(self, now: float) -> SpeedReading:
        """What to show at ``now``."""
        phase: Phase = READING if self.first_at is None else GENERATING
        return SpeedReading(
            phase=phase,
            elapsed_s=max(0.0, now - self.started_at),
            tokens=self.tokens,
            ttft_ms=self.ttft_ms,
            tokens_per_second=self.tokens_per_second,
        )

    def stats(
        self,
        *,
        finish_reason: str | None = None,
        model: str | None = None,
        usage: Usage | None = None,
        timings: Timings | None = None,
    ) -> AnswerStats:
        """The figures kept under the answer: the server's when it sent them, else counted here.

        >>> meter = SpeedMeter(0.0)
        >>> meter.add(0.2); meter.add(0.3); meter.add(0.4)
        >>> meter.stats(finish_reason="stopped").summary()
        'first token 200 ms · ≈3 tokens · ≈10.0 tokens/s · finish: stopped'
        >>> meter.stats(usage=Usage(9, 3, 12), timings=Timings(150.0, 12.5)).summary()
        'first token 150 ms · 3 tokens · 12.5 tokens/s'
        """
        server_ttft = timings.ttft_ms if timings is not None else None
        server_speed = timings.tokens_per_second if timings is not None else None
        return AnswerStats(
            ttft_ms=server_ttft if server_ttft is not None else self.ttft_ms,
            completion_tokens=usage.completion_tokens if usage is not None else self.tokens,
            prompt_tokens=usage.prompt_tokens if usage is not None else None,
            tokens_per_second=server_speed if server_speed is not None else self.tokens_per_second,
            finish_reason=finish_reason,
            model=model,
            estimated=usage is None,
        )
