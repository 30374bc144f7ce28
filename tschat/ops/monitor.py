"""What the server is doing, over time: metrics samples, worker rows and filtered logs.

:func:`live_snapshot` reads everything the console's live view shows in one go. None of its
reads reaches a worker: the OS, TorchServe's frontend (``/ping``, the management API's list and
describe, the metrics API) and the tails of two log files (``benchmarks/console_cost.py``
measures each).

TorchServe's metrics API gives counters (requests, summed queue and inference latency,
generated tokens) and gauges (the last value: time to first token, tokens per second of a
request, prediction time). :class:`MetricsHistory` keeps a snapshot per poll and turns pairs of
snapshots into rates, one row per interval, ready for ``pandas.DataFrame(history.rows())``.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import psutil

from tschat.api.management import ManagementClient, ModelStatus, WorkerStatus
from tschat.api.metrics import Sample, fetch_metrics, select, total
from tschat.contract import PROFILE_MARK, WORKER_INFO_MARK
from tschat.errors import ModelNotFound, TsChatError
from tschat.ops import process
from tschat.settings import Settings

REQUESTS = "ts_inference_requests_total"
QUEUE_LATENCY = "ts_queue_latency_microseconds"
INFERENCE_LATENCY = "ts_inference_latency_microseconds"
GENERATED_TOKENS = "GeneratedTokens"
PROMPT_TOKENS = "PromptTokens"
TIME_TO_FIRST_TOKEN = "TimeToFirstToken"
TOKENS_PER_SECOND = "TokensPerSecond"
PREDICTION_TIME = "PredictionTime"
METRIC_NAMES = (
    REQUESTS,
    QUEUE_LATENCY,
    INFERENCE_LATENCY,
    GENERATED_TOKENS,
    PROMPT_TOKENS,
    TIME_TO_FIRST_TOKEN,
    TOKENS_PER_SECOND,
    PREDICTION_TIME,
)


@dataclass(frozen=True)
class MetricsSnapshot:
    """The metrics of one model (or of all, when ``model`` is None) at one moment."""

    at: datetime
    requests: float
    queue_us: float
    inference_us: float
    generated_tokens: float
    prompt_tokens: float
    ttft_ms: float | None
    tokens_per_s: float | None
    prediction_ms: float | None

    @classmethod
    def from_samples(
        cls, samples: Sequence[Sample], at: datetime, model: str | None = None
    ) -> MetricsSnapshot:
        """Pick our metrics out of a parsed ``/metrics`` answer.

        >>> from tschat.api.metrics import parse_prometheus
        >>> samples = parse_prometheus('''
        ... ts_inference_requests_total{model_name="smollm2",model_version="1.0",} 3.0
        ... ts_inference_requests_total{model_name="other",model_version="1.0",} 5.0
        ... GeneratedTokens{ModelName="smollm2",Hostname="vm",} 52.0
        ... TimeToFirstToken{ModelName="smollm2",Hostname="vm",} 120.5
        ... ''')
        >>> now = datetime(2025, 1, 1)
        >>> one = MetricsSnapshot.from_samples(samples, now, "smollm2")
        >>> one.requests, one.generated_tokens, one.ttft_ms, one.tokens_per_s
        (3.0, 52.0, 120.5, None)
        >>> MetricsSnapshot.from_samples(samples, now).requests
        8.0
        """
        frontend = {"model_name": model} if model else {}
        backend = {"ModelName": model} if model else {}
        return cls(
            at=at,
            requests=total(samples, REQUESTS, **frontend),
            queue_us=total(samples, QUEUE_LATENCY, **frontend),
            inference_us=total(samples, INFERENCE_LATENCY, **frontend),
            generated_tokens=total(samples, GENERATED_TOKENS, **backend),
            prompt_tokens=total(samples, PROMPT_TOKENS, **backend),
            ttft_ms=_gauge(samples, TIME_TO_FIRST_TOKEN, backend),
            tokens_per_s=_gauge(samples, TOKENS_PER_SECOND, backend),
            prediction_ms=_gauge(samples, PREDICTION_TIME, backend),
        )


def _gauge(samples: Sequence[Sample], name: str, labels: dict[str, str]) -> float | None:
    """A gauge's value; with several models and no model chosen, the largest."""
    found = select(samples, name, **labels)
    return max(sample.value for sample in found) if found else None


