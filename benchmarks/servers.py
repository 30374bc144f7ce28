"""What both benchmark runs share: a private TorchServe, printing, stopping on signals, results."""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from benchmarks.report import Target
from tschat.api.keys import KeyStore
from tschat.ops import process
from tschat.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"

Limit = TypeVar("Limit")
Measured = TypeVar("Measured")


def say(text: str) -> None:
    print(text, flush=True)


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


@contextlib.contextmanager
def private_torchserve(keep: bool = False) -> Iterator[tuple[Settings, KeyStore]]:
    """A TorchServe of its own in a temporary directory, stopped (and removed) on exit."""
    root = Path(tempfile.mkdtemp(prefix="tsbench-"))
    settings = bench_settings(root)
    try:
        settings.model_store.mkdir(parents=True)
        say(f"Starting TorchServe on 127.0.0.1:{settings.inference_port} (run dir {root}) ...")
        process.start(settings)
        yield settings, KeyStore(settings)
    finally:
        process.stop(settings)
        if keep:
            say(f"Kept the run directory and logs: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM end the run through the finally blocks, which stop the servers."""

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    # A shell starts background jobs with SIGINT ignored; a benchmark should still stop on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, leave)


def around_limits(
    limits: Callable[[], list[Limit]],
    served: Callable[[], list[Measured]],
    mean: Callable[[Limit, Limit], Limit],
) -> tuple[list[Limit], list[Measured]]:
    """The in-process limits measured before and after the served cells, averaged.

    On a shared machine speed drifts over minutes; the mean of both brackets the cells between.
    """
    before = limits()
    cells = served()
    say("In-process limits again, after the served cells:")
    after = limits()
    return [mean(a, b) for a, b in zip(before, after, strict=True)], cells


def say_targets(targets: Sequence[Target]) -> None:
    say("")
    say("Targets (ratios within this run):")
    for target in targets:
        say("  " + target.line())


def parse_clients(text: str) -> tuple[int, ...]:
    """Client counts from "1,8,16".

    >>> parse_clients("1,8,16")
    (1, 8, 16)
    """
    try:
        clients = tuple(int(c) for c in text.split(","))
    except ValueError:
        clients = ()
    if not clients or any(c < 1 for c in clients):
        raise SystemExit("--clients takes positive counts, e.g. 1,8,16")
    return clients
