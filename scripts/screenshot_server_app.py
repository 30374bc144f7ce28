"""Take screenshots/server_app.png and server_app_experiments.png from the real console.

    .venv/bin/python scripts/screenshot_server_app.py [--output PATH] [--model-store DIR]

Runs the console with Streamlit against a TorchServe of its own (free loopback ports, a temporary
run directory), then drives it in headless chromium as an operator would: Start, Register the
default model, let some chat traffic flow so the live charts fill in, screenshot the live view,
run a short experiment with the four standard configurations and screenshot its comparison,
Stop. Nothing is left running afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apps.browser import chromium, private_server, start_app, stop_app  # noqa: E402
from tschat.api.inference import InferenceClient  # noqa: E402
from tschat.api.keys import KeyStore  # noqa: E402
from tschat.errors import TsChatError  # noqa: E402
from tschat.ops import packaging, process  # noqa: E402
from tschat.settings import Settings  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import ViewportSize

VIEWPORT: ViewportSize = {"width": 1440, "height": 1320}
SLOW_MS = 240_000
EXPERIMENT_MS = 900_000
EXPERIMENT_VIEWPORT: ViewportSize = {"width": 1280, "height": 900}  # a laptop's window
PROMPTS = (
    "Name three colours of the sea.",
    "Write one sentence about TorchServe.",
    "What is a llama?",
    "Count from one to five in words.",
)


def chat_traffic(settings: Settings, stop: threading.Event) -> None:
    """Two clients chatting until ``stop`` is set, so the charts have data."""

    def chat(offset: int) -> None:
        client = InferenceClient.from_settings(settings, KeyStore(settings))
        turn = offset
        while not stop.is_set():
            prompt = PROMPTS[turn % len(PROMPTS)]
            with contextlib.suppress(TsChatError):
                client.chat(
                    settings.model_name,
                    [{"role": "user", "content": prompt}],
                    max_tokens=24,
                )
            turn += 1

    threads = [threading.Thread(target=chat, args=(i,), daemon=True) for i in range(2)]
    for thread in threads:
        thread.start()
    stop.wait()
    for thread in threads:
        thread.join(timeout=120)


def take(
    settings: Settings, url: str, output: Path, experiments_output: Path | None, traffic_s: float
) -> None:
    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(SLOW_MS)
        page.goto(url)
        page.get_by_text("TorchServe is stopped").first.wait_for()
        print("Start...", flush=True)
        page.get_by_role("button", name="Start").click()
        page.get_by_text("TorchServe is running").first.wait_for()

        print("Register...", flush=True)
        page.get_by_role("tab", name="Models").click()
        page.get_by_role("button", name="Register", exact=True).click()
        page.get_by_text(f"{settings.model_name} is registered").first.wait_for()

        # Refresh every 2 s so the charts gather points quickly.
        page.get_by_role("combobox", name="Live view refresh").click()
        page.get_by_role("option", name="2 s", exact=True).click()

        print(f"Chat traffic for {traffic_s:g} s...", flush=True)
        stop = threading.Event()
        traffic = threading.Thread(target=chat_traffic, args=(settings, stop), daemon=True)
        traffic.start()
        page.get_by_role("tab", name="Live view").click()
        time.sleep(traffic_s)
        stop.set()
        traffic.join(timeout=180)
        time.sleep(5)  # one more refresh after the last answer
        page.locator(".js-plotly-plot .scatterlayer .trace path.js-line").first.wait_for()
        output.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(output))
        print(f"Wrote {output}", flush=True)
        if experiments_output is not None:
            run_experiment(page, experiments_output)

        print("Stop...", flush=True)
        page.get_by_role("button", name="Stop").click()
        page.get_by_text("TorchServe is stopped").first.wait_for()


def run_experiment(page: Any, output: Path) -> None:
    """The standard configurations at 1, 4 and 8 clients, one short request per client (the
    default load: distinct prompts); the comparison as it shows in a 1280x900 window."""
    print("Experiment...", flush=True)
    page.get_by_role("combobox", name="Live view refresh").click()
    page.get_by_role("option", name="off", exact=True).click()
    page.get_by_role("tab", name="Experiments").click()
    for label, value in (("Requests per client", "1"), ("Answer length (tokens)", "48")):
        field = page.get_by_role("spinbutton", name=label, exact=True)
        field.fill(value)
        field.press("Tab")  # Streamlit takes a number when the field loses focus
    page.get_by_role("button", name="Run experiment").click()
    # Hidden tabs hold matching elements too: wait for the visible ones.
    page.locator("text=finished after >> visible=true").first.wait_for(timeout=EXPERIMENT_MS)
    points = ".js-plotly-plot .scatterlayer .trace .points path >> visible=true"
    page.locator(points).first.wait_for()
    page.set_viewport_size(EXPERIMENT_VIEWPORT)
    time.sleep(3)  # the chart's last layout pass
    chart = page.locator("[data-testid=stPlotlyChart] >> visible=true").last
    chart.scroll_into_view_if_needed()
    time.sleep(1)
    page.screenshot(path=str(output))
    print(f"Wrote {output}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "screenshots" / "server_app.png")
    parser.add_argument(
        "--experiments-output",
        default=str(ROOT / "screenshots" / "server_app_experiments.png"),
        help="where the Experiments tab's screenshot goes ('' to skip the experiment)",
    )
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    parser.add_argument("--traffic-seconds", type=float, default=40.0)
    args = parser.parse_args()

    # A short run directory: TorchServe's worker socket paths must stay under 108 bytes.
    run_root = Path(tempfile.mkdtemp(prefix="tschat-shot-"))
    settings, app_port = private_server(run_root / "var", args.model_store)
    for event in packaging.ensure_default_archive(settings.model_store, settings.model_name):
        print(f"  {event.text}", flush=True)
    console = start_app("server_app.py", app_port, settings.as_env(), run_root / "console.log")
    try:
        experiments = Path(args.experiments_output).resolve() if args.experiments_output else None
        take(settings, console.url, args.output.resolve(), experiments, args.traffic_seconds)
    finally:
        stop_app(console.process)
        process.stop(settings)
        shutil.rmtree(run_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
