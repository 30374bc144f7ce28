"""One settings object for the package: documented defaults, overridable by TSCHAT_* variables.

TorchServe reads its own ``TS_*`` variables; ours use the ``TSCHAT_`` prefix so the two
never mix. Every field's description is kept in its metadata, so the same text can be shown
in help screens (see :func:`describe_settings`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tschat.errors import SettingsError

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "TSCHAT_"
# Where the apps listen, and the Host names they answer, unless expose_apps says otherwise.
LOOPBACK_ADDRESS = "127.0.0.1"
LOOPBACK_HOSTNAMES = ("127.0.0.1", "localhost")
ALL_INTERFACES = "0.0.0.0"
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


def _setting(
    default: Any, description: str, *, low: float | None = None, high: float | None = None
) -> Any:
    """Declare a field with its description and optional inclusive bounds."""
    return field(default=default, metadata={"description": description, "low": low, "high": high})


@dataclass(frozen=True)
class Settings:
    """Where TorchServe runs and how it is configured."""

    host: str = _setting(
        "127.0.0.1",
        "Address every TorchServe port binds to and clients connect to. Keep the loopback default: "
        "any other address exposes the management API, which can load and run model code, to the "
        "network. Change it only on purpose.",
    )
    inference_port: int = _setting(
        8080, "Inference API port (needs the inference key).", low=1, high=65535
    )
    management_port: int = _setting(
        8081, "Management API port (needs the management key).", low=1, high=65535
    )
    metrics_port: int = _setting(
        8082, "Metrics API port (Prometheus text, no key).", low=1, high=65535
    )
    console_port: int = _setting(
        8501,
        "Port of the operator console (server_app.py) started by `make run`.",
        low=1,
        high=65535,
    )
    chat_port: int = _setting(
        8502, "Port of the chat app (client_app.py) started by `make run`.", low=1, high=65535
    )
    expose_apps: str = _setting(
        "",
        "Host names or IPv4 addresses, separated by commas, by which other machines reach the "
        "console and the chat app. Unset (the default), both apps listen on 127.0.0.1 only, "
        "whatever TSCHAT_HOST says. Set, they listen on every interface (0.0.0.0), answer only "
        "requests addressed to these names or to 127.0.0.1 and localhost, and the console shows "
        "nothing but a password prompt until the password set with `python -m tschat.ops.password` "
        "is given; the chat app has no password.",
    )
    grpc_inference_port: int = _setting(
        7070,
        "gRPC inference port; TorchServe always opens it, so two servers need different ones.",
        low=1,
        high=65535,
    )
    grpc_management_port: int = _setting(
        7071,
        "gRPC management port; TorchServe always opens it, so two servers need different ones.",
        low=1,
        high=65535,
    )
    run_dir: Path = _setting(
        REPO_ROOT / "var",
        "TorchServe's working directory: config.properties, key_file.json, logs/, tmp/ and "
        "torchserve.pid.",
    )
    model_store: Path = _setting(
        REPO_ROOT / "model_store", "Folder of .mar archives TorchServe may register."
    )
    model_name: str = _setting("smollm2", "Name of the model the apps talk to.")
    job_queue_size: int = _setting(
        100,
        "Requests TorchServe queues per model before answering 503 (server busy).",
        low=1,
        high=1_000_000,
    )
    token_expiration_min: float = _setting(
        60.0,
        "Minutes before the inference and management keys expire (they are refreshed).",
        low=0.05,
        high=525_600,
    )
    max_request_size: int = _setting(
        6_553_500,
        "Largest request body TorchServe accepts, in bytes.",
        low=1024,
        high=2_147_483_647,
    )
    default_response_timeout: int = _setting(
        300,
        "Seconds a worker may take for one batch before TorchServe restarts it.",
        low=1,
        high=86_400,
    )
    startup_timeout_s: float = _setting(
        180.0, "Seconds to wait for TorchServe to answer /ping after starting it.", low=1, high=3600
    )
    request_timeout_s: float = _setting(
        330.0,
        "Seconds a client waits for the next bytes of an answer before giving up (a stream that "
        "stalls this long is reported as an error, never a hang).",
        low=0.1,
        high=86_400,
    )

    def __post_init__(self) -> None:
        # Paths are made absolute once, because TorchServe runs with run_dir as its cwd.
        for name in ("run_dir", "model_store"):
            object.__setattr__(self, name, Path(getattr(self, name)).expanduser().absolute())
        for spec in dataclasses.fields(self):
            _check_bounds(spec, getattr(self, spec.name), label=spec.name)
        if not self.host.strip():
            raise SettingsError("host must not be empty; use 127.0.0.1 to stay on this machine.")
        for name in self.exposed_hostnames:
            if not _HOSTNAME.fullmatch(name):
                raise SettingsError(
                    f"TSCHAT_EXPOSE_APPS holds {name!r}, which is not a host name or IPv4 "
                    "address: give names such as myserver.lan or 192.168.1.20, separated by "
                    "commas (no scheme, port or wildcard)."
                )
        ports = {
            "inference_port": self.inference_port,
            "management_port": self.management_port,
            "metrics_port": self.metrics_port,
            "grpc_inference_port": self.grpc_inference_port,
            "grpc_management_port": self.grpc_management_port,
            "console_port": self.console_port,
            "chat_port": self.chat_port,
        }
        seen: dict[int, str] = {}
        for name, port in ports.items():
            if port in seen:
                raise SettingsError(
                    f"{seen[port]} and {name} are both {port}; give each service its own port."
                )
            seen[port] = name

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, **overrides: Any) -> Settings:
        """Build settings from defaults, then ``TSCHAT_<FIELD>`` variables, then ``overrides``.

        >>> Settings.from_env({"TSCHAT_INFERENCE_PORT": "9080"}).inference_url
        'http://127.0.0.1:9080'
        >>> Settings.from_env({"TSCHAT_INFERENCE_PORT": "http"})
        Traceback (most recent call last):
        ...
        tschat.errors.SettingsError: TSCHAT_INFERENCE_PORT='http' is not a whole number.
        """
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            var = ENV_PREFIX + spec.name.upper()
            raw = environ.get(var)
            if raw is None:
                continue
            value = _convert(spec, raw.strip(), label=var)
            _check_bounds(spec, value, label=var)
            values[spec.name] = value
        values.update(overrides)
        return cls(**values)

    def as_env(self) -> dict[str, str]:
        """These settings as ``TSCHAT_*`` variables, e.g. for an app run as a subprocess (an
        empty value, such as an unset ``expose_apps``, is left out).

        >>> Settings.from_env(Settings(inference_port=9080).as_env()).inference_port
        9080
        """
        values = {spec.name: str(getattr(self, spec.name)) for spec in dataclasses.fields(self)}
        return {ENV_PREFIX + name.upper(): value for name, value in values.items() if value}

    def _url(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    @property
    def exposed_hostnames(self) -> tuple[str, ...]:
        """The names in ``expose_apps``; empty when the apps stay on this machine.

        >>> Settings(expose_apps="myserver.lan, 10.0.0.5").exposed_hostnames
        ('myserver.lan', '10.0.0.5')
        """
        return tuple(name.strip() for name in self.expose_apps.split(",") if name.strip())

    @property
    def apps_exposed(self) -> bool:
        """Whether the apps listen beyond this machine (``expose_apps`` is set)."""
        return bool(self.exposed_hostnames)

    @property
    def apps_address(self) -> str:
        """The address both apps bind to: 127.0.0.1 unless ``expose_apps`` is set.

        >>> Settings(host="0.0.0.0").apps_address, Settings(expose_apps="srv").apps_address
        ('127.0.0.1', '0.0.0.0')
        """
        return ALL_INTERFACES if self.apps_exposed else LOOPBACK_ADDRESS

    @property
    def apps_allowed_hosts(self) -> tuple[str, ...]:
        """The Host header names the apps answer (any other is refused: DNS rebinding)."""
        return LOOPBACK_HOSTNAMES + tuple(
            name for name in self.exposed_hostnames if name not in LOOPBACK_HOSTNAMES
        )

    @property
    def inference_url(self) -> str:
        """Base URL of the inference API."""
        return self._url(self.inference_port)

    @property
    def management_url(self) -> str:
        """Base URL of the management API."""
        return self._url(self.management_port)

    @property
    def metrics_url(self) -> str:
        """Base URL of the metrics API."""
        return self._url(self.metrics_port)

    @property
    def key_file(self) -> Path:
        """key_file.json, written by TorchServe into its working directory."""
        return self.run_dir / "key_file.json"

    @property
    def log_dir(self) -> Path:
        """Where TorchServe writes ts_log.log, model_log.log and the metrics logs."""
        return self.run_dir / "logs"

    @property
    def config_file(self) -> Path:
        """config.properties written by :func:`tschat.ops.process.write_config`."""
        return self.run_dir / "config.properties"

    @property
    def tmp_dir(self) -> Path:
        """TMPDIR of TorchServe: its own pid file and worker sockets live here."""
        return self.run_dir / "tmp"

    @property
    def pid_file(self) -> Path:
        """Our record of the running TorchServe (the Java frontend's pid)."""
        return self.run_dir / "torchserve.pid"

    @property
    def lock_file(self) -> Path:
        """Serialises concurrent start/stop calls."""
        return self.run_dir / "torchserve.lock"

    @property
    def experiment_lock_file(self) -> Path:
        """Held while an experiment runs on this server, by whichever console runs it."""
        return self.run_dir / "experiment.lock"

    @property
    def console_password_file(self) -> Path:
        """The console's password, as a salted scrypt hash (``python -m tschat.ops.password``)."""
        return self.run_dir / "console_password.json"


def describe_settings() -> list[tuple[str, str, str]]:
    """Return (environment variable, default, description) for every setting."""
    return [
        (ENV_PREFIX + spec.name.upper(), str(spec.default), spec.metadata["description"])
        for spec in dataclasses.fields(Settings)
    ]


def _convert(spec: dataclasses.Field[Any], raw: str, *, label: str) -> Any:
    """Turn the text of an environment variable into the field's type."""
    kind = spec.type if isinstance(spec.type, str) else getattr(spec.type, "__name__", "")
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{label}={raw!r} is not a whole number.") from None
    if kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise SettingsError(f"{label}={raw!r} is not a number.") from None
    if not raw:
        raise SettingsError(f"{label} is set but empty; unset it to use the default.")
    if kind == "Path":
        return Path(raw)
    return raw


def _check_bounds(spec: dataclasses.Field[Any], value: Any, *, label: str) -> None:
    low, high = spec.metadata.get("low"), spec.metadata.get("high")
    if low is None or high is None:
        return
    if (
        isinstance(value, bool) or not isinstance(value, (int, float)) or value != value
    ):  # NaN fails too
        raise SettingsError(f"{label}={value!r} is not a number.")
    if not low <= value <= high:
        raise SettingsError(
            f"{label}={value!r} is out of range: it must be between {low:g} and {high:g}."
        )
