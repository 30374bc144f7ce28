"""Read TorchServe's metrics API (Prometheus text, no key needed) into values."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from tschat.api.transport import Transport
from tschat.settings import Settings


@dataclass(frozen=True)
class Sample:
    """One line of the exposition: a metric name, its labels and its value."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    value: float = 0.0

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        """Whether the sample has this name and at least these labels."""
        return self.name == name and all(
            self.labels.get(key) == value for key, value in labels.items()
        )


def parse_prometheus(text: str) -> list[Sample]:
    """Parse Prometheus text exposition with ``prometheus_client``'s parser, line by line, so
    that a malformed line is skipped instead of spoiling the rest; comments are skipped too.

    >>> samples = parse_prometheus('''
    ... # HELP ts_inference_requests_total Total number of inference requests.
    ... # TYPE ts_inference_requests_total counter
    ... ts_inference_requests_total{uuid="a",model_name="smollm2",model_version="default",} 3.0
    ... ts_queue_latency_microseconds{model_name="smollm2",} 1.5e3 1700000000
    ... up 1
    ... odd{name="say \\\\"hi\\\\""} +Inf
    ... ''')
    >>> [s.value for s in samples]
    [3.0, 1500.0, 1.0, inf]
    >>> samples[0].labels["model_name"], samples[3].labels["name"]
    ('smollm2', 'say "hi"')
    """
    samples: list[Sample] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            families = list(text_string_to_metric_families(line + "\n"))
        except ValueError:
            continue
        samples.extend(
            Sample(sample.name, dict(sample.labels), float(sample.value))
            for family in families
            for sample in family.samples
        )
    return samples


def select(samples: Iterable[Sample], name: str, **labels: str) -> list[Sample]:
    """Samples with this name and at least these labels.

    >>> s = parse_prometheus('a{m="x"} 1\\na{m="y"} 2\\nb 3')
    >>> [x.value for x in select(s, "a", m="y")]
    [2.0]
    """
    return [sample for sample in samples if sample.matches(name, labels)]


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """Sum of the matching samples (0.0 when none): counters summed over the other labels.

    >>> total(parse_prometheus('a{m="x"} 1\\na{m="y"} 2'), "a")
    3.0
    """
    return math.fsum(sample.value for sample in select(samples, name, **labels))


def value(
    samples: Iterable[Sample], name: str, default: float | None = None, **labels: str
) -> float | None:
    """The value of the single matching sample, ``default`` when there is none.

    >>> value(parse_prometheus('a{m="x"} 1'), "a", m="x"), value([], "a")
    (1.0, None)
    """
    found = select(samples, name, **labels)
    if not found:
        return default
    if len(found) > 1:
        raise ValueError(
            f"{len(found)} samples named {name!r} match {labels}; add labels or use total()"
        )
    return found[0].value


def fetch_metrics(
    settings: Settings, names: Sequence[str] = (), timeout: float = 10.0
) -> list[Sample]:
    """Fetch and parse ``/metrics`` (the metrics API takes no key), optionally only ``names``."""
    params = {"name[]": list(names)} if names else None
    transport = Transport(settings.metrics_url, timeout=timeout)
    try:
        response = transport.request("GET", "/metrics", params=params)
    finally:
        transport.close()
    response.encoding = "utf-8"
    return parse_prometheus(response.text)
