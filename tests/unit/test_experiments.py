"""Experiment plans, configurations and figures (pure parts; the runs are integration tests)."""

from __future__ import annotations

import csv
import io

import pytest

from apps import figures, tables
from tschat.bench import experiments, runner
from tschat.bench.experiments import LoadPlan, Row, ServedConfig
from tschat.bench.loadgen import Summary
from tschat.errors import BadRequest


def summary(tps: float | None, requests: int = 4, failures: int = 0) -> Summary:
    return Summary(requests, failures, 64 * requests, 2.0, tps, 40.0, 80.0, 9.0, 15.0, 100.0)


def cell(config: str, clients: int, tps: float | None, stagger: float = 0.0) -> Row:
    return Row(config, f"label {config}", clients, stagger, 8, 50, 1, 2, False, summary(tps),
               (300.0,), (200.0,))  # fmt: skip


def test_built_configurations_are_named_after_their_settings() -> None:
    config = ServedConfig.build(4, 20, 2, 1)
    assert (config.key, config.batch_size, config.workers, config.continuous) == (
        "b4-d20-w2-t1", 4, 2, False,
    )  # fmt: skip
    assert config.label == "batch 4 (20 ms), 2 workers x 1 thread"
    assert config.package_options().continuous is False
    assert ServedConfig.build(8, 10, 1, 2, continuous=True).package_options().continuous is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, 10, 1, 2), "at least 1"),
        ((4, -1, 1, 2), "negative"),
        ((4, 10, 0, 2), "at least 1"),
        ((4, 10, 2, 1, True), "one worker"),
    ],
)
def test_unusable_configurations_are_refused(args: tuple, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        ServedConfig.build(*args)


def test_standard_configurations_fit_the_thread_budget() -> None:
    for config in experiments.standard_configs(threads=2, batch=8):
        assert config.workers * config.threads <= 2, config
    continuous = [c for c in experiments.standard_configs(2, 8) if c.continuous]
    assert [c.workers for c in continuous] == [1]


def test_load_plan_cells_and_request_counts() -> None:
    plan = LoadPlan(clients=(1, 4), rounds=2, min_requests=3, max_tokens=16, stagger_s=0.25)
    batch1 = ServedConfig.build(1, 0, 1, 2)
    batch8 = ServedConfig.build(8, 50, 1, 2)
    assert plan.cells(batch1) == [(1, 0.0), (4, 0.0)]  # no staggered cell without batching
    assert plan.cells(batch8) == [(1, 0.0), (4, 0.0), (8, 0.25)]
    assert [plan.spec(c, s).requests for c, s in plan.cells(batch8)] == [3, 8, 8]
    warmup = experiments.warmup_spec(batch8)
    assert warmup.clients == 4 and warmup.max_tokens == 16
    assert plan.requests_in(batch8) == 3 + 8 + 8 + warmup.requests


@pytest.mark.parametrize(
    "options", [{"clients": ()}, {"clients": (0,)}, {"rounds": 0}, {"stagger_s": -1.0}]
)
def test_load_plan_refuses_nonsense(options: dict) -> None:
    with pytest.raises(BadRequest):
        LoadPlan(**options)


def test_csv_holds_one_line_per_cell() -> None:
    rows = [cell("b8", 1, 100.0), cell("b8", 8, 250.5)]
    parsed = list(csv.DictReader(io.StringIO(experiments.csv_text(rows))))
    assert [r["clients"] for r in parsed] == ["1", "8"]
    assert parsed[1]["tokens_per_s"] == "250.5" and parsed[1]["rss_total_mb"] == "300.0"


def test_table_rows_mark_staggered_cells() -> None:
    table = tables.experiment_rows([cell("c8", 8, 200.0, stagger=0.25)])
    assert table[0]["clients"] == "8 (0.25 s apart)"
    assert table[0]["tokens/s"] == 200.0 and table[0]["failed"] == "0/4"


def test_comparison_figure_draws_each_configuration() -> None:
    rows = [cell("b1", 1, 100.0), cell("b1", 8, 110.0), cell("b8", 1, 95.0),
            cell("b8", 8, 180.0), cell("b8", 8, 150.0, stagger=0.25)]  # fmt: skip
    limit = cell("inproc", 1, 120.0)
    figure = figures.comparison_figure(rows, "title", limits=[limit])
    throughput = [t for t in figure.data if t.type == "scatter" and t.showlegend]
    assert [list(t.y) for t in throughput] == [[100.0, 110.0], [95.0, 180.0]]  # no stagger
    bars = [t for t in figure.data if t.type == "bar"]
    assert [t.name for t in bars] == ["RSS", "PSS"] and list(bars[0].y) == [300.0, 300.0]
    assert any(shape.y0 == 120.0 for shape in figure.layout.shapes)


def test_experiment_checks_its_inputs(tmp_path) -> None:
    settings_free = None  # never reached: the checks come first
    gguf = tmp_path / "m.gguf"
    with pytest.raises(BadRequest, match="at least one configuration"):
        runner.Experiment(settings_free, gguf, [], LoadPlan())  # type: ignore[arg-type]
    config = ServedConfig.build(1, 0, 1, 2)
    with pytest.raises(BadRequest, match="no GGUF file"):
        runner.Experiment(settings_free, gguf, [config], LoadPlan())  # type: ignore[arg-type]
    with pytest.raises(BadRequest, match="once"):
        runner.Experiment(
            settings_free,
            gguf,
            [config, config],
            LoadPlan(),  # type: ignore[arg-type]
        )


def test_a_server_the_load_generator_refuses_is_refused_before_packaging(tmp_path) -> None:
    from tschat.settings import Settings

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    settings = Settings(host="0.0.0.0", run_dir=tmp_path / "var", model_store=tmp_path / "store")
    with pytest.raises(BadRequest, match="TSCHAT_HOST.*Nothing was packaged"):
        runner.ExperimentSlots().start(settings, gguf, [ServedConfig.build(1, 0, 1, 2)], LoadPlan())
    assert not settings.model_store.exists() and not settings.run_dir.exists()


def test_only_archives_with_the_experiment_marker_count_as_an_experiments(tmp_path) -> None:
    from tschat.ops import store

    config = ServedConfig.build(2, 10, 1, 2)
    gguf = store.default_gguf()
    assert gguf is not None
    marked = experiments.package_config(gguf, config, tmp_path, "exp-mine", "started now")
    plain = experiments.package_config(gguf, config, tmp_path, "exp-users")
    assert store.read_archive(marked).experiment == "started now"
    assert runner.made_by_experiment(marked)
    assert not runner.made_by_experiment(plain) and store.read_archive(plain).experiment is None
    assert not runner.made_by_experiment(tmp_path / "missing.mar")
