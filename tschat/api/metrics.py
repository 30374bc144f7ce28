"""Read TorchServe's metrics API (Prometheus text, no key needed) into values."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import requests

from tschat.errors import ServerError, ServerNotRunning, ServerTimeout
from tschat.settings import Settings

_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,?)')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


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
    """Parse Prometheus text exposition; comments, blank lines and malformed lines are skipped.

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
    samples = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        sample = _parse_line(line)
        if sample is not None:
            samples.append(sample)
    return samples


def _parse_line(line: str) -> Sample | None:
    name_match = _NAME.match(line)
    if name_match is None:
        return None
    name = name_match.group(0)
    rest = line[name_match.end() :]
    labels: dict[str, str] = {}
    if rest.startswith("{"):
        position = 1
        while True:
            if rest[position:].lstrip().startswith("}"):
                position = rest.index("}", position) + 1
                break
            label = _LABEL.match(rest, position)
            if label is None:
                return None
            labels[label.group(1)] = re.sub(
                r'\\[\\"n]', lambda m: _ESCAPES[m.group(0)], label.group(2)
            )
            position = label.end()
        rest = rest[position:]
    fields = rest.split()
    if not fields:
        return None
    try:
        value = float(fields[0])  # float() reads "+Inf", "-Inf" and "NaN" too
    except ValueError:
        return None
    return Sample(name, labels, value)


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
    url = f"{settings.metrics_url}/metrics"
    params = {"name[]": list(names)} if names else None
    try:
        response = requests.get(url, params=params, timeout=timeout)
    except requests.Timeout:
        raise ServerTimeout(url, timeout) from None
    except requests.ConnectionError:
        raise ServerNotRunning(settings.metrics_url) from None
    if response.status_code != 200:
        raise ServerError(
            f"The metrics API answered HTTP {response.status_code}.", status=response.status_code
        )
    response.encoding = "utf-8"
    return parse_prometheus(response.text)