class MetricsHistory:
    """The last ``max_points`` snapshots and the rates between them."""

    def __init__(self, max_points: int = 360) -> None:
        self.snapshots: deque[MetricsSnapshot] = deque(maxlen=max_points)

    def add(self, snapshot: MetricsSnapshot) -> None:
        """Keep one snapshot; one older than the last one is ignored."""
        if self.snapshots and snapshot.at <= self.snapshots[-1].at:
            return
        self.snapshots.append(snapshot)

    def clear(self) -> None:
        """Forget everything (e.g. when the model to watch changes)."""
        self.snapshots.clear()

    def __len__(self) -> int:
        return len(self.snapshots)

    def rows(self, window_s: float = 10.0) -> list[dict[str, Any]]:
        """One row per snapshot after the first: rates and mean latencies, and the gauges.

        Rates and latencies are taken over the last ``window_s`` seconds (like Prometheus'
        ``rate()``), because counters move only when a request finishes and would otherwise
        show as spikes. The gauges are None unless a request finished since the snapshot
        before, so charts show gaps instead of repeating an old value. A counter that went
        down means TorchServe restarted: the window never reaches back across that.

        >>> from datetime import timedelta
        >>> t = datetime(2025, 1, 1)
        >>> history = MetricsHistory()
        >>> history.add(MetricsSnapshot(t, 10, 1e6, 9e6, 100, 50, 200.0, 20.0, 400.0))
        >>> later = t + timedelta(seconds=2)
        >>> history.add(MetricsSnapshot(later, 14, 1.2e6, 11e6, 180, 70, 150.0, 25.0, 300.0))
        >>> row = history.rows()[0]
        >>> row["requests/s"], row["queue ms"], row["total ms"], row["generated tokens/s"]
        (2.0, 50.0, 500.0, 40.0)
        >>> row["time to first token ms"], row["handler call ms"]
        (150.0, 300.0)
        >>> quiet = t + timedelta(seconds=4)  # nothing finished in the last 2 s
        >>> history.add(MetricsSnapshot(quiet, 14, 1.2e6, 11e6, 180, 70, 150.0, 25.0, 300.0))
        >>> row = history.rows()[1]
        >>> row["requests/s"], row["generated tokens/s"], row["time to first token ms"]
        (1.0, 20.0, None)
        """
        rows: list[dict[str, Any]] = []
        points = list(self.snapshots)
        for index in range(1, len(points)):
            after, previous = points[index], points[index - 1]
            if _restarted(previous, after):
                continue
            start = index - 1
            while (
                start > 0
                and (after.at - points[start - 1].at).total_seconds() <= window_s
                and not _restarted(points[start - 1], points[start])
            ):
                start -= 1
            before = points[start]
            seconds = (after.at - before.at).total_seconds()
            if seconds <= 0:
                continue
            done = after.requests - before.requests
            finished = (
                after.requests > previous.requests
                or after.generated_tokens > previous.generated_tokens
            )
            rows.append(
                {
                    "time": after.at,
                    "requests/s": done / seconds,
                    "queue ms": _per(after.queue_us - before.queue_us, done),
                    "handler call ms": after.prediction_ms if finished else None,
                    "total ms": _per(after.inference_us - before.inference_us, done),
                    "generated tokens/s": (after.generated_tokens - before.generated_tokens)
                    / seconds,
                    "decode tokens/s (last request)": after.tokens_per_s if finished else None,
                    "time to first token ms": after.ttft_ms if finished else None,
                }
            )
        return rows

    def latest(self) -> MetricsSnapshot | None:
        """The newest snapshot."""
        return self.snapshots[-1] if self.snapshots else None


def _restarted(before: MetricsSnapshot, after: MetricsSnapshot) -> bool:
    """Whether a counter went down between two snapshots (TorchServe started again)."""
    return after.requests < before.requests or after.generated_tokens < before.generated_tokens


def _per(microseconds: float, requests: float) -> float | None:
    return microseconds / requests / 1000.0 if requests > 0 else None


# ---------------------------------------------------------------- models and workers


def registered_models(management: ManagementClient) -> list[ModelStatus]:
    """Every registered model's status (one unregistered meanwhile is left out)."""
    statuses = []
    for entry in management.list_models():
        with contextlib.suppress(ModelNotFound):
            statuses.append(management.describe_model(entry.name))
    return statuses


