"""Serving experiments: package configurations, put each under load, compare the figures.

A configuration (:class:`ServedConfig`) is a batch size, a max batch delay, a worker count,
threads per worker and the batching mode. An experiment packages one archive per
configuration, registers it on a running TorchServe, runs the load generator at each client
count (:mod:`tschat.bench.loadgen`), records one :class:`Row` per cell with the workers' memory and
CPU time, and unregisters it again. ``benchmarks/run.py`` does this on a TorchServe of its
own; the console's Experiments page on the operator's server, in a background
:class:`Experiment` that outlives the page's reruns.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tschat.api.keys import KeyStore
from tschat.bench.loadgen import DEFAULT_INSTRUCTION, LoadSpec, RequestRecord, Summary, run_load
from tschat.bench.sampler import ProcessSampler
from tschat.errors import BadRequest
from tschat.ops import process, store
from tschat.ops.packaging import PackageOptions, package_model
from tschat.ops.serving import CONTINUOUS_ONE_WORKER, ServingRegistry
from tschat.settings import Settings

# Requests per warm-up client before timing starts (the frontend's JIT, the first prefill).
WARMUP_ROUNDS = 2


@dataclass(frozen=True)
class ServedConfig:
    """One serving configuration: its own archive, registered under ``key``."""

    key: str
    label: str
    batch_size: int
    max_batch_delay_ms: int
    workers: int
    threads: int
    continuous: bool = False

    def __post_init__(self) -> None:
        store.check_model_name(self.key)
        if self.batch_size < 1 or self.workers < 1 or self.threads < 1:
            raise BadRequest(f"{self.key}: batch size, workers and threads must be at least 1.")
        if self.max_batch_delay_ms < 0:
            raise BadRequest(f"{self.key}: the max batch delay cannot be negative.")
        if self.continuous and self.workers > 1:
            raise BadRequest(
                f"{self.key}: continuous batching takes one worker per model "
                f"({CONTINUOUS_ONE_WORKER})."
            )

    @classmethod
    def build(
        cls,
        batch_size: int,
        max_batch_delay_ms: int,
        workers: int,
        threads: int,
        continuous: bool = False,
    ) -> ServedConfig:
        """A configuration named after its settings.

        >>> ServedConfig.build(8, 50, 1, 2).key, ServedConfig.build(8, 10, 1, 2, True).label
        ('b8-d50-w1-t2', 'continuous, batch 8 (10 ms), 1 worker x 2 threads')
        """
        mode = "c" if continuous else "b"
        key = f"{mode}{batch_size}-d{max_batch_delay_ms}-w{workers}-t{threads}"
        kind = "continuous, batch" if continuous else "batch"
        delay = f" ({max_batch_delay_ms} ms)" if batch_size > 1 or continuous else ""
        label = (
            f"{kind} {batch_size}{delay}, {workers} worker{'s' if workers > 1 else ''} x "
            f"{threads} thread{'s' if threads > 1 else ''}"
        )
        return cls(key, label, batch_size, max_batch_delay_ms, workers, threads, continuous)

    def package_options(self) -> PackageOptions:
        """The archive settings that put this configuration into the archive."""
        return PackageOptions(
            workers=self.workers,
            threads=self.threads,
            batch_size=self.batch_size,
            max_batch_delay=self.max_batch_delay_ms,
            continuous=self.continuous,
        )


def standard_configs(
    threads: int, batch: int, delay_ms: int = 50, continuous_delay_ms: int = 10
) -> list[ServedConfig]:
    """The configurations compared by default, for a budget of ``threads`` CPU threads.

    Batch 1 with one worker, batch 1 with two workers sharing the threads, dynamic batching
    and continuous batching (both one worker), then dynamic batching with two workers.

    >>> [c.key for c in standard_configs(2, 8)]
    ['b1w1', 'b1w2', 'b8', 'cont8', 'b4w2']
    """
    per_worker = max(threads // 2, 1)
    half = max(batch // 2, 1)
    return [
        ServedConfig("b1w1", f"batch 1, 1 worker x {threads} threads", 1, 0, 1, threads),
        ServedConfig("b1w2", f"batch 1, 2 workers x {per_worker} thread", 1, 0, 2, per_worker),
        ServedConfig(f"b{batch}", f"batch {batch} dynamic ({delay_ms} ms)", batch, delay_ms, 1,
                     threads),
        ServedConfig(f"cont{batch}", f"continuous, batch {batch} ({continuous_delay_ms} ms)",
                     batch, continuous_delay_ms, 1, threads, continuous=True),
        ServedConfig(f"b{half}w2", f"batch {half} dynamic ({delay_ms} ms), 2 workers x "
                     f"{per_worker} thread", half, delay_ms, 2, per_worker),
    ]  # fmt: skip


# ---------------------------------------------------------------- figures


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True)
class Row:
    """One measurement: a configuration under one load."""

    config: str
    label: str
    clients: int
    stagger_s: float
    batch_size: int
    max_batch_delay_ms: int
    workers: int
    threads: int
    continuous: bool
    summary: Summary
    worker_rss_mb: tuple[float, ...] = ()
    worker_pss_mb: tuple[float, ...] = ()
    cpu_workers_s: float | None = None  # CPU time used during the cell, by process group
    cpu_frontend_s: float | None = None
    cpu_client_s: float | None = None

    @property
    def rss_total_mb(self) -> float | None:
        return sum(self.worker_rss_mb) if self.worker_rss_mb else None

    @property
    def pss_total_mb(self) -> float | None:
        return sum(self.worker_pss_mb) if self.worker_pss_mb else None

    def as_csv(self) -> dict[str, object]:
        s = self.summary
        return {
            "config": self.config,
            "label": self.label,
            "clients": self.clients,
            "stagger_s": self.stagger_s,
            "batch_size": self.batch_size,
            "max_batch_delay_ms": self.max_batch_delay_ms,
            "workers": self.workers,
            "threads": self.threads,
            "continuous": self.continuous,
            "requests": s.requests,
            "failures": s.failures,
            "tokens": s.tokens,
            "wall_s": _round(s.wall_s, 3),
            "tokens_per_s": _round(s.tokens_per_s, 2),
            "ttft_p50_ms": _round(s.ttft_p50_ms, 1),
            "ttft_p95_ms": _round(s.ttft_p95_ms, 1),
            "itl_p50_ms": _round(s.itl_p50_ms, 2),
            "itl_p95_ms": _round(s.itl_p95_ms, 2),
            "stream_tps_p50": _round(s.stream_tps_p50, 2),
            "worker_rss_mb": ";".join(f"{m:.1f}" for m in self.worker_rss_mb),
            "rss_total_mb": _round(self.rss_total_mb, 1),
            "worker_pss_mb": ";".join(f"{m:.1f}" for m in self.worker_pss_mb),
            "pss_total_mb": _round(self.pss_total_mb, 1),
            "cpu_workers_s": _round(self.cpu_workers_s, 2),
            "cpu_frontend_s": _round(self.cpu_frontend_s, 2),
            "cpu_client_s": _round(self.cpu_client_s, 2),
            "errors": " | ".join(s.errors),
        }


_EMPTY = Summary(0, 0, 0, 0.0, None, None, None, None, None, None)
CSV_FIELDS = list(Row("", "", 1, 0.0, 1, 0, 1, 1, False, _EMPTY).as_csv().keys())


def csv_text(rows: Iterable[Row]) -> str:
    """The rows as CSV, one line per cell, with a header.

    >>> csv_text([]).split(",")[:3]
    ['config', 'label', 'clients']
    """
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row.as_csv())
    return out.getvalue()


def peak_total(rows: Iterable[Row], config: str, attr: str) -> float | None:
    """The largest total worker memory (``rss_total_mb`` or ``pss_total_mb``) of a config."""
    totals = [getattr(r, attr) for r in rows if r.config == config]
    totals = [t for t in totals if t is not None]
    return max(totals) if totals else None


# ---------------------------------------------------------------- measuring


@dataclass(frozen=True)
class LoadPlan:
    """The load each configuration is put under."""

    clients: tuple[int, ...] = (1, 4, 8, 16)
    rounds: int = 2  # requests per client in each cell
    min_requests: int = 6  # but never fewer than this in a cell
    max_tokens: int = 128
    prompt: str = DEFAULT_INSTRUCTION
    stagger_s: float = 0.0  # > 0: one more cell per batching config, clients arriving this apart
    staggered_clients: int = 8
    timeout_s: float = 180.0

    def __post_init__(self) -> None:
        if not self.clients or any(c < 1 for c in self.clients):
            raise BadRequest("Pick at least one client count; each must be 1 or more.")
        if self.rounds < 1 or self.min_requests < 1 or self.max_tokens < 1:
            raise BadRequest("Requests per client and answer length must be at least 1.")
        if self.stagger_s < 0:
            raise BadRequest("The time between arrivals cannot be negative.")

    def requests_for(self, clients: int) -> int:
        return max(clients * self.rounds, self.min_requests)

    def cells(self, config: ServedConfig) -> list[tuple[int, float]]:
        """(clients, stagger) of every cell measured for ``config``."""
        cells = [(c, 0.0) for c in self.clients]
        if self.stagger_s > 0 and (config.batch_size > 1 or config.continuous):
            cells.append((self.staggered_clients, self.stagger_s))
        return cells

    def spec(self, clients: int, stagger_s: float) -> LoadSpec:
        requests = clients if stagger_s else self.requests_for(clients)
        return LoadSpec(
            clients=clients,
            requests=requests,
            max_tokens=self.max_tokens,
            prompt=self.prompt or DEFAULT_INSTRUCTION,
            stagger_s=stagger_s,
            timeout_s=self.timeout_s,
        )

    def requests_in(self, config: ServedConfig) -> int:
        """How many requests measuring ``config`` sends, warm-up included."""
        cells = sum(self.spec(c, s).requests for c, s in self.cells(config))
        return cells + warmup_spec(config).requests


def warmup_spec(config: ServedConfig) -> LoadSpec:
    """Short requests that reach every worker, and batch a few at once where batching is on."""
    clients = max(config.workers, min(config.batch_size, 4))
    return LoadSpec(clients, WARMUP_ROUNDS * clients, 16)


def package_config(
    gguf: Path, config: ServedConfig, model_store: Path, name: str, experiment: str | None = None
) -> Path:
    """Package ``gguf`` with ``config`` into ``model_store/NAME.mar`` and check what it holds
    (``experiment``: the marker that says an experiment made it)."""
    options = dataclasses.replace(config.package_options(), experiment=experiment)
    for _ in package_model(gguf, name=name, model_store=model_store, force=True, options=options):
        pass
    archive = model_store / f"{name}.mar"
    info = store.read_archive(archive)
    if (info.batch_size, info.continuous) != (config.batch_size, config.continuous):
        raise BadRequest(
            f"{archive.name} holds batch size {info.batch_size}, continuous {info.continuous}; "
            f"expected {config.batch_size}, {config.continuous}."
        )
    return archive


def register_config(
    registry: ServingRegistry, config: ServedConfig, archive: str, model_name: str
) -> list[int]:
    """Register ``archive`` as ``model_name`` with all its workers ready; their PIDs."""
    registry.register(archive, model_name=model_name, initial_workers=config.workers)
    status = registry.wait_until_ready(model_name, timeout=240, workers=config.workers)
    if status.batch_size != config.batch_size or status.ready_workers != config.workers:
        raise BadRequest(
            f"{model_name}: TorchServe reports batch size {status.batch_size} and "
            f"{status.ready_workers} ready workers, expected {config.batch_size} and "
            f"{config.workers}."
        )
    return [w.pid for w in status.workers if w.pid is not None]


def measure_config(
    settings: Settings,
    keys: KeyStore,
    config: ServedConfig,
    model_name: str,
    pids: Sequence[int],
    plan: LoadPlan,
    *,
    on_record: Callable[[RequestRecord], None] | None = None,
    on_row: Callable[[Row], None] | None = None,
    cancel: threading.Event | None = None,
) -> list[Row]:
    """Load a registered configuration at each of the plan's cells; one row per cell."""
    frontend = process.status(settings).pid
    url = settings.inference_url
    run_load(url, keys, model_name, warmup_spec(config), on_record=on_record, cancel=cancel)
    rows: list[Row] = []
    for clients, stagger in plan.cells(config):
        if cancel is not None and cancel.is_set():
            break
        with ProcessSampler(pids, frontend) as sampler:
            result = run_load(
                url, keys, model_name, plan.spec(clients, stagger), on_record=on_record,
                cancel=cancel,
            )  # fmt: skip
        if cancel is not None and cancel.is_set():
            break  # a cell cut short measures nothing comparable
        row = Row(
            config.key,
            config.label,
            clients,
            stagger,
            config.batch_size,
            config.max_batch_delay_ms,
            config.workers,
            config.threads,
            config.continuous,
            result.summary,
            sampler.mb(sampler.rss),
            sampler.mb(sampler.pss),
            cpu_workers_s=sampler.cpu_s["workers"],
            cpu_frontend_s=sampler.cpu_s["frontend"],
            cpu_client_s=sampler.cpu_s["client"],
        )
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows
