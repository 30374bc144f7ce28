"""Start, stop and inspect the local TorchServe: argv lists, pid tracking, no shell.

Process tree of a running server (all in one session, led by the launcher)::

    torchserve --start --foreground ...             launcher (Python), waits on the frontend
    └── java ... ModelServer -f var/config.properties   frontend, pid in var/torchserve.pid
        └── python model_service_worker.py ...       one per worker, socket in var/tmp

The state reported by :func:`status` is always read from the OS and the server, never remembered.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

import psutil

from tschat.api.inference import InferenceClient
from tschat.api.keys import Keys
from tschat.errors import (
    AuthError,
    JavaMissing,
    PortInUse,
    SettingsError,
    SetupError,
    StartupFailed,
    StartupTimeout,
    TsChatError,
)
from tschat.settings import Settings

FRONTEND_CLASS = "org.pytorch.serve.ModelServer"
# TorchServe's worker thread hands each call's request to CompletableFuture.runAsync, which starts
# a new Java thread for every call when the JVM's common pool has one thread (its default on two
# cores). In continuous batching that is a thread per generated token. Two pool threads, one
# client, two cores: 0.78 ms instead of 1.01-1.05 ms between handler calls, 0.92 ms instead of
# 1.29-1.31 ms of frontend CPU a token, 91.5-94.1 instead of 87.6-89.2 tokens/s.
JVM_ARGS = " ".join(
    (
        "-Xmx1g",
        "-XX:+UseContainerSupport",
        "-Djava.util.concurrent.ForkJoinPool.common.parallelism=2",
    )
)
MIN_JAVA = 17
LogName = Literal[
    "ts_log.log",
    "model_log.log",
    "access_log.log",
    "model_metrics.log",
    "ts_metrics.log",
    "console.log",  # the launcher's and the JVM's own output
]
LOG_NAMES: tuple[LogName, ...] = get_args(LogName)
CONSOLE_LOG = "console.log"
SOCKET_PATH_MAX = 107  # sun_path holds 108 bytes including the final NUL
POLL_S = 0.25
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600
# The launcher, the Java frontend and the workers create every file owner-only.
CHILD_UMASK = 0o077
# llama.cpp's CPU threads meet at an OpenMP barrier after every graph node. By default a thread
# that arrives first spins for a long while, so when anything else wants one of the cores (the
# frontend, the worker's own Python, another process) a decode step can take seconds instead of
# tens of milliseconds. Sleeping at once (OMP_WAIT_POLICY=PASSIVE) cures that but halves one
# stream's speed on an idle machine; a short spin first costs nothing measurable when idle and
# keeps most of the cure (measured in the README, "Where the worker's time goes"). Set for the
# workers unless the environment already says otherwise.
THREAD_ENV = {"GOMP_SPINCOUNT": "1000"}


# Launchers started by this process, reaped when they exit (so none lingers as a zombie).
_launchers: list[subprocess.Popen[bytes]] = []


def _reap() -> None:
    for launcher in list(_launchers):
        if launcher.poll() is not None:
            _launchers.remove(launcher)


@dataclass(frozen=True)
class ServerStatus:
    """What the OS and the server say right now about the TorchServe of some settings."""

    running: bool
    pid: int | None
    health: str | None
    open_ports: tuple[int, ...]
    worker_pids: tuple[int, ...]
    started_at: datetime | None
    owned: bool

    @property
    def summary(self) -> str:
        """One line for a status display."""
        if not self.running:
            return "TorchServe is stopped."
        who = f"pid {self.pid}" if self.pid else "not started from this folder"
        health = self.health or "health unknown"
        return f"TorchServe is running ({who}, {health}, {len(self.worker_pids)} worker processes)."


# ---------------------------------------------------------------- configuration


METRICS_CONFIG = Path(__file__).with_name("torchserve_metrics.yaml")
# TorchServe's log files, each line once and without its lines for every decode step.
LOG_CONFIG = Path(__file__).with_name("torchserve_log4j2.xml")


def allowed_urls_pattern(model_store: Path) -> str:
    """The ``allowed_urls`` regex: only file:// URLs of .mar files directly in the model store.

    TorchServe matches registration URLs (``file://``, ``http(s)://``) against it and refuses
    the rest. Bare archive names such as ``smollm2.mar`` are not URLs: TorchServe never matches
    them and loads them from the model store, which is how this package registers models.

    >>> pattern = allowed_urls_pattern(Path("/srv/model store"))
    >>> bool(re.fullmatch(pattern, "file:///srv/model store/smollm2.mar", re.IGNORECASE))
    True
    >>> [bool(re.fullmatch(pattern, url, re.IGNORECASE)) for url in (
    ...     "http://example.com/smollm2.mar", "file:///etc/smollm2.mar",
    ...     "file:///srv/model store/sub/x.mar", "file:///srv/model store/x.tar.gz")]
    [False, False, False, False]
    """
    store = model_store.as_posix().rstrip("/") + "/"
    # re.escape only puts backslashes before non-letters, which Java's regex reads the same way.
    return "file://" + re.escape(store) + r"[^/]+\.mar"


def config_text(settings: Settings) -> str:
    """The content of config.properties for these settings."""
    store = str(settings.model_store)
    for bad, why in (
        (",", "TorchServe splits allowed_urls at commas"),
        ("$$", "TorchServe expands $$NAME$$"),
    ):
        if bad in store:
            raise SettingsError(
                f"The model store path {store!r} contains {bad!r}, which {why}; move the store."
            )
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    values = {
        "inference_address": f"http://{host}:{settings.inference_port}",
        "management_address": f"http://{host}:{settings.management_port}",
        "metrics_address": f"http://{host}:{settings.metrics_port}",
        "grpc_inference_address": settings.host,
        "grpc_management_address": settings.host,
        "grpc_inference_port": str(settings.grpc_inference_port),
        "grpc_management_port": str(settings.grpc_management_port),
        "model_store": store,
        "enable_model_api": "true",
        "allowed_urls": allowed_urls_pattern(settings.model_store),
        "metrics_mode": "prometheus",
        "enable_envvars_config": "false",
        "install_py_dep_per_model": "false",
        "default_workers_per_model": "1",
        "job_queue_size": str(settings.job_queue_size),
        "max_request_size": str(settings.max_request_size),
        "token_expiration_min": f"{settings.token_expiration_min:g}",
        "vmargs": JVM_ARGS,
        "default_response_timeout": str(settings.default_response_timeout),
        "disable_system_metrics": "false",
        # The handler parses request bodies itself, strictly (no NaN, exact UTF-8 errors).
        "decode_input_request": "false",
        # TorchServe's metrics plus the handler's token metrics, exported on the metrics port.
        "metrics_config": str(METRICS_CONFIG),
    }
    lines = [
        "# Written by tschat.ops.process.write_config; changes are overwritten on the next start."
    ]
    lines += [f"{key}={escape_property(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def escape_property(value: str) -> str:
    r"""Escape a value for java.util.Properties (read as ISO-8859-1, backslash escapes).

    >>> escape_property(r"a\.b")
    'a\\\\.b'
    >>> escape_property("café")
    'caf\\u00e9'
    """
    out = []
    for char in value:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif char in "\n\r\t\f":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}[char])
        elif code > 0x7E:
            data = char.encode("utf-16-be")
            out.extend(
                f"\\u{int.from_bytes(data[i : i + 2], 'big'):04x}" for i in range(0, len(data), 2)
            )
        else:
            out.append(char)
    text = "".join(out)
    return "\\" + text if text.startswith(" ") else text


def write_config(settings: Settings) -> Path:
    """Write config.properties (owner-only, 0600) into the run directory and return its path."""
    prepare_run_dir(settings)
    return write_private(settings.config_file, config_text(settings))


# ---------------------------------------------------------------- owner-only files


def write_private(path: Path, text: str) -> Path:
    """Replace ``path`` with ``text`` in a file only its owner can read (0600), atomically."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.unlink(missing_ok=True)  # O_EXCL below: never write through someone's file
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), PRIVATE_FILE)
        handle.write(text)
    os.replace(temporary, path)
    return path


def _open_private(path: Path, flags: int) -> int:
    """A descriptor of ``path``, created owner-only (0600) when it is new."""
    descriptor = os.open(path, flags | os.O_CREAT, PRIVATE_FILE)
    os.fchmod(descriptor, PRIVATE_FILE)
    return descriptor


def prepare_run_dir(settings: Settings) -> None:
    """Create the run directory, logs/ and tmp/ owner-only (0700), and make what is already
    there owner-only too (a run directory made by an older version was world-readable).

    TorchServe writes key_file.json before it restricts it, and its logs with the umask: in a
    folder no one else may enter, and with the umask the launcher gets (:data:`CHILD_UMASK`),
    neither is ever readable by anyone else.
    """
    for folder in (settings.run_dir, settings.log_dir, settings.tmp_dir):
        folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        os.chmod(folder, PRIVATE_DIR)
    for folder in (settings.run_dir, settings.log_dir):
        for entry in os.scandir(folder):
            if entry.is_file(follow_symlinks=False):
                mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
                if mode & 0o077:
                    os.chmod(entry.path, mode & 0o700)


# ---------------------------------------------------------------- checks


def java_command(environ: Mapping[str, str]) -> str | None:
    """The java TorchServe's launcher runs: $JAVA_HOME/bin/java, else java on PATH."""
    java_home = environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        return str(candidate) if candidate.is_file() else None
    return shutil.which("java", path=environ.get("PATH"))


def parse_java_version(text: str) -> int | None:
    """The major version in the output of ``java -version``.

    >>> parse_java_version('openjdk version "17.0.15" 2025-04-15')
    17
    >>> parse_java_version('java version "1.8.0_392"'), parse_java_version('openjdk version "21"')
    (8, 21)
    >>> parse_java_version("command not found") is None
    True
    """
    match = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if match is None:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def check_java(environ: Mapping[str, str] | None = None) -> int:
    """Return the Java major version, or raise JavaMissing if it is missing or older than 17."""
    environ = os.environ if environ is None else environ
    java = java_command(environ)
    if java is None:
        raise JavaMissing(None)
    try:
        result = subprocess.run(
            [java, "-version"],
            capture_output=True,
            text=True,
            timeout=60,
            env=dict(environ),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise JavaMissing(f"{java} that does not run ({error})") from error
    version = parse_java_version(result.stderr + result.stdout)
    if version is None or version < MIN_JAVA:
        raise JavaMissing(f"Java {version}" if version else f"{java} with an unknown version")
    return version


def _ports(settings: Settings) -> list[tuple[int, str]]:
    return [
        (settings.inference_port, "TSCHAT_INFERENCE_PORT"),
        (settings.management_port, "TSCHAT_MANAGEMENT_PORT"),
        (settings.metrics_port, "TSCHAT_METRICS_PORT"),
        (settings.grpc_inference_port, "TSCHAT_GRPC_INFERENCE_PORT"),
        (settings.grpc_management_port, "TSCHAT_GRPC_MANAGEMENT_PORT"),
    ]


def stop_child(child: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    """End a child process: SIGTERM, then SIGKILL if it is still there after ``grace_s``."""
    if child.poll() is not None:
        return
    child.terminate()
    try:
        child.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait(timeout=grace_s)


def free_loopback_ports(count: int) -> list[int]:
    """``count`` distinct ports on 127.0.0.1 that nothing listens on right now."""
    probes: list[socket.socket] = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind(("127.0.0.1", 0))
            probes.append(probe)
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def check_ports_free(settings: Settings) -> None:
    """Raise PortInUse for the first TorchServe port another program listens on."""
    for port, variable in _ports(settings):
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            # Same option as the server's own bind: sockets in TIME_WAIT do not block it.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((settings.host, port))
            except OSError as error:
                if error.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise PortInUse(settings.host, port, variable) from None
                raise SetupError(f"Cannot use {settings.host}:{port}: {error.strerror}.") from error


def _open_ports(settings: Settings) -> tuple[int, ...]:
    found = []
    for port, _ in _ports(settings):
        with (
            contextlib.suppress(OSError),
            socket.create_connection((settings.host, port), timeout=0.5),
        ):
            found.append(port)
    return tuple(found)


# ---------------------------------------------------------------- finding our processes


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return list(process.cmdline())
    except (psutil.Error, OSError):
        return []


def _is_frontend(process: psutil.Process, settings: Settings) -> bool:
    cmdline = _cmdline(process)
    return FRONTEND_CLASS in cmdline and str(settings.config_file) in cmdline


def _find_frontend(settings: Settings) -> psutil.Process | None:
    """Our TorchServe frontend: the pid file's process, else any started with our config file."""
    with contextlib.suppress(OSError, ValueError):
        pid = int(settings.pid_file.read_text().strip())
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            if _is_frontend(process, settings) and process.status() != psutil.STATUS_ZOMBIE:
                return process
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if _is_frontend(process, settings) and process.status() != psutil.STATUS_ZOMBIE:
                return process
    return None


def _stray_workers(settings: Settings) -> list[psutil.Process]:
    """Workers whose socket lives in our tmp dir (left behind if the frontend died)."""
    marker = str(settings.tmp_dir / ".ts.sock.")
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if any(arg.startswith(marker) for arg in _cmdline(process)):
                found.append(process)
    return found


def _family(frontend: psutil.Process | None, settings: Settings) -> list[psutil.Process]:
    """The frontend, its launcher, every descendant, and stray workers: all that stop must end."""
    members: dict[int, psutil.Process] = {}
    if frontend is not None:
        members[frontend.pid] = frontend
        with contextlib.suppress(psutil.Error):
            for child in frontend.children(recursive=True):
                members[child.pid] = child
        with contextlib.suppress(psutil.Error):
            parent = frontend.parent()
            if (
                parent is not None
                and "--foreground" in _cmdline(parent)
                and any(arg.endswith("torchserve") for arg in _cmdline(parent))
            ):
                members[parent.pid] = parent
    for worker in _stray_workers(settings):
        members.setdefault(worker.pid, worker)
    return list(members.values())


# ---------------------------------------------------------------- probing the server


def _probe(settings: Settings, timeout: float = 2.0) -> tuple[bool, str | None]:
    """Whether TorchServe answers on the inference port, and its /ping status (None: no key)."""
    key = None
    with contextlib.suppress(TsChatError, OSError):
        key = Keys.from_file(settings.key_file).inference
    client = InferenceClient(settings.inference_url, key, timeout, connect_timeout=timeout)
    try:
        return True, client.ping()
    except AuthError:
        return True, None  # it answers, but refuses the key (or we have none)
    except TsChatError:
        return False, None  # nothing answers, or not like TorchServe
    finally:
        client.session.close()


def status(settings: Settings) -> ServerStatus:
    """Ask the OS and the server whether TorchServe runs, and how it is."""
    _reap()
    frontend = _find_frontend(settings)
    answers, health = _probe(settings)
    workers: tuple[int, ...] = ()
    started_at = None
    if frontend is not None:
        with contextlib.suppress(psutil.Error):
            workers = tuple(
                child.pid
                for child in frontend.children(recursive=True)
                if "model_service_worker" in " ".join(_cmdline(child))
            )
            started_at = datetime.fromtimestamp(frontend.create_time(), tz=timezone.utc)
    return ServerStatus(
        running=frontend is not None or answers,
        pid=frontend.pid if frontend is not None else None,
        health=health,
        open_ports=_open_ports(settings),
        worker_pids=workers,
        started_at=started_at,
        owned=frontend is not None,
    )


# ---------------------------------------------------------------- start and stop


@contextlib.contextmanager
def _locked(settings: Settings, timeout: float) -> Iterator[None]:
    """Hold the run directory's lock so concurrent callers (e.g. app reruns) take turns."""
    prepare_run_dir(settings)
    with os.fdopen(_open_private(settings.lock_file, os.O_RDWR), "r+b") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StartupFailed(
                        "another start or stop of this TorchServe is still running."
                    ) from None
                time.sleep(POLL_S)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _launcher_argv(settings: Settings) -> list[str]:
    torchserve = Path(sys.executable).parent / "torchserve"
    if not torchserve.is_file():
        raise SetupError(
            f"TorchServe is not installed next to {sys.executable}; install the requirements first."
        )
    return [
        str(torchserve),
        "--start",
        "--foreground",
        "--ncs",
        "--model-store",
        str(settings.model_store),
        "--ts-config",
        str(settings.config_file),
        "--log-config",
        str(LOG_CONFIG),
    ]


def _launch_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    # TS_CONFIG_FILE would replace our --ts-config; our file is the only configuration.
    env.pop("TS_CONFIG_FILE", None)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")  # workers run `python`
    env["TMPDIR"] = env["TEMP"] = str(settings.tmp_dir)  # TEMP becomes java.io.tmpdir
    env["LOG_LOCATION"] = env["METRICS_LOCATION"] = str(settings.log_dir)
    for name, value in THREAD_ENV.items():
        env.setdefault(name, value)
    return env


def start(settings: Settings, timeout: float | None = None) -> ServerStatus:
    """Start TorchServe unless it already runs; wait until /ping answers.

    Idempotent: when our pid file names a live TorchServe, or a TorchServe already answers on
    the inference port, nothing is started. A lock in the run directory keeps concurrent
    callers from starting two servers.
    """
    timeout = settings.startup_timeout_s if timeout is None else timeout
    deadline = time.monotonic() + timeout
    if len(os.fsencode(settings.tmp_dir / ".ts.sock.65535")) > SOCKET_PATH_MAX:
        raise SettingsError(
            f"The run directory {settings.run_dir} is too long a path for TorchServe's worker "
            "sockets; choose a shorter TSCHAT_RUN_DIR."
        )
    prepare_run_dir(settings)
    with _locked(settings, timeout + 30):
        frontend = _find_frontend(settings)
        if frontend is not None:
            _wait_ready(settings, frontend, None, deadline, timeout)
            return status(settings)
        if _probe(settings)[0]:
            return status(settings)
        env = _launch_env(settings)
        check_java(env)
        check_ports_free(settings)
        write_config(settings)
        for stale in (settings.key_file, settings.pid_file, settings.tmp_dir / ".model_server.pid"):
            stale.unlink(missing_ok=True)
        argv = _launcher_argv(settings)
        console_log = _open_private(settings.log_dir / CONSOLE_LOG, os.O_WRONLY | os.O_TRUNC)
        with os.fdopen(console_log, "wb") as console:
            launcher = subprocess.Popen(
                argv,
                cwd=settings.run_dir,  # TorchServe writes key_file.json into its cwd
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                umask=CHILD_UMASK,
            )
        _launchers.append(launcher)
        try:
            frontend = _wait_for_frontend(settings, launcher, deadline, timeout)
            write_private(settings.pid_file, f"{frontend.pid}\n")
            _wait_ready(settings, frontend, launcher, deadline, timeout)
        except BaseException:
            _end(
                _family(_launcher_frontend(launcher), settings) + [_as_process(launcher)], grace=5.0
            )
            launcher.wait(timeout=10)
            _clean_files(settings)
            raise
    return status(settings)


def _as_process(popen: subprocess.Popen[bytes]) -> psutil.Process | None:
    try:
        return psutil.Process(popen.pid)
    except psutil.Error:
        return None


def _launcher_frontend(launcher: subprocess.Popen[bytes]) -> psutil.Process | None:
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(launcher.pid).children():
            if FRONTEND_CLASS in _cmdline(child):
                return child
    return None


def _wait_for_frontend(
    settings: Settings, launcher: subprocess.Popen[bytes], deadline: float, timeout: float
) -> psutil.Process:
    while True:
        frontend = _launcher_frontend(launcher)
        if frontend is not None:
            return frontend
        if launcher.poll() is not None:
            raise StartupFailed(
                f"the launcher exited with code {launcher.returncode}.", _failure_log(settings)
            )
        if time.monotonic() > deadline:
            raise StartupTimeout(timeout, _failure_log(settings))
        time.sleep(POLL_S)


def _wait_ready(
    settings: Settings,
    frontend: psutil.Process,
    launcher: subprocess.Popen[bytes] | None,
    deadline: float,
    timeout: float,
) -> None:
    while True:
        answers, health = _probe(settings)
        if answers and health is not None:
            return
        if not frontend.is_running() or frontend.status() == psutil.STATUS_ZOMBIE:
            code = launcher.poll() if launcher is not None else None
            raise StartupFailed(
                f"the Java frontend exited (launcher code {code}).", _failure_log(settings)
            )
        if time.monotonic() > deadline:
            raise StartupTimeout(timeout, _failure_log(settings))
        time.sleep(POLL_S)


def stop(settings: Settings, timeout: float = 30.0) -> bool:
    """Stop our TorchServe: SIGTERM the frontend, then SIGKILL whatever is left of its tree.

    "Ours" is the TorchServe started with this run directory's config file; a TorchServe
    started otherwise is left alone. Returns whether anything was running. Afterwards no
    frontend, launcher or worker process is left and the pid file and key_file.json are gone.
    """
    with _locked(settings, timeout + 30):
        frontend = _find_frontend(settings)
        family = _family(frontend, settings)
        if frontend is not None:
            with contextlib.suppress(psutil.Error):
                frontend.terminate()  # graceful: TorchServe's shutdown hook stops workers
            psutil.wait_procs([frontend], timeout=timeout)
        _end(family, grace=0.0)
        _reap()
        _clean_files(settings)
        _wait_ports_closed(settings, deadline=time.monotonic() + 10)
        return bool(family)


def _end(processes: list[psutil.Process | None], grace: float) -> None:
    """SIGTERM (when ``grace``) then SIGKILL each process still alive, and reap them."""
    alive = [process for process in processes if process is not None]
    if grace:
        for process in alive:
            with contextlib.suppress(psutil.Error):
                process.terminate()
        _, alive = psutil.wait_procs(alive, timeout=grace)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=10)


def _clean_files(settings: Settings) -> None:
    for path in (settings.pid_file, settings.key_file, settings.tmp_dir / ".model_server.pid"):
        path.unlink(missing_ok=True)


def _wait_ports_closed(settings: Settings, deadline: float) -> None:
    while _open_ports(settings) and time.monotonic() < deadline:
        time.sleep(POLL_S)


# ---------------------------------------------------------------- logs


def tail_log(settings: Settings, name: LogName = "ts_log.log", lines: int = 200) -> str:
    """The last ``lines`` lines of one TorchServe log ("" when it does not exist yet)."""
    if name not in LOG_NAMES:
        raise ValueError(f"unknown log {name!r}; choose one of {', '.join(LOG_NAMES)}")
    path = settings.log_dir / name
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            block = 64 * 1024
            data = b""
            while size > 0 and data.count(b"\n") <= lines:
                step = min(block, size)
                size -= step
                handle.seek(size)
                data = handle.read(step) + data
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-lines:])


def _failure_log(settings: Settings, lines: int = 30) -> str:
    names: tuple[LogName, ...] = ("console.log", "ts_log.log")
    parts = [tail_log(settings, name, lines) for name in names]
    return "\n".join(part for part in parts if part)[-6000:]


def _status_json(settings: Settings) -> str:
    """The status as JSON, for scripts: ``python -m tschat.ops.process status``."""
    current = status(settings)
    return json.dumps(
        {
            "running": current.running,
            "pid": current.pid,
            "health": current.health,
            "open_ports": list(current.open_ports),
            "worker_pids": list(current.worker_pids),
            "started_at": current.started_at.isoformat() if current.started_at else None,
        }
    )


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m tschat.ops.process start|stop|status``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ("start", "stop", "status"):
        print("usage: python -m tschat.ops.process start|stop|status", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    try:
        if args[0] == "start":
            print(start(settings).summary)
        elif args[0] == "stop":
            print("TorchServe stopped." if stop(settings) else "TorchServe was not running.")
        else:
            print(_status_json(settings))
    except TsChatError as error:
        print(error, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