def worker_engines(model_log: str) -> dict[int, dict[str, Any]]:
    r"""What each worker's llama.cpp engine runs on, by worker PID, from the model log.

    Read from the ready line, or from a step profile where the ready line is no longer in the
    tail being read (a worker busy for hours).

    >>> line = 'MODEL_LOG - llama.cpp worker ready: {"pid": 7, "backend": "cpu", "n_layers": 30}'
    >>> worker_engines("noise\n" + line)
    {7: {'pid': 7, 'backend': 'cpu', 'n_layers': 30}}
    >>> worker_engines('MODEL_LOG - worker step profile: {"step": 1.5, "worker": {"pid": 8}}')
    {8: {'pid': 8}}
    """
    engines: dict[int, dict[str, Any]] = {}
    for line in model_log.splitlines():
        for mark in (WORKER_INFO_MARK, PROFILE_MARK):
            _, found, payload = line.partition(mark)
            if not found:
                continue
            with contextlib.suppress(ValueError):
                info = json.loads(payload)
                if isinstance(info, dict) and mark == PROFILE_MARK:
                    info = info.get("worker")
                if isinstance(info, dict) and isinstance(info.get("pid"), int):
                    engines[info["pid"]] = info
    return engines


def worker_profile(model_log: str) -> dict[str, float] | None:
    r"""The latest step profile a worker wrote (its times summed since it started), or None.

    >>> worker_profile('x\nMODEL_LOG - worker step profile: {"calls": 3, "step": 0.5}\ny')
    {'calls': 3.0, 'step': 0.5}
    >>> worker_profile('worker step profile: {"calls": 3, "worker": {"pid": 8}}')
    {'calls': 3.0}
    """
    for line in reversed(model_log.splitlines()):
        _, mark, payload = line.partition(PROFILE_MARK)
        if mark:
            with contextlib.suppress(ValueError):
                profile = json.loads(payload)
                if isinstance(profile, dict):
                    return {
                        key: float(value)
                        for key, value in profile.items()
                        if isinstance(value, int | float) and not isinstance(value, bool)
                    }
    return None


def worker_memory(worker: WorkerStatus) -> int:
    """A worker's memory in bytes: TorchServe's figure, else the process's RSS (0: unknown).

    TorchServe fills memoryUsage only with its periodic system metrics, so the OS is asked
    when it has none yet.
    """
    if worker.memory_usage or not worker.pid:
        return worker.memory_usage
    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(worker.pid).memory_info().rss)
    return 0


@dataclass(frozen=True)
class WorkerRestart:
    """TorchServe restarting a worker whose process died (``at`` as logged, server-local)."""

    at: str
    worker: str
    model: str
    version: str


SERVER_START_MARK = "Torchserve version:"
_RETRY = re.compile(r"^(\S+) \[\w+\s*\] W-(\d+)-(\S+)_([^_\s]+) \S+ - Retry worker: \d+ in ")


def worker_restarts(ts_log: str) -> list[WorkerRestart]:
    r"""The worker restarts in TorchServe's log since the server last started, oldest first.

    >>> log = "\n".join([
    ...     "2026-01-01T10:00:00,000 [INFO ] main org.pytorch.serve.ModelServer - ",
    ...     "Torchserve version: 0.12.0",
    ...     "2026-01-01T10:05:00,100 [INFO ] W-9000-smollm2_1.0 org.pytorch.serve.wlm."
    ...     "WorkerThread - Retry worker: 9000 in 1 seconds.",
    ... ])
    >>> worker_restarts(log)
    [WorkerRestart(at='2026-01-01T10:05:00,100', worker='9000', model='smollm2', version='1.0')]
    >>> worker_restarts(log + "\nTorchserve version: 0.12.0")  # started again since
    []
    """
    lines = ts_log.splitlines()
    starts = [i for i, line in enumerate(lines) if SERVER_START_MARK in line]
    restarts: dict[tuple[str, str], WorkerRestart] = {}  # the log may hold a line twice
    for line in lines[starts[-1] + 1 if starts else 0 :]:
        match = _RETRY.match(line)
        if match:
            at, worker, model, version = match.groups()
            restarts.setdefault((at, worker), WorkerRestart(at, worker, model, version))
    return list(restarts.values())


