"""What the worker writes to the frontend on every call: TorchServe's two lines, thinned.

TorchServe's worker logs "Backend received inference at" when a call arrives and, after it,
writes the call's PredictionTime metric through ``context.metrics.add_time``. The loaded handler
has the worker read its calls with ``worker_wire``, which does not log (test_worker_wire.py; a
real worker's log is checked in tests/integration/test_lifecycle.py), and writes the metric as a
mean per second, and when the worker falls idle.
"""

from __future__ import annotations

import logging
import os

import llama_cpp_handler
import pytest
from worker_harness import Harness

METRIC_LOGGER = "ts.metrics.caching_metric"


def metric_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if f"[METRICS]{name}." in r.getMessage()]


def test_prediction_time_is_a_mean_per_second_and_written_when_idle(
    continuous: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = continuous.context.metrics
    assert isinstance(metrics.add_time, llama_cpp_handler._MeanPredictionTime)
    busy = [True]
    thinned = llama_cpp_handler._MeanPredictionTime(
        metrics.add_time.add_time, idle=lambda: not busy[0], every_s=3600.0
    )
    monkeypatch.setattr(metrics, "add_time", thinned)
    monkeypatch.setattr(metrics, "request_ids", {0: "request-1"})  # as Service.predict sets it
    with caplog.at_level(logging.INFO, logger=METRIC_LOGGER):
        for ms in (10.0, 12.0, 14.0):  # three decode steps while requests run
            metrics.add_time("PredictionTime", ms)
        assert metric_lines(caplog, "PredictionTime") == []
        metrics.add_time("QueueTime", 3.0)  # any other timed metric goes out as it comes
        assert len(metric_lines(caplog, "QueueTime")) == 1
        busy[0] = False
        metrics.add_time("PredictionTime", 24.0)  # the last call: the worker is idle after it
        (line,) = metric_lines(caplog, "PredictionTime")
        assert "PredictionTime.Milliseconds:15.0|" in line  # (10 + 12 + 14 + 24) / 4
        metrics.add_time("PredictionTime", 8.0)  # a call alone, idle again: its own value
        assert "PredictionTime.Milliseconds:8.0|" in metric_lines(caplog, "PredictionTime")[-1]


def test_prediction_time_goes_out_each_second_while_busy(
    continuous: Harness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = continuous.context.metrics
    add_time = metrics.add_time.add_time
    now = [1000.0]
    monkeypatch.setattr(llama_cpp_handler.time, "monotonic", lambda: now[0])
    thinned = llama_cpp_handler._MeanPredictionTime(add_time, idle=lambda: False, every_s=1.0)
    monkeypatch.setattr(metrics, "add_time", thinned)
    monkeypatch.setattr(metrics, "request_ids", {0: "request-1"})  # as Service.predict sets it
    with caplog.at_level(logging.INFO, logger=METRIC_LOGGER):
        for _ in range(250):  # 250 steps of 10 ms: 2.5 s
            now[0] += 0.010
            metrics.add_time("PredictionTime", 10.0)
    assert len(metric_lines(caplog, "PredictionTime")) == 2


def test_step_profile_names_the_worker_engine_for_the_console(
    continuous: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Each step profile repeats the ready line's payload: hours of busy serving push the ready
    line out of the log tail the console reads, and the console still names each worker's engine."""
    from tschat.ops import monitor

    question = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    with caplog.at_level(logging.INFO, logger=llama_cpp_handler.logger.name):
        # Idle once it ends: a profile goes out.
        continuous.run_continuous({0: [("v1/chat/completions", question)]})
    lines = [f"MODEL_LOG - {r.getMessage()}" for r in caplog.records]
    profiles = [line for line in lines if monitor.PROFILE_MARK in line]
    assert profiles and not any(monitor.WORKER_INFO_MARK in line for line in lines)
    engines = monitor.worker_engines("\n".join(profiles))
    assert engines == {os.getpid(): {**continuous.handler.info, "pid": os.getpid()}}
    assert engines[os.getpid()]["backend"] == "cpu"
    profile = monitor.worker_profile("\n".join(profiles))
    assert profile is not None and profile["calls"] >= 1 and "worker" not in profile
