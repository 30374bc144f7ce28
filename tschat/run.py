"""``make run``: start TorchServe with the default model and serve both apps on loopback.

    python -m tschat.run [--no-apps]

Starts TorchServe (or finds it already running), registers the model archive if it is not
registered yet, then runs the operator console and the chat client with Streamlit and prints
their URLs. Ctrl-C stops the apps, and TorchServe too if this command started it.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from tschat.errors import SettingsError, TsChatError
from tschat.ops import password, process
from tschat.ops.serving import ServingRegistry
from tschat.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
APPS = (
    ("Operator console", "server_app.py", "console_port"),
    ("Chat", "client_app.py", "chat_port"),
)


def ensure_model(settings: Settings, registry: ServingRegistry) -> None:
    """Register the settings' model from the model store unless it is registered already."""
    name = settings.model_name
    if registry.is_registered(name):
        print(f"Model {name} is already registered.")
    else:
        print(f"Registering {name}.mar (loading the model in its worker)...", flush=True)
        registry.register(f"{name}.mar", initial_workers=1)
    status = registry.wait_until_ready(name, timeout=settings.startup_timeout_s)
    print(
        f"Model {name} is ready: batch size {status.batch_size}, {status.ready_workers} worker(s)."
    )


def streamlit_argv(script: str, port: int, settings: Settings) -> list[str]:
    """``streamlit run SCRIPT``: on 127.0.0.1 unless TSCHAT_EXPOSE_APPS is set (never at
    TSCHAT_HOST), answering only the Host names of :attr:`Settings.apps_allowed_hosts`."""
    argv = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ROOT / script),
        "--server.port",
        str(port),
        "--server.address",
        settings.apps_address,
        "--server.headless",
        "true",
    ]
    for name in settings.apps_allowed_hosts:
        argv += ["--server.allowedHosts", name]
    return argv


def check_exposure(settings: Settings) -> None:
    """Raise SettingsError when the apps are to be exposed but the console has no password."""
    if settings.apps_exposed and not password.password_is_set(settings):
        raise SettingsError(
            "TSCHAT_EXPOSE_APPS is set, but the console has no password: set one with "
            "`.venv/bin/python -m tschat.ops.password`, then start again."
        )


def start_apps(settings: Settings) -> list[subprocess.Popen[bytes]]:
    """Start the console and the chat app, each as its own Streamlit process."""
    check_exposure(settings)
    apps = []
    try:
        for title, script, port_field in APPS:
            port = getattr(settings, port_field)
            apps.append(subprocess.Popen(streamlit_argv(script, port, settings), cwd=ROOT))
            print(f"{title}: http://{settings.apps_address}:{port}")
    except BaseException:
        for app in apps:
            process.stop_child(app)
        raise
    return apps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--no-apps", action="store_true", help="start TorchServe and the model only"
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    try:
        if not args.no_apps:
            check_exposure(settings)
        was_running = process.status(settings).running
        print(
            "Starting TorchServe..." if not was_running else "TorchServe is already running.",
            flush=True,
        )
        process.start(settings)
        ensure_model(settings, ServingRegistry.for_settings(settings))
    except TsChatError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.no_apps:
        return 0

    try:
        apps = start_apps(settings)
    except TsChatError as error:
        print(f"error: {error}", file=sys.stderr)
        if not was_running:
            process.stop(settings)
        return 1
    print(f"OpenAI-style API: {settings.inference_url}/predictions/{settings.model_name}/1.0/v1")
    print("Press Ctrl-C to stop.", flush=True)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        while all(app.poll() is None for app in apps):
            time.sleep(0.5)
        print("An app exited; stopping.", file=sys.stderr)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        for app in apps:
            process.stop_child(app)
        if not was_running:
            print("Stopping TorchServe...", flush=True)
            process.stop(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
