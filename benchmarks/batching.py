"""The batching comparison: TorchServe configurations side by side, next to in-process limits.

``python -m benchmarks.run --compare-batching`` (``benchmarks/run.py`` parses the options). One
run, one model, the same threads throughout:

1. in-process (no server): one sequence at a time (the single-stream limit), and a batch of 8
   decoded together (the batched limit);
2. a TorchServe of its own (free loopback ports, a temporary run directory and model store,
   archives built with package_model.sh), one configuration registered at a time:

   =========  =====================================================================
   b1w1       batch size 1, 1 worker with 2 threads
   b1w2       batch size 1, 2 workers with 1 thread each (threads live in the archive)
   b8         batch size 8, dynamic batching (max_batch_delay 50 ms), 1 worker, 2 threads
   cont8      continuous batching, batch size 8, 1 worker, 2 threads
   b4w2       batch size 4, dynamic, 2 workers with 1 thread each (only with --configs)
   =========  =====================================================================

   each at 1, 4, 8 and 16 concurrent streaming clients, every request the same prompt (the
   shared-prefix scenario), plus 8 clients arriving staggered for the batching configurations.

It prints each cell as it is measured, then the target ratios of this comparison with
PASS/FAIL, and writes benchmarks/results/bench-<time>.csv, .md and .html (a Plotly chart).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import inprocess, report
from benchmarks.report import INPROC_BATCH, INPROC_SINGLE
from benchmarks.servers import around_limits, parse_clients, private_torchserve, say, say_targets
from tschat.api.keys import KeyStore
from tschat.bench.experiments import (
    LoadPlan,
    Row,
    ServedConfig,
    package_config,
    register_config,
    standard_configs,
)
from tschat.bench.experiments import measure_config as measure_config_cells
from tschat.bench.loadgen import format_summary, make_prompt
from tschat.bench.scenarios import Turn
from tschat.ops.serving import ServingRegistry
from tschat.settings import Settings

# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class Plan:
    """What one run measures: the served load, and the in-process limits on the same prompt."""

    load: LoadPlan
    threads: int
    batch: int
    inproc_single_repeats: int
    inproc_batch_repeats: int
    configs: tuple[ServedConfig, ...]


def measure_inprocess(plan: Plan, model: Path) -> list[Row]:
    """The single-stream and batched limits, one row each."""
    rows = []
    for sequences, repeats, kind in (
        (1, plan.inproc_single_repeats, INPROC_SINGLE),
        (plan.batch, plan.inproc_batch_repeats, INPROC_BATCH),
    ):
        turns = [Turn(plan.load.prompt, plan.load.max_tokens)] * (sequences * repeats)
        # Every request asks the same prompt, served or not: the warm-up asks it too.
        result = inprocess.measure(model, plan.threads, turns, sequences, warm_up=plan.load.prompt)
        row = Row(
            kind,
            result.name,
            sequences,
            0.0,
            sequences,
            0,
            0,
            plan.threads,
            False,
            result.summary,
        )
        say(f"{result.name:<44} {format_summary(result.summary)}")
        rows.append(row)
    return rows


def measure_config(
    plan: Plan, config: ServedConfig, settings: Settings, keys: KeyStore, model: Path
) -> list[Row]:
    """Package and register one configuration, load it at each cell, unregister it."""
    package_config(model, config, settings.model_store, config.key)
    registry = ServingRegistry.for_settings(settings, keys)
    pids = register_config(registry, config, f"{config.key}.mar", config.key)
    try:
        return measure_config_cells(
            settings, keys, config, config.key, pids, plan.load, on_row=say_row
        )
    finally:
        with contextlib.suppress(Exception):
            registry.unregister(config.key)


def say_row(row: Row) -> None:
    arrival = f", {row.stagger_s:g} s apart" if row.stagger_s else ""
    say(
        f"{row.label:<36} {row.clients:>2} clients{arrival:<12} "
        f"{format_summary(row.summary)}; RSS "
        + "+".join(f"{m:.0f}" for m in row.worker_rss_mb)
        + f" MB; CPU s workers {row.cpu_workers_s:.1f} frontend {row.cpu_frontend_s:.1f}"
        f" clients {row.cpu_client_s:.1f}"
    )
    for error in row.summary.errors:
        say(f"    error: {error}")


def measure_served(plan: Plan, model: Path, keep: bool) -> list[Row]:
    rows: list[Row] = []
    with private_torchserve(keep) as (settings, keys):
        for config in plan.configs:
            try:
                rows += measure_config(plan, config, settings, keys, model)
            except Exception as exc:  # noqa: BLE001 - one broken configuration spoils no other
                say(f"{config.label}: not measured ({type(exc).__name__}: {exc})")
    return rows


def build_plan(args: argparse.Namespace) -> Plan:
    configs = standard_configs(
        args.threads, args.batch, args.max_batch_delay, args.continuous_delay
    )
    if args.configs:
        wanted = set(args.configs.split(","))
        unknown = wanted - {c.key for c in configs}
        if unknown:
            raise SystemExit(f"unknown configurations: {', '.join(sorted(unknown))}")
        configs = [c for c in configs if c.key in wanted]
    else:
        configs = configs[:4]  # the four; the two-worker batching one on request
    load = LoadPlan(
        clients=parse_clients(args.clients),
        rounds=args.rounds,
        min_requests=args.min_requests,
        max_tokens=args.max_tokens,
        prompt=make_prompt(args.prompt_words),
        stagger_s=args.stagger,
        staggered_clients=args.batch,
    )
    return Plan(
        load=load,
        threads=args.threads,
        batch=args.batch,
        inproc_single_repeats=args.min_requests,
        inproc_batch_repeats=args.rounds,
        configs=tuple(configs),
    )


def run(args: argparse.Namespace, model: Path, machine: str, command: str) -> int:
    """The whole comparison; results under ``args.out_dir``."""
    plan = build_plan(args)
    say(f"Model: {model.name}; {plan.threads} threads; answers of {plan.load.max_tokens} tokens")
    started = time.monotonic()
    limits, served = around_limits(
        lambda: measure_inprocess(plan, model),
        lambda: measure_served(plan, model, args.keep),
        report.mean_row,
    )
    for row in limits:
        say(f"{row.label:<44} {format_summary(row.summary)}")
    rows = limits + served
    keys = {c.key for c in plan.configs}
    # The targets concern one worker with all the threads; other configurations are extra.
    batched = [c.key for c in plan.configs if c.batch_size > 1 and c.workers == 1]
    continuous = next((k for k in batched if k.startswith("cont")), None)
    targets = report.evaluate_targets(
        rows,
        single="b1w1" if "b1w1" in keys else "",
        two_workers="b1w2" if "b1w2" in keys else "",
        batched=batched,
        continuous=continuous,
        batch_clients=plan.batch,
    )
    say_targets(targets)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out_dir
    csv_path = report.write_csv(rows, out / f"bench-{stamp}.csv")
    md_path = out / f"bench-{stamp}.md"
    md_path.write_text(report.markdown_report(rows, targets, machine, command), encoding="utf-8")
    html_path = report.write_chart(rows, out / f"bench-{stamp}.html", f"{model.name}: {machine}")
    elapsed = time.monotonic() - started
    say(f"\nWrote {csv_path}, {md_path.name} and {html_path.name} ({elapsed:.0f} s in all)")
    return 0
