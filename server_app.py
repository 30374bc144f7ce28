"""Operator console: start, stop, tune and watch TorchServe from the browser.

    streamlit run server_app.py

Widgets and session state only. Everything shown is asked of the OS and the server on each run
(tschat.ops.process.status, the management and metrics APIs), never remembered, so a refresh, a
second tab or a server started elsewhere shows the truth. The work is done by the tschat package.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import pandas as pd
import streamlit as st

from apps import figures, tables
from tschat.api.management import ModelStatus
from tschat.api.metrics import fetch_metrics
from tschat.bench import experiments, runner
from tschat.errors import StartupFailed, TsChatError
from tschat.ops import monitor, packaging, password, process, store
from tschat.ops.quantize import QUANTIZATIONS
from tschat.ops.serving import ServingRegistry
from tschat.settings import Settings

T = TypeVar("T")

# Session state keys.
UNLOCKED = "unlocked"  # this browser session gave the console's password
PASSWORD = "password"
NOTICE = "notice"  # (kind, sentence, details) left by an action for the run that follows it
HISTORY = "metrics_history"  # monitor.MetricsHistory of this browser tab
HISTORY_OF = "metrics_history_of"  # which model the history is for
SEEN = "seen_state"  # (running, registered models) the page was last drawn for
REFRESH = "refresh"
MODEL_PICK = "model_pick"
ARCHIVE_PICK = "archive_pick"
SCALE_MIN, SCALE_MAX = "scale_min", "scale_max"
TUNE_BATCH, TUNE_DELAY = "tune_batch_size", "tune_max_batch_delay"
REG_NAME, REG_BATCH, REG_DELAY = "register_name", "register_batch_size", "register_max_delay"
REG_INITIAL, REG_MIN, REG_MAX = "register_initial", "register_min", "register_max"
REG_TIMEOUT = "register_timeout"
PKG_SOURCE, PKG_PATH, PKG_UPLOAD = "package_source", "package_path", "package_upload"
PKG_NAME, PKG_QUANTIZE, PKG_FORCE = "package_name", "package_quantize", "package_force"
LOG_FILE, LOG_LINES, LOG_FILTER = "log_file", "log_lines", "log_filter"
EXP_CONFIGS, EXP_ADDED = "experiment_configs", "experiment_added_configs"
EXP_BATCH, EXP_DELAY = "experiment_batch_size", "experiment_max_delay"
EXP_WORKERS, EXP_THREADS = "experiment_workers", "experiment_threads"
EXP_CONTINUOUS = "experiment_continuous"
EXP_CLIENTS, EXP_ROUNDS = "experiment_clients", "experiment_rounds"
EXP_TOKENS, EXP_WORDS = "experiment_max_tokens", "experiment_prompt_words"
EXP_STAGGER, EXP_GGUF = "experiment_stagger", "experiment_gguf"

REFRESH_CHOICES = {"2 s": 2.0, "5 s": 5.0, "10 s": 10.0, "30 s": 30.0, "off": None}
ALL_MODELS = "all models"
NO_QUANTIZATION = "keep as is"
LOG_FILES = ("ts_log.log", "model_log.log", "access_log.log", "console.log")
PATH_SOURCE, UPLOAD_SOURCE = "Path on this machine", "Upload"
CLIENT_CHOICES = (1, 2, 4, 8, 16, 32)
EXPERIMENT_END_S = 60.0  # what Stop waits for a cancelled experiment to clean up


# ---------------------------------------------------------------- the error boundary


class _Reporter(Protocol):
    """Where an error is shown at once: the page (``st``) or one of its containers."""

    def error(self, body: str) -> object: ...

    def code(self, body: str, language: str | None = ...) -> object: ...


def _attempt(action: Callable[[], T], *, report_to: _Reporter | None = None) -> T | None:
    """Run one call into the package. Its TsChatError becomes a sentence on the page, never a
    traceback: at ``report_to`` now, or at the top of the next run."""
    try:
        return action()
    except TsChatError as error:
        sentence, details = _split_details(error)
        if report_to is None:
            st.session_state[NOTICE] = ("error", sentence, details)
        else:
            report_to.error(sentence)
            if details:
                report_to.code(details, language=None)
        return None


def _split_details(error: TsChatError) -> tuple[str, str]:
    """A startup failure carries the last log lines: show them as a block, not in the sentence."""
    text = str(error)
    if isinstance(error, StartupFailed) and error.log_tail:
        return text.split("\nLast log lines:\n", 1)[0], error.log_tail
    return text, ""


def _act(spinner: str, action: Callable[[], str], *, forget: Sequence[str] = ()) -> None:
    """Do one operator action now, keep its outcome for the next run, and redraw the page.

    ``forget`` names widget values to reload from the server afterwards.
    """
    with st.spinner(spinner):
        message = _attempt(action)
    if message is not None:
        st.session_state[NOTICE] = ("success", message, "")
        for key in forget:
            st.session_state.pop(key, None)
    st.rerun()


def _show_notice() -> None:
    kind, sentence, details = st.session_state.pop(NOTICE, ("", "", ""))
    if kind == "error":
        st.error(sentence)
        if details:
            st.code(details, language=None)
    elif kind == "success":
        st.success(sentence)


def _defaults(values: dict[str, Any]) -> None:
    """Give widgets their starting values (read from the server or an archive) once."""
    for key, value in values.items():
        st.session_state.setdefault(key, value)


# ---------------------------------------------------------------- the password


def _reachable_from_elsewhere(settings: Settings) -> bool:
    """Whether other machines may reach this console: TSCHAT_EXPOSE_APPS is set, or Streamlit
    was told to listen beyond loopback (unset, it listens on every interface)."""
    address = st.get_option("server.address")
    if address == "localhost":
        return settings.apps_exposed
    try:
        loopback = ipaddress.ip_address(str(address)).is_loopback
    except ValueError:
        loopback = False
    return settings.apps_exposed or not loopback


def _unlocked(settings: Settings) -> bool:
    """Whether this session may see and use the console; if not, draw the password prompt.

    On loopback the console is open (the machine's users are trusted with it, as with the key
    file); reachable from elsewhere, nothing else is drawn, and so no action exists, until the
    password is given.
    """
    if st.session_state.get(UNLOCKED) or not _reachable_from_elsewhere(settings):
        return True
    if not password.password_is_set(settings):
        st.error(
            "This console can be reached from other machines but has no password, so it shows "
            "nothing. Set one on the server with `.venv/bin/python -m tschat.ops.password`, "
            "then reload this page."
        )
        return False
    with st.form("unlock"):
        attempt = st.text_input("Password", type="password", key=PASSWORD)
        if st.form_submit_button("Unlock", key="unlock_submit", type="primary"):
            if password.check_password(settings, attempt):
                st.session_state[UNLOCKED] = True
                st.rerun()
            st.error("That is not the console's password.")
    return False


# ---------------------------------------------------------------- server


def _server(settings: Settings, server: process.ServerStatus) -> None:
    summary, start, stop = st.columns([6, 1, 1], vertical_alignment="center")
    if server.running:
        summary.success(server.summary)
    else:
        summary.info("TorchServe is stopped. Start it to register and serve models.")
    if start.button("Start", key="start", type="primary", disabled=server.running, width="stretch"):
        _act("Starting TorchServe...", lambda: _start(settings))
    if stop.button("Stop", key="stop", disabled=not server.running, width="stretch"):
        _act("Stopping TorchServe and its workers...", lambda: _stop(settings))


def _start(settings: Settings) -> str:
    # process.start is idempotent and locked: a second click or tab never starts a second server.
    before = process.status(settings).pid
    after = process.start(settings)
    if before is not None and after.pid == before:
        return f"TorchServe was already running (pid {before}); nothing was started."
    return f"TorchServe started (pid {after.pid}, {after.health})."


def _stop(settings: Settings) -> str:
    experiment = _experiment_slots().current(settings)
    if experiment is not None and experiment.state().running:
        experiment.cancel()  # it unregisters its model and removes its archive first
        experiment.join(timeout=EXPERIMENT_END_S)
    if process.stop(settings):
        return "TorchServe stopped; no worker or port is left."
    return (
        f"This TorchServe was not started from {settings.run_dir}, so the console leaves it "
        "running: stop it where it was started."
    )


def _sidebar(settings: Settings) -> None:
    with st.sidebar:
        st.header("Connection")
        st.caption(
            f"Inference {settings.inference_url}  \nManagement {settings.management_url}  \n"
            f"Metrics {settings.metrics_url}"
        )
        st.caption(f"Run directory `{settings.run_dir}`  \nModel store `{settings.model_store}`")
        st.selectbox(
            "Live view refresh",
            list(REFRESH_CHOICES),
            index=1,
            key=REFRESH,
            help="How often the live view and the logs ask the server again.",
        )


# ---------------------------------------------------------------- live view


def _live_view(settings: Settings) -> None:
    server = process.status(settings)
    registry = _registry(settings)
    models: list[ModelStatus] = []
    if server.running:
        models = (
            _attempt(lambda: monitor.registered_models(registry.management), report_to=st) or []
        )
    if (server.running, tuple(m.name for m in models)) != st.session_state.get(SEEN):
        st.rerun()  # started, stopped, registered or unregistered elsewhere: redraw it all
    st.caption(f"Updated {datetime.now().strftime('%H:%M:%S')}. {server.summary}")
    if not server.running:
        st.info("Nothing to watch while TorchServe is stopped.")
        return
    if not models:
        st.info("No model is registered. Register one in the Models tab.")
    engines = monitor.worker_engines(process.tail_log(settings, "model_log.log", lines=2000))
    restarts = monitor.worker_restarts(process.tail_log(settings, "ts_log.log", lines=4000))
    for status in models:
        mine = [r for r in restarts if (r.model, r.version) == (status.name, status.version)]
        _model_panel(status, engines, mine)
    _charts(settings, [m.name for m in models])


def _model_panel(
    status: ModelStatus,
    engines: dict[int, dict[str, Any]],
    restarts: Sequence[monitor.WorkerRestart],
) -> None:
    st.subheader(f"{status.name} {status.version}")
    ready, queued, batch, delay, restarted = st.columns(5)
    ready.metric("READY workers", f"{status.ready_workers} of {len(status.workers)}")
    queued.metric("Queued requests", status.pending_requests if status.pending_requests else 0)
    batch.metric("Batch size", status.batch_size)
    delay.metric("Max batch delay", f"{status.max_batch_delay} ms")
    restarted.metric("Worker restarts", len(restarts), help="Since TorchServe started")
    for restart in restarts[-3:]:
        st.warning(
            f"Worker {restart.worker} of {status.name} died and TorchServe restarted it "
            f"({restart.at.replace('T', ' ')})."
        )
    rows = tables.worker_rows(status, engines)
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, key=f"workers_{status.name}")
    else:
        st.warning(f"{status.name} has no workers: scale it to at least one in the Models tab.")


def _charts(settings: Settings, names: list[str]) -> None:
    choices = [ALL_MODELS, *names]
    watched = st.selectbox("Charts for", choices, index=1 if len(choices) == 2 else 0)
    history: monitor.MetricsHistory = st.session_state.setdefault(HISTORY, monitor.MetricsHistory())
    if st.session_state.get(HISTORY_OF) != watched:
        history.clear()
        st.session_state[HISTORY_OF] = watched
    samples = _attempt(lambda: fetch_metrics(settings, monitor.METRIC_NAMES), report_to=st)
    if samples is not None:
        model = None if watched == ALL_MODELS else watched
        history.add(monitor.MetricsSnapshot.from_samples(samples, datetime.now(), model))
    latest = history.latest()
    if latest is not None:
        served, tokens, ttft, speed = st.columns(4)
        served.metric("Requests served", f"{latest.requests:,.0f}")
        tokens.metric("Tokens generated", f"{latest.generated_tokens:,.0f}")
        ttft.metric("Last time to first token", _unit(latest.ttft_ms, "ms"))
        speed.metric("Last decode speed", _unit(latest.tokens_per_s, "tokens/s"))
    frame = pd.DataFrame(history.rows())
    if len(frame) < 2:
        st.caption("The charts fill in as the live view refreshes.")
    left, right = st.columns(2)
    for index, (title, columns) in enumerate(figures.CHARTS.items()):
        target = left if index % 2 == 0 else right
        target.plotly_chart(figures.metrics_figure(frame, title, columns), key=f"chart_{index}")


def _unit(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value:,.1f} {unit}"


# ---------------------------------------------------------------- models


def _models(
    settings: Settings, server: process.ServerStatus, models: list[ModelStatus] | None
) -> None:
    if not server.running:
        st.info("Start TorchServe to register, scale, tune or unregister models.")
        return
    if models is None:
        return  # the error was shown above
    registry = _registry(settings)
    st.subheader("Registered models")
    if models:
        st.dataframe(pd.DataFrame([tables.model_row(m) for m in models]), hide_index=True)
        _registered_model_controls(registry, models)
    else:
        st.info("No model is registered yet.")
    st.subheader("Register a model")
    _register_form(settings, registry)


def _registered_model_controls(registry: ServingRegistry, models: list[ModelStatus]) -> None:
    names = [m.name for m in models]
    if st.session_state.get(MODEL_PICK) not in names:
        st.session_state[MODEL_PICK] = names[0]
    st.selectbox("Model", names, key=MODEL_PICK, on_change=_forget, args=(_MODEL_FORM_KEYS,))
    status = next(m for m in models if m.name == st.session_state[MODEL_PICK])
    name = status.name
    _defaults(
        {
            SCALE_MIN: status.min_workers,
            SCALE_MAX: status.max_workers,
            TUNE_BATCH: status.batch_size,
            TUNE_DELAY: status.max_batch_delay,
        }
    )
    scale, tune, remove = st.columns(3)
    with scale.form("scale"):
        st.markdown("**Workers**, changed live")
        st.number_input("Min workers", min_value=0, max_value=64, step=1, key=SCALE_MIN)
        st.number_input("Max workers", min_value=1, max_value=64, step=1, key=SCALE_MAX)
        st.caption(f"This machine has {os.cpu_count()} CPU cores; each worker uses n_threads.")
        if st.form_submit_button("Scale workers", key="scale_submit"):
            low, high = int(st.session_state[SCALE_MIN]), int(st.session_state[SCALE_MAX])
            _act(
                f"Scaling {name} to {low}-{high} workers...",
                lambda: _scale(registry, name, low, high),
                forget=_MODEL_FORM_KEYS,
            )
    with tune.form("retune"):
        st.markdown("**Batching**, by registering again")
        st.number_input("Batch size", min_value=1, max_value=256, step=1, key=TUNE_BATCH)
        st.number_input("Max batch delay (ms)", min_value=0, max_value=60_000, key=TUNE_DELAY)
        st.caption("If the new registration fails, the previous one is put back.")
        if st.form_submit_button("Apply batch settings", key="retune_submit"):
            batch, delay = int(st.session_state[TUNE_BATCH]), int(st.session_state[TUNE_DELAY])
            _act(
                f"Registering {name} again with batch size {batch}, {delay} ms...",
                lambda: _retune(registry, name, batch, delay),
                forget=_MODEL_FORM_KEYS,
            )
    with remove.container(border=True):
        st.markdown("**Unregister**")
        st.caption(f"Stops the workers of {name}; the archive stays in the model store.")
        if st.button(f"Unregister {name}", key="unregister"):
            _act(
                f"Unregistering {name}...",
                lambda: _unregister(registry, name),
                forget=(MODEL_PICK, *_MODEL_FORM_KEYS),
            )


_MODEL_FORM_KEYS = (SCALE_MIN, SCALE_MAX, TUNE_BATCH, TUNE_DELAY)


def _forget(keys: Sequence[str]) -> None:
    for key in keys:
        st.session_state.pop(key, None)


def _scale(registry: ServingRegistry, name: str, low: int, high: int) -> str:
    status = registry.scale(name, low, high)
    return f"{name} now has {status.ready_workers} READY of {len(status.workers)} workers."


def _retune(registry: ServingRegistry, name: str, batch: int, delay: int) -> str:
    status = registry.retune(name, batch_size=batch, max_batch_delay=delay)
    return (
        f"{name} is registered again with batch size {status.batch_size} and max batch delay "
        f"{status.max_batch_delay} ms ({status.ready_workers} READY workers)."
    )


def _unregister(registry: ServingRegistry, name: str) -> str:
    registry.unregister(name)
    return f"{name} is unregistered; its workers have stopped."


_REGISTER_KEYS = (REG_NAME, REG_BATCH, REG_DELAY, REG_INITIAL, REG_MIN, REG_MAX, REG_TIMEOUT)


def _register_form(settings: Settings, registry: ServingRegistry) -> None:
    archives = [a for a in store.list_archives(settings.model_store) if a.usable]
    if not archives:
        st.info(f"No usable archive in {settings.model_store}. Package one in the Model store tab.")
        return
    files = [a.file for a in archives]
    default = f"{settings.model_name}.mar"
    if st.session_state.get(ARCHIVE_PICK) not in files:
        st.session_state[ARCHIVE_PICK] = default if default in files else files[0]
    st.selectbox("Archive", files, key=ARCHIVE_PICK, on_change=_forget, args=(_REGISTER_KEYS,))
    archive = next(a for a in archives if a.file == st.session_state[ARCHIVE_PICK])
    workers = archive.min_workers or 1
    _defaults(
        {
            REG_NAME: archive.model_name or archive.file.removesuffix(".mar"),
            REG_BATCH: archive.batch_size or 1,
            REG_DELAY: archive.max_batch_delay if archive.max_batch_delay is not None else 50,
            REG_INITIAL: workers,
            REG_MIN: workers,
            REG_MAX: max(archive.max_workers or 1, workers),
            REG_TIMEOUT: archive.response_timeout or settings.default_response_timeout,
        }
    )
    with st.form("register"):
        name, batch, delay = st.columns(3)
        name.text_input("Model name", key=REG_NAME)
        batch.number_input("Batch size", min_value=1, max_value=256, step=1, key=REG_BATCH)
        delay.number_input("Max batch delay (ms)", min_value=0, max_value=60_000, key=REG_DELAY)
        initial, low, high, timeout = st.columns(4)
        initial.number_input("Initial workers", min_value=1, max_value=64, key=REG_INITIAL)
        low.number_input("Min workers", min_value=1, max_value=64, key=REG_MIN)
        high.number_input("Max workers", min_value=1, max_value=64, key=REG_MAX)
        fixed = archive.response_timeout is not None  # TorchServe prefers the archive's value
        timeout.number_input(
            "Response timeout (s)",
            min_value=1,
            max_value=86_400,
            key=REG_TIMEOUT,
            disabled=fixed,
            help=(
                "Set by the archive's model-config.yaml, which TorchServe prefers: package the "
                "model again to change it."
                if fixed
                else "Seconds TorchServe waits for a worker's answer before restarting it."
            ),
        )
        st.caption(
            "Registering loads the model in each worker and waits until they are READY. "
            "The archive's own worker counts win over 'Initial workers' (TorchServe's rule); "
            "min and max are applied right after."
        )
        if st.form_submit_button("Register", key="register_submit", type="primary"):
            values = {key: st.session_state[key] for key in _REGISTER_KEYS}
            _act(
                f"Registering {values[REG_NAME]} from {archive.file}...",
                lambda: _register(registry, archive.file, values),
                forget=_REGISTER_KEYS,
            )


def _register(registry: ServingRegistry, archive: str, values: dict[str, Any]) -> str:
    status = registry.register(
        archive,
        model_name=str(values[REG_NAME]).strip(),
        batch_size=int(values[REG_BATCH]),
        max_batch_delay=int(values[REG_DELAY]),
        initial_workers=int(values[REG_INITIAL]),
        min_workers=int(values[REG_MIN]),
        max_workers=int(values[REG_MAX]),
        response_timeout=int(values[REG_TIMEOUT]),
    )
    st.session_state[MODEL_PICK] = status.name
    return (
        f"{status.name} is registered from {archive}: {status.ready_workers} READY of "
        f"{len(status.workers)} workers, batch size {status.batch_size}, max batch delay "
        f"{status.max_batch_delay} ms, response timeout {status.response_timeout} s."
    )


# ---------------------------------------------------------------- model store


def _model_store(settings: Settings) -> None:
    archives = store.list_archives(settings.model_store)
    st.caption(f"Archives in `{settings.model_store}`")
    if archives:
        st.dataframe(
            pd.DataFrame([tables.archive_row(a) for a in archives]), hide_index=True, key="archives"
        )
    else:
        st.info("The model store is empty. Package a model below.")
    st.subheader("Package a model")
    source = st.radio("GGUF file", [PATH_SOURCE, UPLOAD_SOURCE], horizontal=True, key=PKG_SOURCE)
    if source == PATH_SOURCE:
        default = store.default_gguf()
        _defaults({PKG_PATH: str(default) if default else ""})
        st.text_input("Path of a .gguf file on this machine", key=PKG_PATH)
        upload = None
    else:
        upload = st.file_uploader("A .gguf file", type=["gguf"], key=PKG_UPLOAD)
        st.caption(
            "Streamlit holds an upload in memory and limits it to server.maxUploadSize "
            "(200 MB unless configured): give the path of a larger model instead."
        )
    path_text = str(st.session_state.get(PKG_PATH, "")).strip()
    stem = upload.name if upload is not None else (path_text or "model.gguf")
    name, quantize, force = st.columns([2, 1, 1], vertical_alignment="bottom")
    name.text_input(
        "Model name",
        key=PKG_NAME,
        placeholder=store.model_name_for(Path(stem)),
        help="Left empty: made from the file name.",
    )
    quantize.selectbox("Quantization", [NO_QUANTIZATION, *QUANTIZATIONS], key=PKG_QUANTIZE)
    force.checkbox("Replace an existing archive", key=PKG_FORCE)
    if not st.button("Package", key="package", type="primary"):
        return
    model_name = str(st.session_state[PKG_NAME]).strip() or store.model_name_for(Path(stem))
    target = st.session_state[PKG_QUANTIZE]
    options = {
        "name": model_name,
        "model_store": settings.model_store,
        "quantize": None if target == NO_QUANTIZATION else target,
        "force": bool(st.session_state[PKG_FORCE]),
    }
    if upload is not None:
        with store.staged_upload(upload.name, upload, settings.model_store) as staged:
            message = _attempt(lambda: _package(staged, options), report_to=st)
    elif path_text:
        message = _attempt(lambda: _package(Path(path_text).expanduser(), options), report_to=st)
    else:
        st.error("Give the path of a .gguf file, or upload one.")
        return
    if message is not None:
        st.session_state[NOTICE] = ("success", message, "")
        st.rerun()


def _package(gguf: Path, options: dict[str, Any]) -> str:
    """Package a model, showing its steps and output while it runs."""
    progress = st.progress(0.0, text="Starting...")
    with st.status(f"Packaging {options['name']}...", expanded=True) as status:
        output = st.empty()
        lines: list[str] = []
        try:
            for event in packaging.package_model(gguf, **options):
                lines.append(event.text)
                output.code("\n".join(lines[-15:]), language=None)
                progress.progress(event.fraction, text=event.step)
        except TsChatError:
            status.update(label=f"Packaging {options['name']} failed", state="error")
            raise
        status.update(label=f"Packaged {options['name']}", state="complete", expanded=False)
    return f"{options['name']}.mar is in the model store; register it in the Models tab."


# ---------------------------------------------------------------- experiments


def _experiments(settings: Settings, server: process.ServerStatus) -> None:
    experiment = _experiment_slots().current(settings)
    if experiment is not None and experiment.state().running:
        st.caption(
            "The live view and the logs stop refreshing until the experiment ends, so that "
            "drawing them takes no CPU from the measurement."
        )
        st.fragment(_experiment_progress, run_every=2.0)(experiment)
        return
    st.caption(
        "Measure serving configurations side by side on this server: each is packaged from a "
        "GGUF file, registered as exp-NAME, put under the load below and unregistered again. "
        "Other traffic on this machine changes the figures."
    )
    if server.running:
        _experiment_form(settings)
    else:
        st.info("Start TorchServe to run an experiment.")
    if experiment is not None:
        _experiment_results(experiment.state())


def _preset_configs() -> dict[str, experiments.ServedConfig]:
    threads = os.cpu_count() or 2
    presets = experiments.standard_configs(threads, batch=8)
    added: list[experiments.ServedConfig] = st.session_state.setdefault(EXP_ADDED, [])
    return {c.key: c for c in [*presets, *added]}


def _experiment_form(settings: Settings) -> None:
    configs = _preset_configs()
    default_gguf = store.default_gguf()
    _defaults(
        {
            EXP_CONFIGS: list(configs)[:4],
            EXP_CLIENTS: [1, 4, 8],
            EXP_ROUNDS: 2,
            EXP_TOKENS: 64,
            EXP_WORDS: 0,
            EXP_STAGGER: 0.0,
            EXP_GGUF: str(default_gguf) if default_gguf else "",
        }
    )
    with st.expander("Add a configuration"):
        batch, delay, workers, threads, continuous, add = st.columns(
            [1, 1, 1, 1, 1, 1], vertical_alignment="bottom"
        )
        batch.number_input("Batch size", min_value=1, max_value=64, value=4, key=EXP_BATCH)
        delay.number_input("Max delay (ms)", min_value=0, max_value=10_000, value=20, key=EXP_DELAY)
        workers.number_input("Workers", min_value=1, max_value=16, value=1, key=EXP_WORKERS)
        threads.number_input("Threads each", min_value=1, max_value=64, value=2, key=EXP_THREADS)
        continuous.checkbox("Continuous", key=EXP_CONTINUOUS)
        add.button("Add", key="experiment_add", on_click=_add_config)
    with st.form("experiment"):
        st.multiselect(
            "Configurations",
            list(configs),
            format_func=lambda key: configs[key].label,
            key=EXP_CONFIGS,
        )
        clients, rounds, tokens, words, stagger = st.columns(5)
        clients.multiselect("Concurrent clients", CLIENT_CHOICES, key=EXP_CLIENTS)
        rounds.number_input("Requests per client", min_value=1, max_value=50, key=EXP_ROUNDS)
        tokens.number_input("Answer length (tokens)", min_value=1, max_value=2048, key=EXP_TOKENS)
        words.number_input("Prompt length (words)", min_value=0, max_value=1500, key=EXP_WORDS)
        stagger.number_input(
            "Arrivals apart (s)",
            min_value=0.0,
            max_value=10.0,
            step=0.05,
            key=EXP_STAGGER,
            help="More than 0 adds a cell per batching configuration in which 8 clients "
            "arrive this far apart (continuous batching lets late arrivals join at once).",
        )
        st.text_input("GGUF file", key=EXP_GGUF)
        cores = os.cpu_count() or 2
        st.caption(
            f"This machine has {cores} CPU cores: keep workers x threads at or below that, or "
            "the threads take turns and every figure drops."
        )
        if st.form_submit_button("Run experiment", key="experiment_run", type="primary"):
            if _attempt(lambda: _start_experiment(settings, configs), report_to=st) is not None:
                st.rerun()


def _add_config() -> None:
    """Add the configuration the operator built, and pick it (before the page is drawn)."""
    config = _attempt(
        lambda: experiments.ServedConfig.build(
            int(st.session_state[EXP_BATCH]),
            int(st.session_state[EXP_DELAY]),
            int(st.session_state[EXP_WORKERS]),
            int(st.session_state[EXP_THREADS]),
            bool(st.session_state[EXP_CONTINUOUS]),
        )
    )  # an unusable one is explained at the top of the page
    if config is None:
        return
    added: list[experiments.ServedConfig] = st.session_state[EXP_ADDED]
    if config.key not in {c.key for c in added}:
        added.append(config)
    chosen = list(st.session_state.get(EXP_CONFIGS, []))
    if config.key not in chosen:
        st.session_state[EXP_CONFIGS] = [*chosen, config.key]


def _start_experiment(
    settings: Settings, configs: dict[str, experiments.ServedConfig]
) -> runner.Experiment:
    from tschat.bench.loadgen import make_prompt

    plan = experiments.LoadPlan(
        clients=tuple(sorted(int(c) for c in st.session_state[EXP_CLIENTS])),
        rounds=int(st.session_state[EXP_ROUNDS]),
        min_requests=1,
        max_tokens=int(st.session_state[EXP_TOKENS]),
        prompt=make_prompt(int(st.session_state[EXP_WORDS])),
        stagger_s=float(st.session_state[EXP_STAGGER]),
    )
    chosen = [configs[key] for key in st.session_state[EXP_CONFIGS] if key in configs]
    gguf = Path(str(st.session_state[EXP_GGUF]).strip()).expanduser()
    return _experiment_slots().start(settings, gguf, chosen, plan)


def _experiment_progress(experiment: runner.Experiment) -> None:
    state = experiment.state()
    if not state.running:
        st.rerun()  # finished: draw the form and the results
    elapsed = datetime.now().timestamp() - state.started
    st.progress(state.fraction, text=f"{state.step} ({elapsed:.0f} s)")
    if st.button("Cancel", key="experiment_cancel", disabled=state.cancelled):
        experiment.cancel()
        st.rerun()
    _experiment_results(state, chart=False)  # the chart once it ends: drawing it costs CPU


def _experiment_results(state: runner.ExperimentState, chart: bool = True) -> None:
    started = datetime.fromtimestamp(state.started).strftime("%H:%M:%S")
    if state.running:
        st.caption(f"Experiment started at {started}; results appear as each cell ends.")
    else:
        assert state.finished is not None
        how = "was cancelled" if state.cancelled else "finished"
        took = state.finished - state.started
        st.subheader("Last experiment")
        st.caption(f"Started at {started}, {how} after {took:.0f} s.")
    for error in state.errors:
        st.warning(f"Not measured: {error}")
    if not state.rows:
        return
    left, table = st.columns(2) if chart else (None, st.container())
    if left is not None:
        figure = figures.comparison_figure(state.rows, "")
        figure.update_layout(
            margin={"l": 10, "r": 10, "t": 40, "b": 10}, legend={"orientation": "h"}
        )
        left.plotly_chart(figure, key="experiment_chart")
    table.dataframe(
        pd.DataFrame(tables.experiment_rows(state.rows)), hide_index=True, key="experiment_table"
    )
    table.download_button(
        "Download CSV",
        experiments.csv_text(state.rows),
        file_name=f"experiment-{datetime.fromtimestamp(state.started):%Y%m%d-%H%M%S}.csv",
        mime="text/csv",
        key="experiment_csv",
        disabled=state.running,
    )


# ---------------------------------------------------------------- logs


def _logs(settings: Settings) -> None:
    choice, lines, query = st.columns([2, 1, 3])
    name = cast(process.LogName, choice.selectbox("Log", LOG_FILES, key=LOG_FILE))
    count = lines.selectbox("Lines", (100, 300, 1000), key=LOG_LINES)
    text = query.text_input("Filter", key=LOG_FILTER, placeholder="text to look for, e.g. ERROR")
    # Read far back when filtering, so the last `count` matches are found.
    tail = process.tail_log(settings, name, lines=count * 20 if text.strip() else count)
    shown = monitor.filter_lines(tail, text, last=count, newest_first=True)
    st.caption(f"`{settings.log_dir / name}`, newest first")
    st.code(shown or "(no matching lines)", language=None, height=420, wrap_lines=True)


# ---------------------------------------------------------------- the page


@st.cache_resource
def _experiment_slots() -> runner.ExperimentSlots:
    """The experiments of this console process, shared by its pages and browser tabs."""
    return runner.ExperimentSlots()


def _registry(settings: Settings) -> ServingRegistry:
    return ServingRegistry.for_settings(settings)


def main() -> None:
    st.set_page_config(page_title="TorchServe console", page_icon=":material/dns:", layout="wide")
    st.title("TorchServe console")
    settings = _attempt(Settings.from_env, report_to=st)
    if settings is None or not _unlocked(settings):
        return
    _sidebar(settings)
    _show_notice()
    server = process.status(settings)
    models: list[ModelStatus] | None = []
    if server.running:
        management = _registry(settings).management
        models = _attempt(lambda: monitor.registered_models(management), report_to=st)
    st.session_state[SEEN] = (server.running, tuple(m.name for m in models or []))
    _server(settings, server)

    every = REFRESH_CHOICES[st.session_state.get(REFRESH, "5 s")]
    experiment = _experiment_slots().current(settings)
    if experiment is not None and experiment.state().running:
        every = None  # redrawing the live view would take CPU from the measurement
    live, models_tab, archives, experiments_tab, logs = st.tabs(
        ["Live view", "Models", "Model store", "Experiments", "Logs"]
    )
    with live:
        st.fragment(_live_view, run_every=every)(settings)
    with models_tab:
        _models(settings, server, models)
    with archives:
        _model_store(settings)
    with experiments_tab:
        _experiments(settings, server)
    with logs:
        st.fragment(_logs, run_every=every)(settings)


main()
