"""The load generator's figures, its guard rails, and a run against a local fake server."""

from __future__ import annotations

import doctest
import json
import math
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks import report
from benchmarks.report import INPROC_BATCH, INPROC_SINGLE, evaluate_targets
from tschat.api.keys import KeyStore
from tschat.bench import experiments, loadgen
from tschat.bench.experiments import Row
from tschat.bench.loadgen import (
    LoadSpec,
    RequestRecord,
    Summary,
    check_loopback,
    inter_token_gaps,
    make_prompt,
    percentile,
    run_load,
    summarize,
    tokens_per_second,
)

if TYPE_CHECKING:
    from conftest import LocalServer


def test_doctests() -> None:
    assert doctest.testmod(loadgen).failed == 0
    assert doctest.testmod(report).failed == 0
    assert doctest.testmod(experiments).failed == 0


# ---------------------------------------------------------------- percentiles and rates


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([5.0], 50, 5.0),
        ([1, 2, 3, 4, 5], 50, 3.0),
        ([1, 2, 3, 4], 50, 2.5),
        ([1, 2, 3, 4, 5], 95, 4.8),
        ([3, 1, 2], 0, 1.0),
        ([3, 1, 2], 100, 3.0),
        (list(range(1, 101)), 95, 95.05),
    ],
)
def test_percentile_interpolates_between_ranks(values: list[float], q: float, expected: float):
    result = percentile(values, q)
    assert result is not None
    assert math.isclose(result, expected)


def test_percentile_of_nothing_and_bad_q() -> None:
    assert percentile([], 95) is None
    with pytest.raises(ValueError, match="between 0 and 100"):
        percentile([1.0], 101)


@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=50),
    st.floats(0, 100),
    st.floats(0, 100),
)
def test_percentile_is_monotonic_and_bounded(values: list[float], q1: float, q2: float) -> None:
    low, high = sorted((q1, q2))
    p_low, p_high = percentile(values, low), percentile(values, high)
    assert p_low is not None and p_high is not None
    tolerance = 1e-9 * max(1.0, max(abs(v) for v in values))
    assert min(values) - tolerance <= p_low <= p_high + tolerance
    assert p_high <= max(values) + tolerance


def test_rates_and_gaps() -> None:
    assert tokens_per_second(64, 0.5) == 128.0
    assert tokens_per_second(64, 0.0) is None
    assert inter_token_gaps([]) == []
    assert inter_token_gaps([0.1, 0.3, 0.35]) == pytest.approx([0.2, 0.05])


def record(
    client: int,
    start: float,
    times: list[float],
    tokens: int | None = None,
    end: float | None = None,
    error: str | None = None,
) -> RequestRecord:
    return RequestRecord(
        client,
        start,
        end if end is not None else (times[-1] if times else start),
        tuple(times),
        len(times) if tokens is None else tokens,
        error,
    )


def test_record_properties() -> None:
    r = record(0, 1.0, [1.1, 1.2, 1.4, 1.5], tokens=5)
    assert r.ok
    assert r.ttft_s == pytest.approx(0.1)
    assert r.gaps_s == pytest.approx([0.1, 0.2, 0.1])
    # 4 tokens after the first, over the 0.4 s between the first and the last arrival.
    assert r.stream_tokens_per_s == pytest.approx(10.0)
    assert record(0, 0.0, []).ttft_s is None
    assert record(0, 0.0, [0.5]).stream_tokens_per_s is None


def test_summarize_two_concurrent_streams_and_a_failure() -> None:
    records = [
        record(0, 0.0, [0.10, 0.20, 0.30, 0.40]),
        record(1, 0.0, [0.30, 0.40, 0.50, 0.60]),
        record(2, 0.5, [0.7], end=1.0, error="ServerError: cut off"),
    ]
    s = summarize(records)
    assert (s.requests, s.failures) == (3, 1)
    assert s.tokens == 9  # the failed request's partial answer counts as throughput
    assert s.wall_s == pytest.approx(1.0)
    assert s.tokens_per_s == pytest.approx(9.0)
    # Latencies come from the successful requests only.
    assert s.ttft_p50_ms == pytest.approx(200.0)
    assert s.ttft_p95_ms == pytest.approx(290.0)
    assert s.itl_p50_ms == pytest.approx(100.0)
    assert s.itl_p95_ms == pytest.approx(100.0)
    assert s.errors == ("ServerError: cut off",)


def test_summarize_nothing_and_only_failures() -> None:
    empty = summarize([])
    assert (empty.requests, empty.tokens, empty.tokens_per_s) == (0, 0, None)
    failed = summarize([record(0, 0.0, [], end=2.0, error="X: a")] * 3)
    assert (failed.requests, failed.failures, failed.ttft_p50_ms) == (3, 3, None)
    assert failed.errors == ("X: a",)  # distinct messages only


