"""What both benchmark runs share: a private TorchServe, printing, stopping on signals, results."""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tschat import process
from tschat.auth import KeyStore
from tschat.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


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
