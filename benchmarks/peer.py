"""llama-server as the benchmark's peer: the same GGUF, threads, slots and context per slot.

``scripts/build_llama_server.sh`` builds it (once, cached) from the llama.cpp that the installed
llama-cpp-python ships, with the flags of our wheel. :class:`PeerServer` starts it on a free
loopback port with an API key of its own, waits for ``/health``, and stops it again::

    with PeerServer(binary, model, threads=2, slots=8) as peer:
        run_target(peer.target(), spec)

The settings mirror the engine's: ``-np`` slots of ``--ctx-size / -np`` = 2048 tokens each in
separate KV streams (``--no-kv-unified``, the engine's default layout), continuous batching,
``-t``/``-tb`` threads. The rest (batch sizes, prompt cache, flash attention) stays at
llama-server's defaults.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path

import requests

from tschat.bench.loadgen import Target
from tschat.ops import process
from tschat.settings import REPO_ROOT

BUILD_SCRIPT = REPO_ROOT / "scripts" / "build_llama_server.sh"
LLAMA_CPP_DIST = "llama-cpp-python"
CTX_PER_SLOT = 2048  # tokens of context per sequence, as the engine's n_ctx
LABEL = "llama-server"


class PeerUnavailable(RuntimeError):
    """llama-server is not built, or did not start."""


def installed_version() -> str:
    """The version of the installed llama-cpp-python, whose llama.cpp the peer is built from."""
    return metadata.version(LLAMA_CPP_DIST)


def binary_path(version: str | None = None) -> tuple[Path, bool]:
    """Where build_llama_server.sh keeps llama-server for ``version``, and whether it is built.

    The backend is the script's: $LLAMA_BACKEND, else cpu (``make bench`` sets it).
    """
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--path", "--version", version or installed_version()],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if result.returncode not in (0, 1) or not result.stdout.strip():
        raise PeerUnavailable(f"{BUILD_SCRIPT.name} --path failed: {result.stderr.strip()}")
    return Path(result.stdout.strip()), result.returncode == 0


def find_binary(version: str | None = None) -> Path:
    """The built llama-server; PeerUnavailable with what to do when it is not built."""
    path, built = binary_path(version)
    if not built:
        raise PeerUnavailable(
            f"llama-server is not built ({path} is missing): run "
            f"`bash scripts/build_llama_server.sh --version {version or installed_version()}` "
            "(about 10 minutes on 2 cores, once), or skip the peer with --no-peer."
        )
    return path


def server_args(
    model: Path, port: int, api_key: str, threads: int, slots: int, ctx_per_slot: int
) -> list[str]:
    """llama-server's command-line options for the peer.

    >>> args = server_args(Path("m.gguf"), 8081, "k", 2, 8, 2048)
    >>> args[args.index("--ctx-size") + 1], args[args.index("--parallel") + 1]
    ('16384', '8')
    >>> "--no-kv-unified" in args and "--cont-batching" in args and "127.0.0.1" in args
    True
    """
    return [
        "--model", str(model),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--api-key", api_key,
        "--threads", str(threads),
        "--threads-batch", str(threads),
        "--parallel", str(slots),
        "--ctx-size", str(ctx_per_slot * slots),  # divided among the slots
        "--no-kv-unified",
        "--cont-batching",
        "--no-webui",
    ]  # fmt: skip


class PeerServer:
    """A llama-server process on a free loopback port, stopped on exit (also on Ctrl-C)."""

    def __init__(
        self,
        binary: Path,
        model: Path,
        *,
        threads: int = 2,
        slots: int = 8,
        ctx_per_slot: int = CTX_PER_SLOT,
        startup_timeout_s: float = 120.0,
        log_dir: Path | None = None,
    ) -> None:
        self.binary = binary
        self.model = model
        self.threads = threads
        self.slots = slots
        self.ctx_per_slot = ctx_per_slot
        self.startup_timeout_s = startup_timeout_s
        self.api_key = secrets.token_urlsafe(24)
        self.port = process.free_loopback_ports(1)[0]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_dir or tempfile.mkdtemp(prefix="llama-server-")) / "server.log"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def target(self) -> Target:
        return Target.openai(self.base_url, self.api_key, LABEL)

    def start(self) -> PeerServer:
        args = server_args(
            self.model, self.port, self.api_key, self.threads, self.slots, self.ctx_per_slot
        )
        # Its own LLAMA_ARG_* settings from the environment would change what is measured.
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                [str(self.binary), *args], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        assert self.popen is not None
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise PeerUnavailable(
                    f"llama-server exited with status {self.popen.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(requests.RequestException):
                if requests.get(f"{self.base_url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise PeerUnavailable(
            f"llama-server did not answer /health in {self.startup_timeout_s:.0f} s:\n"
            + self.log_tail()
        )

    def props(self) -> dict[str, object]:
        """llama-server's /props (slots, context per slot), read with the API key."""
        response = requests.get(
            f"{self.base_url}/props",
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=10,
        )
        response.raise_for_status()
        data: dict[str, object] = response.json()
        return data

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; safe to call twice."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)

    def __enter__(self) -> PeerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
