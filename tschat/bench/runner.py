"""Experiments in the background: configurations measured one after another in a thread, on a
running TorchServe, while the console's page reruns."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tschat.api.keys import KeyStore
from tschat.bench.experiments import (
    LoadPlan,
    Row,
    ServedConfig,
    measure_config,
    package_config,
    register_config,
)
from tschat.bench.loadgen import RequestRecord
from tschat.errors import BadRequest, TsChatError
from tschat.ops.serving import ServingRegistry
from tschat.settings import Settings


@dataclass(frozen=True)
class ExperimentState:
    """A snapshot of an experiment, for display."""

    configs: tuple[ServedConfig, ...]
    plan: LoadPlan
    started: float  # time.time()
    step: str
    fraction: float
    rows: tuple[Row, ...]
    errors: tuple[str, ...] = ()
    finished: float | None = None
    cancelled: bool = False

    @property
    def running(self) -> bool:
        return self.finished is None


@dataclass
class _Progress:
    done: int = 0
    total: int = 1
    step: str = "Starting"
    rows: list[Row] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    finished: float | None = None


class Experiment:
    """Measure configurations one after another on a running TorchServe, in a thread.

    Each configuration is packaged from ``gguf`` into the model store as ``PREFIX-KEY.mar``,
    registered under that name, measured and unregistered; the archives are removed at the
    end. A configuration that fails is reported and the next one goes on.
    """

    PREFIX = "exp"

    def __init__(
        self, settings: Settings, gguf: Path, configs: Sequence[ServedConfig], plan: LoadPlan
    ) -> None:
        if not configs:
            raise BadRequest("Pick at least one configuration.")
        if len({c.key for c in configs}) != len(configs):
            raise BadRequest("Each configuration can be measured once per experiment.")
        if not gguf.is_file():
            raise BadRequest(f"There is no GGUF file at {gguf}.")
        self.settings = settings
        self.gguf = gguf
        self.configs = tuple(configs)
        self.plan = plan
        self.started = time.time()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._progress = _Progress(total=sum(self._units(c) for c in self.configs))
        self._thread = threading.Thread(target=self._run, name="experiment", daemon=True)

    # Progress counts requests; packaging and registering a configuration weigh as much as
    # a few requests, so the bar moves while they run.
    _SETUP_UNITS = 4

    def _units(self, config: ServedConfig) -> int:
        return self._SETUP_UNITS + self.plan.requests_in(config)

    def model_name(self, config: ServedConfig) -> str:
        return f"{self.PREFIX}-{config.key}"

    def start(self) -> Experiment:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Send no more requests; the configuration under way is unregistered."""
        self._cancel.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def state(self) -> ExperimentState:
        with self._lock:
            p = self._progress
            return ExperimentState(
                configs=self.configs,
                plan=self.plan,
                started=self.started,
                step=p.step,
                fraction=min(p.done / max(p.total, 1), 1.0),
                rows=tuple(p.rows),
                errors=tuple(p.errors),
                finished=p.finished,
                cancelled=self._cancel.is_set(),
            )

    def _advance(self, units: int = 1, step: str | None = None) -> None:
        with self._lock:
            self._progress.done += units
            if step is not None:
                self._progress.step = step

    def _run(self) -> None:
        keys = KeyStore(self.settings)
        registry = ServingRegistry.for_settings(self.settings, keys)
        try:
            for n, config in enumerate(self.configs, 1):
                if self._cancel.is_set():
                    break
                where = f"{n}/{len(self.configs)} {config.label}"
                started = self._progress.done
                try:
                    self._measure(registry, keys, config, where)
                except Exception as exc:  # noqa: BLE001 - one broken configuration spoils no other
                    with self._lock:
                        self._progress.errors.append(f"{config.label}: {exc}")
                finally:
                    with self._lock:  # a failed or cut short configuration counts as done
                        self._progress.done = started + self._units(config)
        finally:
            with self._lock:
                self._progress.step = "Cancelled" if self._cancel.is_set() else "Finished"
                self._progress.finished = time.time()

    def _measure(
        self, registry: ServingRegistry, keys: KeyStore, config: ServedConfig, where: str
    ) -> None:
        name = self.model_name(config)
        archive = self.settings.model_store / f"{name}.mar"
        self._advance(0, f"{where}: packaging {archive.name}")
        with contextlib.suppress(TsChatError):  # left registered by a run that was cut short
            registry.unregister(name)
        try:
            package_config(self.gguf, config, self.settings.model_store, name)
            self._advance(self._SETUP_UNITS // 2, f"{where}: starting {config.workers} worker(s)")
            pids = register_config(registry, config, archive.name, name)
            try:
                self._advance(self._SETUP_UNITS - self._SETUP_UNITS // 2, f"{where}: warming up")

                def on_row(row: Row) -> None:
                    with self._lock:
                        self._progress.rows.append(row)

                def on_record(record: RequestRecord) -> None:
                    self._advance(1, f"{where}: measuring")

                measure_config(
                    self.settings, keys, config, name, pids, self.plan,
                    on_record=on_record, on_row=on_row, cancel=self._cancel,
                )  # fmt: skip
            finally:
                with contextlib.suppress(Exception):
                    registry.unregister(name)
        finally:
            archive.unlink(missing_ok=True)


class ExperimentSlots:
    """The running or last experiment of each server (run directory), for one console process.

    The console keeps one of these for all its pages (``st.cache_resource``), so a page that
    reruns or a second browser tab finds the experiment instead of starting another.
    """

    def __init__(self) -> None:
        self._by_server: dict[str, Experiment] = {}
        self._lock = threading.Lock()

    def start(
        self, settings: Settings, gguf: Path, configs: Sequence[ServedConfig], plan: LoadPlan
    ) -> Experiment:
        """Start an experiment on the server of ``settings``, unless one is running there."""
        with self._lock:
            running = self._by_server.get(str(settings.run_dir))
            if running is not None and running.state().running:
                raise BadRequest(
                    "An experiment is already running on this server; wait or cancel it."
                )
            experiment = Experiment(settings, gguf, configs, plan)
            self._by_server[str(settings.run_dir)] = experiment
            return experiment.start()

    def current(self, settings: Settings) -> Experiment | None:
        """The running or last experiment on the server of ``settings``, if any."""
        with self._lock:
            return self._by_server.get(str(settings.run_dir))
