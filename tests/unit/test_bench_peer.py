"""The run against llama-server: its plan, its goals and tables, finding the built binary."""

from __future__ import annotations

import doctest
import subprocess
from pathlib import Path

import pytest
import yaml

from benchmarks import peer, report, run, servers
from benchmarks.report import INPROC_BATCH, OURS, PEER, Cell, Goal
from tschat.bench.loadgen import Summary
from tschat.bench.scenarios import DISTINCT, MULTI_TURN
from tschat.settings import REPO_ROOT


def test_doctests() -> None:
    for module in (peer, run, report, servers):
        assert doctest.testmod(module).failed == 0, module.__name__


def test_default_run_is_the_default_archive_against_the_peer() -> None:
    args = run.parse_args([])
    plan = run.build_plan(args)
    config = plan.config
    template = yaml.safe_load(run.MODEL_CONFIG.read_text(encoding="utf-8"))
    assert config.batch_size == template["batchSize"]
    assert (config.workers, config.threads, config.continuous) == (1, 2, True)
    assert plan.n_ctx == 2048 and plan.peer
    assert plan.scenarios == (DISTINCT, MULTI_TURN) and plan.clients == (1, 8, 16)
    cells = plan.cells()
    assert len(cells) == 6 and len({first for _, _, first in cells}) == 6
    multi = plan.spec(MULTI_TURN, 8, 500)
    assert (multi.requests, multi.turns, len(multi.conversations())) == (80, 10, 8)
    distinct = plan.spec(DISTINCT, 16, 300)
    assert distinct.requests == 48 and distinct.repeat_penalty == 1.0
    assert distinct.temperature == 0.0
    # The in-process batched limit runs the very requests of the 8-client distinct cell.
    first = next(f for s, c, f in cells if (s, c) == (DISTINCT, 8))
    assert plan.limit_spec(8).conversations() == plan.spec(DISTINCT, 8, first).conversations()


def test_quick_no_peer_and_batching_defaults() -> None:
    quick = run.build_plan(run.parse_args(["--quick", "--no-peer"]))
    assert quick.clients == (1, 8) and quick.turns == 4 and not quick.peer
    batching = run.parse_args(["--compare-batching"])
    assert (batching.clients, batching.max_tokens) == ("1,4,8,16", 128)


def test_repeats_measure_each_cell_again_on_new_requests_with_the_order_swapped() -> None:
    plan = run.build_plan(run.parse_args(["--repeats", "2"]))
    cells = plan.cells()
    assert len(cells) == 12 and len({first for _, _, first in cells}) == 12
    assert [(s, c) for s, c, _ in cells[:6]] == [(s, c) for s, c, _ in cells[6:]]
    # The batched limit still runs the first repeat's requests of the 8-client distinct cell.
    first = next(f for s, c, f in cells if (s, c) == (DISTINCT, 8))
    assert plan.limit_spec(8).conversations() == plan.spec(DISTINCT, 8, first).conversations()
    measured = [
        Cell(OURS, DISTINCT, 8, summary(90.0, 300.0)),
        Cell(PEER, DISTINCT, 8, summary(100.0, 400.0)),
        Cell(PEER, DISTINCT, 8, summary(80.0, 200.0)),
        Cell(OURS, DISTINCT, 8, summary(100.0, 200.0)),
    ]
    cells_out = report.mean_repeats(measured)
    (target,) = [t for t in report.evaluate_goals(cells_out) if "tokens/s vs llama" in t.name]
    assert target.value == pytest.approx(95.0 / 90.0)
    ours = report.find_cell(cells_out, OURS, DISTINCT, 8)
    assert ours is not None and ours.summary.requests == 16 and ours.ttft_p50_ms == 250.0
    assert "distinct, 8 clients: 0.90, 1.25" in report.repeat_ratios(measured)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--scenarios", "distinct,nope"], "unknown scenarios"),
        (["--clients", "0,8"], "positive"),
        (["--repeats", "0"], "at least 1"),
    ],
)
def test_bad_options_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        run.build_plan(run.parse_args(argv))


def summary(tps: float, p50: float = 100.0, p95: float = 200.0) -> Summary:
    return Summary(8, 0, 800, 800 / tps, tps, p50, p95, 9.0, 12.0, 50.0)