# ---------------------------------------------------------------- logs


def filter_lines(
    text: str, query: str, *, last: int | None = None, newest_first: bool = False
) -> str:
    """The lines of ``text`` that contain ``query`` (case-insensitive), optionally the last few.

    >>> log = "INFO start\\nWARN slow worker\\nINFO done\\nERROR Worker died"
    >>> filter_lines(log, "worker")
    'WARN slow worker\\nERROR Worker died'
    >>> filter_lines(log, "", last=2, newest_first=True)
    'ERROR Worker died\\nINFO done'
    """
    needle = query.strip().lower()
    lines: Iterable[str] = text.splitlines()
    if needle:
        lines = [line for line in lines if needle in line.lower()]
    kept = list(lines)
    if last is not None:
        kept = kept[-last:] if last > 0 else []
    return "\n".join(reversed(kept) if newest_first else kept)


# ---------------------------------------------------------------- one read for the live view


@dataclass(frozen=True)
class LiveSnapshot:
    """What the live view shows, read at one moment; a read that failed leaves its sentence."""

    at: datetime
    server: process.ServerStatus
    models: tuple[ModelStatus, ...] = ()
    models_error: str | None = None
    samples: tuple[Sample, ...] = ()
    metrics_error: str | None = None
    engines: dict[int, dict[str, Any]] | None = None
    restarts: tuple[WorkerRestart, ...] = ()

    @property
    def seen(self) -> tuple[bool, tuple[str, ...]]:
        """Whether TorchServe runs and which models are registered: what the page is drawn for."""
        return self.server.running, tuple(m.name for m in self.models)


def live_snapshot(settings: Settings, management: ManagementClient) -> LiveSnapshot:
    """Read what the live view shows: the server, its models, its metrics and the log tails."""
    server = process.status(settings)
    if not server.running:
        return LiveSnapshot(datetime.now(), server)
    models: list[ModelStatus] = []
    models_error = metrics_error = None
    samples: list[Sample] = []
    try:
        models = registered_models(management)
    except TsChatError as error:
        models_error = str(error)
    try:
        samples = fetch_metrics(settings, METRIC_NAMES)
    except TsChatError as error:
        metrics_error = str(error)
    return LiveSnapshot(
        at=datetime.now(),
        server=server,
        models=tuple(models),
        models_error=models_error,
        samples=tuple(samples),
        metrics_error=metrics_error,
        engines=worker_engines(process.tail_log(settings, "model_log.log", lines=2000)),
        restarts=tuple(worker_restarts(process.tail_log(settings, "ts_log.log", lines=4000))),
    )


T = TypeVar("T")


class SharedSnapshot(Generic[T]):
    """The newest :class:`LiveSnapshot`, shared by every open page of a console process.

    A page asks for one no older than its refresh interval allows; only when the newest is older
    is the server read again, once, while other pages asking meanwhile wait for that read. So
    however many pages are open, the server is read at most once per interval.

    >>> reads, now = [], [0.0]
    >>> def read():
    ...     reads.append(now[0])
    ...     return f"snapshot {len(reads)}"
    >>> shared = SharedSnapshot(read, clock=lambda: now[0])
    >>> shared.get(max_age_s=1.5), shared.get(max_age_s=1.5)
    ('snapshot 1', 'snapshot 1')
    >>> now[0] = 2.0
    >>> shared.get(max_age_s=1.5), shared.get(max_age_s=1.5), len(reads)
    ('snapshot 2', 'snapshot 2', 2)
    >>> shared.invalidate(); shared.get(max_age_s=1.5)
    'snapshot 3'
    """

    def __init__(self, read: Callable[[], T], clock: Callable[[], float] = time.monotonic) -> None:
        self._read = read
        self._clock = clock
        self._lock = threading.Lock()
        self._newest: tuple[float, T] | None = None

    def get(self, max_age_s: float) -> T:
        """The newest snapshot, read again first if it is older than ``max_age_s`` seconds."""
        with self._lock:
            if self._newest is None or self._clock() - self._newest[0] > max_age_s:
                started = self._clock()
                self._newest = (started, self._read())
            return self._newest[1]

    def invalidate(self) -> None:
        """Forget the newest snapshot (the server changed): the next page reads again."""
        with self._lock:
            self._newest = None
