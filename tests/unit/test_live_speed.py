"""Live speed of a streaming answer: its phase, tokens/s as tokens arrive, the final figures."""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tschat.chat.speed
from tschat.api.inference import Timings, Usage
from tschat.chat.speed import GENERATING, READING, SpeedMeter


def test_doctests() -> None:
    assert doctest.testmod(tschat.chat.speed).failed == 0


def test_reading_the_prompt_until_the_first_token() -> None:
    meter = SpeedMeter(started_at=100.0)
    for now in (100.0, 100.5, 103.25):
        reading = meter.reading(now)
        assert reading.phase == READING
        assert reading.tokens == 0 and reading.ttft_ms is None
        assert reading.tokens_per_second is None
    assert meter.reading(103.25).label() == "reading the prompt… 3.2 s"
    meter.add(at=100.0, tokens=0)  # an empty piece (e.g. the role chunk) is not a token
    assert meter.reading(104.0).phase == READING


def test_speed_updates_as_tokens_arrive() -> None:
    meter = SpeedMeter(started_at=0.0)
    meter.add(at=0.5)
    first = meter.reading(now=0.6)
    assert (first.phase, first.tokens, first.ttft_ms, first.tokens_per_second) == (
        GENERATING,
        1,
        500.0,
        None,
    )
    speeds = []
    for n in range(1, 21):
        # 10 tokens/s for the first 10 tokens, then 40 tokens/s.
        at = 0.5 + n * 0.1 if n <= 10 else 1.5 + (n - 10) * 0.025
        meter.add(at=at)
        speeds.append(meter.reading(now=at).tokens_per_second)
    assert speeds[9] == pytest.approx(10.0)
    assert speeds[19] == pytest.approx(20 / 1.25)
    assert speeds[10:] == sorted(speeds[10:])  # rising while tokens come faster
    # Between tokens the figure holds still instead of sagging.
    assert meter.reading(now=5.0).tokens_per_second == speeds[-1]
    assert meter.reading(now=5.0).elapsed_s == 5.0


def test_a_piece_may_hold_several_tokens() -> None:
    meter = SpeedMeter(started_at=0.0)
    meter.add(at=1.0, tokens=3)
    meter.add(at=2.0, tokens=10)
    assert meter.tokens == 13
    assert meter.tokens_per_second == 10.0  # tokens after the first piece, per second since it


def test_times_never_run_backwards_and_negative_counts_are_refused() -> None:
    meter = SpeedMeter(started_at=10.0)
    meter.add(at=9.0)  # before the request: counted as arriving at once
    assert meter.ttft_ms == 0.0
    meter.add(at=11.0)
    meter.add(at=10.5)
    assert meter.last_at == 11.0
    with pytest.raises(ValueError, match="negative"):
        meter.add(at=12.0, tokens=-1)


def test_final_figures_counted_here_are_marked_estimated() -> None:
    meter = SpeedMeter(started_at=0.0)
    meter.add(at=0.25)
    meter.add(at=0.75)
    stats = meter.stats(finish_reason="stopped", model="m")
    assert (stats.ttft_ms, stats.completion_tokens, stats.tokens_per_second) == (250.0, 2, 2.0)
    assert stats.estimated and stats.model == "m" and stats.prompt_tokens is None


def test_final_figures_prefer_the_servers() -> None:
    meter = SpeedMeter(started_at=0.0)
    meter.add(at=0.25)
    meter.add(at=0.75)
    stats = meter.stats(
        finish_reason="stop",
        usage=Usage(30, 5, 35),
        timings=Timings(ttft_ms=200.0, tokens_per_second=None),
    )
    assert (stats.ttft_ms, stats.completion_tokens, stats.prompt_tokens) == (200.0, 5, 30)
    assert stats.tokens_per_second == 2.0  # the server sent no speed: the measured one
    assert not stats.estimated


def test_an_answer_without_tokens_has_no_speed() -> None:
    stats = SpeedMeter(started_at=0.0).stats(finish_reason="error")
    assert (stats.ttft_ms, stats.completion_tokens, stats.tokens_per_second) == (None, 0, None)


@given(gaps=st.lists(st.floats(0, 5), min_size=1, max_size=50), start=st.floats(0, 1e6))
def test_figures_are_never_negative(gaps: list[float], start: float) -> None:
    meter = SpeedMeter(started_at=start)
    at = start
    for gap in gaps:
        at += gap
        meter.add(at=at)
    reading = meter.reading(now=at)
    assert reading.tokens == len(gaps)
    assert reading.ttft_ms is not None and reading.ttft_ms >= 0
    assert reading.tokens_per_second is None or reading.tokens_per_second >= 0
