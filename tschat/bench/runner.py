"""Experiments in the background: configurations measured one after another in a thread, on a
running TorchServe, while the console's page reruns.

An experiment touches only what it made: the archives it packages carry a marker
(``experiment`` in their model-config.yaml), and an archive or registered model of the same
name without it stops the experiment before anything is packaged. One experiment runs per
server at a time, whichever console started it (a lock in the run directory).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
from tschat.bench.loadgen import RequestRecord, check_loopback
from tschat.errors import BadRequest, ModelNotFound, TsChatError
from tschat.ops import process, store
from tschat.ops.serving import ServingRegistry
from tschat.settings import Settings

SERVER_STOPPED = "TorchServe stopped, so the experiment ended."


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

    Each configuration is packaged from ``gguf`` into the model store as ``PREFIX-KEY.mar``
    (marked as an experiment's), registered under that name, measured and unregistered; the
    archives are removed at the end. A configuration that fails is reported and the next one
    goes on; a cancel, or TorchServe stopping, ends the experiment.
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
        try:
            check_loopback(settings.inference_url)
        except ValueError as error:
            raise BadRequest(
                f"Experiments measure a TorchServe on this machine, and {error}: set TSCHAT_HOST "
                "to 127.0.0.1 to run one. Nothing was packaged."
            ) from None
        self.settings = settings
        self.gguf = gguf
        self.configs = tuple(configs)
        self.plan = plan
        self.started = time.time()
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._progress = _Progress(total=sum(self._units(c) for c in self.configs))
        self._thread = threading.Thread(target=self._run, name="experiment", daemon=True)
        self.mark = f"started {datetime.now():%Y-%m-%d %H:%M:%S} by process {os.getpid()}"
        self._server_lock: int | None = None

    # Progress counts requests; packaging and registering a configuration weigh as much as
    # a few requests, so the bar moves while they run.
    _SETUP_UNITS = 4

    def _units(self, config: ServedConfig) -> int:
        return self._SETUP_UNITS + self.plan.requests_in(config)

    def model_name(self, config: ServedConfig) -> str:
        return f"{self.PREFIX}-{config.key}"

    def start(self) -> Experiment:
        """Claim the server, check that nothing of the same names belongs to someone else, and
        run in a thread. BadRequest, with nothing done, when either fails."""
        self._claim_server()
        try:
            self._check_names(ServingRegistry.for_settings(self.settings))
            self._thread.start()
        except BaseException:
            self._release_server()
            raise
        return self

    def cancel(self) -> None:
        """End the experiment: the streams under way are closed, the configuration under way
        is unregistered and its archive removed."""
        self._cancel.set()

    def _claim_server(self) -> None:
        process.prepare_run_dir(self.settings)
        descriptor = os.open(self.settings.experiment_lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise BadRequest(
                "An experiment is already running on this server (perhaps from another "
                "console): wait until it ends, or cancel it where it was started."
            ) from None
        self._server_lock = descriptor

    def _release_server(self) -> None:
        if self._server_lock is not None:
            os.close(self._server_lock)  # closing the descriptor releases the lock
            self._server_lock = None

    def _check_names(self, registry: ServingRegistry) -> None:
        """BadRequest when an archive or registered model of an experiment's name is not one
        an experiment made: it is left alone, and the experiment does not run."""
        others = []
        for config in self.configs:
            name = self.model_name(config)
            archive = self.settings.model_store / f"{name}.mar"
            if archive.exists() and not made_by_experiment(archive):
                others.append(f"{archive.name} in the model store")
            url = registered_archive(registry, name)
            if url is not None and not made_by_experiment(self.settings.model_store / url):
                others.append(f"the registered model {name}")
        if others:
            raise BadRequest(
                f"Not made by an experiment, so left alone: {', '.join(others)}. Rename or "
                "unregister them, or pick other configurations; nothing was packaged."
            )

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
                if n > 1 and not self._cancel.is_set() and not self._server_running():
                    self._stopped_by(SERVER_STOPPED)
                if self._cancel.is_set():
                    break
                where = f"{n}/{len(self.configs)} {config.label}"
                started = self._progress.done
                try:
                    self._measure(registry, keys, config, where)
                except Exception as exc:  # noqa: BLE001 - one broken configuration spoils no other
                    with self._lock:
                        self._progress.errors.append(f"{config.label}: {exc}")
                    if not self._server_running():
                        self._stopped_by(SERVER_STOPPED)
                finally:
                    with self._lock:  # a failed or cut short configuration counts as done
                        self._progress.done = started + self._units(config)
        finally:
            with self._lock:
                self._progress.step = "Cancelled" if self._cancel.is_set() else "Finished"
                self._progress.finished = time.time()
            self._release_server()

    def _server_running(self) -> bool:
        return process.status(self.settings).running

    def _stopped_by(self, reason: str) -> None:
        with self._lock:
            self._progress.errors.append(reason)
        self._cancel.set()

    def _measure(
        self, registry: ServingRegistry, keys: KeyStore, config: ServedConfig, where: str
    ) -> None:
        name = self.model_name(config)
        archive = self.settings.model_store / f"{name}.mar"
        self._advance(0, f"{where}: packaging {archive.name}")
        url = registered_archive(registry, name)
        if url is not None:  # ours (checked at the start), left by a run that was cut short
            if not made_by_experiment(self.settings.model_store / url):
                raise BadRequest(f"{name} is now registered by someone else; it is left alone.")
            with contextlib.suppress(TsChatError):
                registry.unregister(name)
        if archive.exists() and not made_by_experiment(archive):
            raise BadRequest(f"{archive.name} is now someone else's archive; it is left alone.")
        try:
            package_config(self.gguf, config, self.settings.model_store, name, self.mark)
            if self._cancel.is_set():
                return
            self._advance(self._SETUP_UNITS // 2, f"{where}: starting {config.workers} worker(s)")
            pids = register_config(registry, config, archive.name, name)
            try:
                if self._cancel.is_set():
                    return
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
            if made_by_experiment(archive):
                archive.unlink(missing_ok=True)


def made_by_experiment(archive: Path) -> bool:
    """Whether ``archive`` is a model archive that carries an experiment's marker."""
    try:
        return archive.is_file() and store.read_archive(archive).experiment is not None
    except OSError:
        return False


def registered_archive(registry: ServingRegistry, name: str) -> str | None:
    """The archive (as TorchServe names it) of the model registered as ``name``, if any."""
    try:
        return registry.management.describe_model(name).url
    except ModelNotFound:
        return None


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
            experiment = Experiment(settings, gguf, configs, plan).start()
            self._by_server[str(settings.run_dir)] = experiment
            return experiment

    def current(self, settings: Settings) -> Experiment | None:
        """The running or last experiment on the server of ``settings``, if any."""
        with self._lock:
            return self._by_server.get(str(settings.run_dir))
