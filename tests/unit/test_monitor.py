"""Metrics history, worker rows and log filtering for the console's live view."""

from __future__ import annotations

import doctest
import os
from datetime import datetime, timedelta

import tschat.ops.monitor
from apps.tables import worker_rows
from tschat.api.management import ModelStatus
from tschat.api.metrics import parse_prometheus
from tschat.ops.monitor import MetricsHistory, MetricsSnapshot, filter_lines

T0 = datetime(2025, 1, 1, 12, 0, 0)


def snapshot(
    seconds: float, requests: float, tokens: float, ttft: float | None = 100.0
) -> MetricsSnapshot:
    return MetricsSnapshot(
        at=T0 + timedelta(seconds=seconds),
        requests=requests,
        queue_us=requests * 1000.0,
        inference_us=requests * 500_000.0,
        generated_tokens=tokens,
        prompt_tokens=tokens,
        ttft_ms=ttft,
        tokens_per_s=20.0,
        prediction_ms=450.0,
    )


def test_doctests() -> None:
    result = doctest.testmod(tschat.ops.monitor)
    assert result.attempted > 0 and result.failed == 0


def test_rates_use_a_window_and_latency_is_per_request() -> None:
    history = MetricsHistory()
    for seconds, requests, tokens in [(0, 0, 0), (5, 2, 40), (10, 2, 40), (20, 2, 40)]:
        history.add(snapshot(seconds, requests, tokens))
    rows = history.rows(window_s=10)
    assert [row["requests/s"] for row in rows] == [0.4, 0.2, 0.0]
    assert rows[0]["queue ms"] == 1.0 and rows[0]["total ms"] == 500.0
    assert rows[2]["queue ms"] is None  # no request in that window
    assert [row["time to first token ms"] is None for row in rows] == [False, True, True]


def test_a_restart_is_not_a_negative_rate() -> None:
    history = MetricsHistory()
    for seconds, requests in [(0, 50), (2, 52), (4, 1), (6, 3)]:
        history.add(snapshot(seconds, requests, requests * 10))
    rows = history.rows(window_s=60)
    assert [row["time"] for row in rows] == [T0 + timedelta(seconds=2), T0 + timedelta(seconds=6)]
    assert rows[1]["requests/s"] == 1.0  # from the restart on, not across it


def test_history_is_bounded_and_ignores_old_snapshots() -> None:
    history = MetricsHistory(max_points=3)
    for seconds in range(10):
        history.add(snapshot(seconds, seconds, seconds))
    history.add(snapshot(1, 1, 1))
    assert len(history) == 3 and history.latest() == snapshot(9, 9, 9)
    history.clear()
    assert history.rows() == [] and history.latest() is None


def test_snapshot_reads_the_handler_and_frontend_metrics() -> None:
    samples = parse_prometheus(
        """
ts_inference_requests_total{model_name="a",model_version="1.0",hostname="h",} 4.0
ts_queue_latency_microseconds{model_name="a",model_version="1.0",hostname="h",} 8000.0
ts_inference_latency_microseconds{model_name="a",model_version="1.0",hostname="h",} 4e6
GeneratedTokens{ModelName="a",Hostname="h",} 80.0
TokensPerSecond{ModelName="a",Hostname="h",} 21.5
TokensPerSecond{ModelName="b",Hostname="h",} 30.0
PredictionTime{ModelName="a",Level="Model",Hostname="h",} 812.0
"""
    )
    one = MetricsSnapshot.from_samples(samples, T0, "a")
    assert (one.requests, one.queue_us, one.generated_tokens) == (4.0, 8000.0, 80.0)
    assert (one.tokens_per_s, one.prediction_ms, one.ttft_ms) == (21.5, 812.0, None)
    assert MetricsSnapshot.from_samples(samples, T0).tokens_per_s == 30.0


def test_worker_rows_fall_back_to_the_os_for_memory() -> None:
    status = ModelStatus.from_json(
        {
            "modelName": "m",
            "workers": [
                {"id": "9000", "status": "READY", "pid": os.getpid(), "memoryUsage": 0},
                {"id": "9001", "status": "UNLOADING", "pid": -1, "gpu": True},
            ],
        }
    )
    ready, gone = worker_rows(status)
    assert (ready["id"], ready["status"], ready["PID"], ready["GPU"]) == (
        "9000",
        "READY",
        os.getpid(),
        "no",
    )
    assert ready["memory (MiB)"] > 1
    assert (gone["PID"], gone["memory (MiB)"], gone["GPU"]) == (None, None, "yes")


def test_filter_lines_is_case_insensitive_and_keeps_the_newest() -> None:
    log = "\n".join(f"line {i} {'ERROR' if i % 2 else 'info'}" for i in range(10))
    assert filter_lines(log, "error", last=2) == "line 7 ERROR\nline 9 ERROR"
    assert filter_lines(log, "  ", last=0) == ""
    assert filter_lines(log, "nothing") == ""


def test_worker_restarts_are_read_from_the_server_log() -> None:
    retry = (
        "2026-01-01T10:0{n}:00,100 [INFO ] W-900{w}-{model}_1.0 org.pytorch.serve.wlm."
        "WorkerThread - Retry worker: 900{w} in 1 seconds."
    )
    log = "\n".join(
        [
            retry.format(n=1, w=0, model="old"),  # before the server last started
            "2026-01-01T10:02:00,000 [INFO ] main org.pytorch.serve.ModelServer - ",
            "Torchserve version: 0.12.0",
            retry.format(n=3, w=0, model="smollm2"),
            retry.format(n=3, w=0, model="smollm2"),  # the same line twice
            "2026-01-01T10:03:00,200 [DEBUG] W-9000-smollm2_1.0 org.pytorch.serve.wlm."
            "WorkerThread - W-9000-smollm2_1.0 State change WORKER_STOPPED -> WORKER_STARTED",
            retry.format(n=4, w=1, model="my_model"),
        ]
    )
    restarts = tschat.ops.monitor.worker_restarts(log)
    assert [(r.model, r.worker, r.at[11:16]) for r in restarts] == [
        ("smollm2", "9000", "10:03"),
        ("my_model", "9001", "10:04"),
    ]