def test_make_prompt_and_loopback_guard() -> None:
    assert len(make_prompt(250).split()) == 250
    assert make_prompt(5) == loadgen.DEFAULT_INSTRUCTION  # never shorter than the instruction
    for url in ("http://127.0.0.1:8080", "http://127.0.0.5:1", "http://[::1]:8080"):
        assert check_loopback(url) == url
    for url in ("http://10.0.0.1:8080", "http://localhost:8080", "https://example.com"):
        with pytest.raises(ValueError, match="loopback"):
            check_loopback(url)


def test_load_spec_bounds() -> None:
    with pytest.raises(ValueError):
        LoadSpec(clients=0, requests=1)
    with pytest.raises(ValueError):
        LoadSpec(clients=1, requests=1, duration_s=0)
    with pytest.raises(ValueError):
        LoadSpec(clients=1, requests=1, max_tokens=0)


# ---------------------------------------------------------------- targets


def summary(tps: float, ttft: float = 100.0, p95: float | None = None) -> Summary:
    return Summary(8, 0, 512, 512 / tps, tps, ttft, p95 or ttft, 10.0, 12.0, 50.0)


def row(config: str, clients: int, tps: float, **kw: Any) -> Row:
    stagger = kw.pop("stagger", 0.0)
    rss = kw.pop("rss", ())
    pss = kw.pop("pss", ())
    return Row(config, config, clients, stagger, 8, 50, 1, 2, False, summary(tps, **kw), rss, pss)


def test_targets_are_ratios_within_the_run() -> None:
    rows = [
        row(INPROC_SINGLE, 1, 100.0, ttft=40.0),
        row(INPROC_BATCH, 8, 400.0),
        row("b1w1", 1, 95.0, ttft=60.0, rss=(400.0,), pss=(300.0,)),
        row("b1w1", 8, 96.0, rss=(410.0,), pss=(310.0,)),
        row("b1w2", 1, 90.0, rss=(400.0, 400.0), pss=(250.0, 250.0)),
        row("b8", 1, 90.0),
        row("b8", 8, 300.0),
        row("cont8", 1, 95.0),
        row("cont8", 8, 360.0),
        row("cont8", 8, 200.0, ttft=500.0, p95=1600.0, stagger=0.25),
    ]
    targets = {
        t.name: t
        for t in evaluate_targets(
            rows, single="b1w1", two_workers="b1w2", batched=["b8", "cont8"], continuous="cont8"
        )
    }
    single = targets["served single stream tokens/s vs in-process"]
    assert single.value == pytest.approx(0.95) and single.passed
    ttft = targets["served TTFT p50 above in-process, 1 client"]
    assert ttft.value == pytest.approx(20.0) and ttft.passed
    assert targets["b8: 8 clients vs 1 client tokens/s"].value == pytest.approx(300 / 90)
    assert targets["cont8: 8 clients vs 1 client tokens/s"].passed
    assert not targets["b8: 8 clients vs raw batched decode of 8"].passed  # 0.75
    assert targets["cont8: 8 clients vs raw batched decode of 8"].passed  # 0.90
    stagger = targets["cont8: TTFT p95, 8 clients arriving 0.25 s apart"]
    assert stagger.value == pytest.approx(1.6) and not stagger.passed
    # Peak of the 1-worker config (410) against the 2 workers' total (800).
    rss = targets["total RSS of 2 workers vs 1 worker"]
    assert rss.value == pytest.approx(800 / 410) and not rss.passed
    assert targets["total PSS of 2 workers vs 1 worker"].value == pytest.approx(500 / 310)


def test_targets_skip_what_was_not_measured() -> None:
    rows = [row("b8", 8, 300.0)]
    assert evaluate_targets(rows, single="", two_workers="", batched=["b8"], continuous=None) == []


def test_limits_measured_twice_are_averaged() -> None:
    before = row(INPROC_SINGLE, 1, 100.0, ttft=40.0)
    after = row(INPROC_SINGLE, 1, 120.0, ttft=60.0)
    mean = report.mean_row(before, after)
    assert mean.config == INPROC_SINGLE
    assert mean.summary.tokens_per_s == pytest.approx(110.0)
    assert mean.summary.ttft_p50_ms == pytest.approx(50.0)
    assert mean.summary.requests == 16 and mean.summary.tokens == 1024
    assert "100.0/120.0 tok/s" in mean.label


def test_csv_and_markdown(tmp_path: Any) -> None:
    rows = [row("b8", 8, 300.0, rss=(700.0,), pss=(500.0,))]
    path = report.write_csv(rows, tmp_path / "out.csv")
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == experiments.CSV_FIELDS
    assert "700.0" in lines[1]
    text = report.markdown_report(rows, [], "a machine", "python -m benchmarks.run")
    assert "| b8 | 8 | 300.0 |" in text and "a machine" in text


