"""Take screenshots/client_app.png from the real running chat app.

    .venv/bin/python scripts/screenshot_client_app.py [--output PATH] [--model-store DIR]

Starts a TorchServe of its own (free loopback ports, a temporary run directory) with the default
model, runs the chat app with Streamlit against it, and chats in headless chromium as a person
would: a system prompt, a question, a follow-up that depends on the first answer. Then it takes
the screenshot and stops everything it started.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apps.browser import RunningApp, chromium, private_server, start_app, stop_app  # noqa: E402
from tschat.ops import packaging, process  # noqa: E402
from tschat.ops.serving import ServingRegistry  # noqa: E402
from tschat.settings import Settings  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import ViewportSize

VIEWPORT: ViewportSize = {"width": 1440, "height": 1100}
SLOW_MS = 240_000
SYSTEM_PROMPT = "You are a friendly guide to animals. Answer in two or three sentences."
QUESTIONS = ("What is a llama?", "Where do they live?")
MAX_TOKENS = 80


def start_torchserve(settings: Settings) -> None:
    print("Starting TorchServe and loading the model...", flush=True)
    process.start(settings)
    registry = ServingRegistry.for_settings(settings)
    registry.register(f"{settings.model_name}.mar", initial_workers=1)
    registry.wait_until_ready(settings.model_name, timeout=settings.startup_timeout_s)


def take(url: str, output: Path) -> None:
    with chromium() as browser:
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "screenshots" / "client_app.png")
    parser.add_argument("--model-store", type=Path, default=ROOT / "model_store")
    args = parser.parse_args()

    # A short run directory: TorchServe's worker socket paths must stay under 108 bytes.
    run_root = Path(tempfile.mkdtemp(prefix="tschat-chat-shot-"))
    settings, app_port = private_server(run_root / "var", args.model_store)
    for event in packaging.ensure_default_archive(settings.model_store, settings.model_name):
        print(f"  {event.text}", flush=True)
    chat: RunningApp | None = None
    try:
        start_torchserve(settings)
        chat = start_app("client_app.py", app_port, settings.as_env(), run_root / "chat.log")
        take(chat.url, args.output.resolve())
    finally:
        if chat is not None:
            stop_app(chat.process)
        process.stop(settings)
        shutil.rmtree(run_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
