"""Prometheus text from TorchServe's metrics API, parsed into values."""

from __future__ import annotations

import math
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING

import pytest

from tschat.api.metrics import Sample, fetch_metrics, parse_prometheus, select, total, value
from tschat.errors import ServerNotRunning
from tschat.settings import Settings

if TYPE_CHECKING:
    from conftest import Helpers, LocalServer

# Captured from TorchServe 0.12 with metrics_mode=prometheus (hostname shortened).
TORCHSERVE_TEXT = """\
# HELP Requests4XX Torchserve prometheus counter metric with unit: Count
# TYPE Requests4XX counter
Requests4XX{Level="Host",Hostname="vm",} 7.0
# HELP MemoryUsed Torchserve prometheus gauge metric with unit: Megabytes
# TYPE MemoryUsed gauge
MemoryUsed{Level="Host",Hostname="vm",} 1240.90625
# HELP ts_inference_latency_microseconds Torchserve prometheus counter metric
# TYPE ts_inference_latency_microseconds counter
ts_inference_latency_microseconds{model_name="smollm2",model_version="1.0",} 15884448.931000002
# TYPE ts_inference_requests_total counter
ts_inference_requests_total{model_name="smollm2",model_version="1.0",hostname="vm",} 8.0
ts_inference_requests_total{model_name="other",model_version="1.0",hostname="vm",} 2.0
# HELP HandlerTime Torchserve prometheus gauge metric with unit: ms
# TYPE HandlerTime gauge
"""


def test_parses_torchserve_output() -> None:
    samples = parse_prometheus(TORCHSERVE_TEXT)
    assert [sample.name for sample in samples] == [
        "Requests4XX",
        "MemoryUsed",
        "ts_inference_latency_microseconds",
        "ts_inference_requests_total",
        "ts_inference_requests_total",
    ]
    assert samples[0] == Sample("Requests4XX", {"Level": "Host", "Hostname": "vm"}, 7.0)
    assert samples[2].value == pytest.approx(15884448.931)


def test_pick_by_name_and_labels() -> None:
    samples = parse_prometheus(TORCHSERVE_TEXT)
    assert value(samples, "ts_inference_requests_total", model_name="smollm2") == 8.0
    assert total(samples, "ts_inference_requests_total") == 10.0
    assert [s.labels["model_name"] for s in select(samples, "ts_inference_requests_total")] == [
        "smollm2",
        "other",
    ]
    assert value(samples, "absent") is None
    assert value(samples, "absent", default=0.0) == 0.0
    assert total(samples, "absent") == 0.0
    with pytest.raises(ValueError, match="2 samples"):
        value(samples, "ts_inference_requests_total")


def test_special_values_escapes_and_timestamps() -> None:
    text = "\n".join(
        [
            'a{le="+Inf"} +Inf',
            "b -Inf",
            "c NaN",
            'd{path="C:\\\\x",quote="say \\"hi\\"",nl="1\\n2"} 1 1700000000000',
            "e{} 2.5e-3",
            'f{ spaced = "yes" , } 4',
        ]
    )
    samples = {sample.name: sample for sample in parse_prometheus(text)}
    assert samples["a"].value == math.inf and samples["a"].labels == {"le": "+Inf"}
    assert samples["b"].value == -math.inf
    assert math.isnan(samples["c"].value)
    assert samples["d"].labels == {"path": "C:\\x", "quote": 'say "hi"', "nl": "1\n2"}
    assert samples["d"].value == 1.0
    assert samples["e"].value == 0.0025 and samples["e"].labels == {}
    assert samples["f"].labels == {"spaced": "yes"}


@pytest.mark.parametrize(
    "line",
    ["", "   ", "# a comment", "no_value", 'x{a="1"', "x{a=1} 2", "x notanumber", "9x 1"],
)
def test_malformed_lines_are_skipped(line: str) -> None:
    assert parse_prometheus(line + "\nok 1\n") == [Sample("ok", {}, 1.0)]


class _Metrics(BaseHTTPRequestHandler):
    requests: list[tuple[str, str | None]] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).requests.append((self.path, self.headers.get("Authorization")))
        body = TORCHSERVE_TEXT.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_fetch_metrics_sends_no_key_and_asks_for_names(
    http_server: Callable[..., LocalServer], helpers: Helpers
) -> None:
    server = http_server(_Metrics)
    _Metrics.requests = []
    settings = Settings(metrics_port=server.port, inference_port=helpers.free_port())
    samples = fetch_metrics(settings, names=["ts_inference_requests_total", "MemoryUsed"])
    assert total(samples, "ts_inference_requests_total") == 10.0
    path, authorization = _Metrics.requests[0]
    assert authorization is None
    assert path == "/metrics?name%5B%5D=ts_inference_requests_total&name%5B%5D=MemoryUsed"


def test_fetch_metrics_from_a_stopped_server(helpers: Helpers) -> None:
    settings = Settings(metrics_port=helpers.free_port())
    with pytest.raises(ServerNotRunning, match="make run"):
        fetch_metrics(settings)