# ---------------------------------------------------------------- against a fake server


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data)
    return f"data: {payload}\n\n".encode()


class FakeChat(BaseHTTPRequestHandler):
    """Streams three tokens 20 ms apart; the user message "fail" gets a 500."""

    protocol_version = "HTTP/1.1"
    lock = threading.Lock()
    active: ClassVar[int] = 0
    most_active: ClassVar[int] = 0
    auth: ClassVar[list[str | None]] = []
    paths: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        with cls.lock:
            cls.auth.append(self.headers.get("Authorization"))
            cls.paths.append(self.path)
            cls.active += 1
            cls.most_active = max(cls.most_active, cls.active)
        try:
            if body["messages"][-1]["content"] == "fail":
                data = b'{"code": 500, "type": "InternalServerException", "message": "boom"}'
                self.send_response(500)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(sse({"choices": [{"delta": {"role": "assistant"}}]}))
            for word in ("a", "b", "c"):
                time.sleep(0.02)
                self._chunk(sse({"choices": [{"delta": {"content": word}}]}))
            final = {
                "choices": [{"delta": {}, "finish_reason": "length"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
            }
            self._chunk(sse(final) + sse("[DONE]"))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        finally:
            with cls.lock:
                cls.active -= 1


@pytest.fixture
def fake_chat(http_server: Callable[[type[BaseHTTPRequestHandler]], LocalServer]) -> LocalServer:
    FakeChat.active = FakeChat.most_active = 0
    FakeChat.auth, FakeChat.paths = [], []
    return http_server(FakeChat)


def test_run_load_records_every_request(fake_chat: LocalServer) -> None:
    keys = KeyStore.explicit(inference="secret")
    seen: list[RequestRecord] = []
    spec = LoadSpec(clients=3, requests=7, max_tokens=3)
    result = run_load(fake_chat.url, keys, "m", spec, on_record=seen.append)
    s = result.summary
    assert (s.requests, s.failures, s.tokens) == (7, 0, 21)
    assert len(seen) == 7
    assert FakeChat.most_active == 3  # three clients in flight at once, never more
    assert set(FakeChat.paths) == {"/predictions/m/1.0/v1/chat/completions"}
    assert set(FakeChat.auth) == {"Bearer secret"}
    for r in result.records:
        assert r.ttft_s is not None and 0.015 < r.ttft_s < 1.0
        assert len(r.gaps_s) == 2 and all(0.01 < g < 1.0 for g in r.gaps_s)
    assert s.itl_p50_ms is not None and 15 < s.itl_p50_ms < 200


def test_run_load_counts_failures(fake_chat: LocalServer) -> None:
    keys = KeyStore.explicit(inference="secret")
    spec = LoadSpec(clients=2, requests=4, prompt="fail")
    s = run_load(fake_chat.url, keys, "m", spec).summary
    assert (s.requests, s.failures, s.tokens, s.ttft_p50_ms) == (4, 4, 0, None)
    assert "ServerError" in s.errors[0]


def test_run_load_staggers_arrivals(fake_chat: LocalServer) -> None:
    keys = KeyStore.explicit(inference="secret")
    result = run_load(fake_chat.url, keys, "m", LoadSpec(clients=3, requests=3, stagger_s=0.2))
    starts = sorted(r.started for r in result.records)
    assert starts[1] - starts[0] == pytest.approx(0.2, abs=0.05)
    assert starts[2] - starts[0] == pytest.approx(0.4, abs=0.05)


def test_run_load_stops_at_its_time_budget(fake_chat: LocalServer) -> None:
    keys = KeyStore.explicit(inference="secret")
    begun = time.perf_counter()
    result = run_load(
        fake_chat.url, keys, "m", LoadSpec(clients=1, requests=10_000, duration_s=0.3)
    )
    assert time.perf_counter() - begun < 2.0
    assert 1 <= result.summary.requests < 10_000


def test_run_load_refuses_other_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        run_load("http://192.0.2.1:8080", KeyStore.explicit(inference="k"), "m", LoadSpec(1, 1))


def test_run_load_stops_sending_when_cancelled(fake_chat: LocalServer) -> None:
    keys = KeyStore.explicit(inference="secret")
    cancel = threading.Event()

    def after_first(record: RequestRecord) -> None:
        cancel.set()

    spec = LoadSpec(clients=2, requests=40, stagger_s=5.0)
    begun = time.perf_counter()
    result = run_load(fake_chat.url, keys, "m", spec, on_record=after_first, cancel=cancel)
    assert time.perf_counter() - begun < 2.0  # the second client's 5 s wait was cut short
    assert result.summary.requests == 1 and result.summary.failures == 0