def test_goals_against_the_peer_the_limit_and_an_absolute_bound() -> None:
    cells = [
        Cell(OURS, DISTINCT, 8, summary(210.0, 90.0)),
        Cell(PEER, DISTINCT, 8, summary(200.0, 100.0)),
        Cell(OURS, DISTINCT, 16, summary(210.0, p95=2500.0)),
        Cell(OURS, MULTI_TURN, 8, summary(150.0), turn_ttft_ms=(50.0, 80.0, 140.0)),
        Cell(PEER, MULTI_TURN, 8, summary(160.0), turn_ttft_ms=(40.0, 70.0, 120.0)),
        Cell(INPROC_BATCH, DISTINCT, 8, summary(250.0)),
    ]
    targets = {t.name: t for t in report.evaluate_goals(cells)}
    assert targets["tokens/s vs llama-server, distinct, 8 clients"].value == pytest.approx(1.05)
    assert targets["tokens/s vs llama-server, distinct, 8 clients"].passed
    assert not targets["tokens/s vs llama-server, multi-turn, 8 clients"].passed
    limit = targets["tokens/s vs in-process batched decode of 8, distinct, 8 clients"]
    assert limit.value == pytest.approx(210 / 250) and not limit.passed
    assert targets["TTFT p50 vs llama-server, distinct, 8 clients"].passed
    p95 = targets["TTFT p95, distinct, 16 clients"]
    assert (p95.value, p95.passed) == (2500.0, False)
    last = targets["last-turn TTFT p50 vs llama-server, multi-turn, 8 clients"]
    assert last.value == pytest.approx(140 / 120) and not last.passed
    # Not measured: no line (no 1-client cells, no peer at 16 clients for a ratio).
    assert not any("1 client" in name for name in targets)
    assert "tokens/s vs llama-server, distinct, 16 clients" not in targets


def test_goals_without_the_peer_keep_the_absolute_ones() -> None:
    cells = [Cell(OURS, DISTINCT, 16, summary(100.0, p95=1500.0))]
    targets = report.evaluate_goals(cells)
    assert [t.name for t in targets] == ["TTFT p95, distinct, 16 clients"]
    assert targets[0].passed


def test_a_goal_is_declared_once_and_evaluated_per_cell() -> None:
    goal = Goal("x", "tokens_per_s", PEER, 1.0, True, (1, 2), (DISTINCT,))
    cells = [Cell(s, DISTINCT, c, summary(100.0)) for s in (OURS, PEER) for c in (1, 2)]
    assert len(report.evaluate_goals(cells, [goal])) == 2


def test_tables_and_csv_show_both_servers(tmp_path: Path) -> None:
    cells = [
        Cell(OURS, MULTI_TURN, 8, summary(150.0), turn_ttft_ms=(50.0, None, 140.0), load=1.2),
        Cell(PEER, MULTI_TURN, 8, summary(100.0), turn_ttft_ms=(40.0, 70.0), load=1.4),
        Cell(OURS, DISTINCT, 1, summary(90.0)),
        Cell(INPROC_BATCH, DISTINCT, 8, summary(250.0), label="in-process batch of 8"),
    ]
    table = report.peer_table(cells).splitlines()
    assert table[2].startswith("| multi-turn | 8 | 150.0 | 100.0 | 1.50 |")
    assert "| 140 | 70 |" in table[2] and table[2].endswith("| 1.2/1.4 |")
    assert table[3].startswith("| distinct | 1 | 90.0 | - | - |")  # no peer cell
    assert "in-process batch of 8 | 8 | 250.0" in report.limits_table(cells)
    lines = report.cells_csv(cells).splitlines()
    assert lines[0].startswith("server,label,scenario,clients,")
    assert "50.0;;140.0" in lines[1]
    text = report.peer_report(cells, report.evaluate_goals(cells), "a machine", "cmd")
    assert "## Targets" in text and "tokens/s vs llama-server, multi-turn, 8 clients" in text
    chart = report.write_peer_chart(cells, tmp_path / "chart.html", "title")
    assert chart.stat().st_size > 1000


def test_an_unbuilt_peer_says_how_to_build_or_skip_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLAMA_SERVER_CACHE", str(tmp_path))
    path, built = peer.binary_path("0.3.36")
    assert not built and path.parent.parent == tmp_path and path.name == "llama-server"
    with pytest.raises(peer.PeerUnavailable, match="--no-peer") as caught:
        peer.find_binary("0.3.36")
    assert "build_llama_server.sh" in str(caught.value)


def test_the_peer_is_cached_under_the_wheel_flags() -> None:
    """The server's folder carries the wheel's flags id: the same flags, one declaration."""
    script = REPO_ROOT / "scripts"
    flags_id = subprocess.run(
        ["bash", "-c", f"source {script}/llama_cpp_flags.sh && llama_cmake_args cpu "
         "&& echo $LLAMA_FLAGS_ID"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    path, _ = peer.binary_path("0.3.36")
    assert f"llama-server-0.3.36-cpu-{flags_id}-" in str(path)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--backend", "tpu", "--path"], "unknown backend"), (["--bogus"], "unknown option")],
)
def test_build_script_refuses_bad_arguments(args: list[str], message: str) -> None:
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "build_llama_server.sh"), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and message in result.stderr
