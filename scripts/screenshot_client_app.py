"""Take the chat app's screenshots from the real running app.

    .venv/bin/python scripts/screenshot_client_app.py [--output-dir DIR] [--model-store DIR]

Starts a TorchServe of its own (free loopback ports, a temporary run directory) with the default
model, runs the chat app with Streamlit against it, and uses it in headless chromium as a person
would: two short conversations, then a third with a system prompt, a regenerated answer (a
branch, ``◀ 2/2 ▶``) and a follow-up asked with token probabilities on, one token hovered
(``client_app.png``); then one question to two panes with different temperatures
(``client_app_side_by_side.png``). It stops everything it started.
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

from apps.browser import (  # noqa: E402
    RunningApp,
    ask,
    chromium,
    press_slider,
    private_server,
    settle,
    start_app,
    stop_app,
    wait_answers,
)
from tschat.ops import packaging, process  # noqa: E402
from tschat.ops.serving import ServingRegistry  # noqa: E402
from tschat.settings import Settings  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import Page, ViewportSize

VIEWPORT: ViewportSize = {"width": 1440, "height": 1100}
SLOW_MS = 240_000
SYSTEM_PROMPT = "You are a friendly guide to animals. Answer in two or three sentences."
OTHER_CHATS = ("Name three rivers in Europe.", "What is 12 times 12?")
QUESTIONS = ("What is a llama?", "Where do they live?")
PANE_QUESTION = "Describe the sea in one sentence."
MAX_TOKENS = 48


def start_torchserve(settings: Settings) -> None:
    print("Starting TorchServe and loading the model...", flush=True)
    process.start(settings)
    registry = ServingRegistry.for_settings(settings)
    registry.register(f"{settings.model_name}.mar", initial_workers=1)
    registry.wait_until_ready(settings.model_name, timeout=settings.startup_timeout_s)


def question(page: Page, text: str, answers: int) -> None:
    print(f"Asking: {text}", flush=True)
    ask(page, text)
    wait_answers(page, answers, SLOW_MS / 1000)
    settle(page)


def chat_shot(page: Page, output: Path) -> None:
    press_slider(page, "Temperature", "Home", *["ArrowRight"] * 6)  # 0.30
    press_slider(page, "Max tokens", "Home", *["ArrowRight"] * (MAX_TOKENS - 1))
    settle(page)
    seed = page.get_by_label("Seed", exact=True).first
    seed.fill("42")
    seed.press("Enter")
    settle(page)
    for text in OTHER_CHATS:
        question(page, text, 1)
        page.locator(".st-key-w_new_conversation button").click()
        settle(page)

    system = page.get_by_label("System prompt", exact=True)
    system.fill(SYSTEM_PROMPT)
    system.blur()
    settle(page)
    question(page, QUESTIONS[0], 1)
    name = page.get_by_label("Name", exact=True)
    name.fill("Llamas")
    name.press("Enter")
    settle(page)
    # Another answer to the same question: a sibling of the first, shown as 2/2.
    seed.fill("7")
    seed.press("Enter")
    settle(page)
    page.get_by_role("button", name="Regenerate").last.click()
    page.get_by_text("2/2").first.wait_for()
    wait_answers(page, 1, SLOW_MS / 1000)
    settle(page)
    page.get_by_text("Token probabilities").first.click()
    page.get_by_text("Alternatives per token").wait_for()
    settle(page)
    question(page, QUESTIONS[1], 2)

    tokens = page.locator(".tschat-token")
    tokens.first.wait_for()
    # Hover over the token the model was least sure of.
    shades = tokens.evaluate_all(
        "spans => spans.map(s => parseFloat(getComputedStyle(s).backgroundColor"
        ".split(',')[3] || '0'))"
    )
    least_sure = max(range(min(len(shades), 30)), key=lambda i: shades[i])
    page.get_by_test_id("stSidebarContent").evaluate("element => element.scrollTo(0, 0)")
    tokens.nth(least_sure).scroll_into_view_if_needed()
    tokens.nth(least_sure).hover()
    page.wait_for_timeout(800)
    output.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(output))
    print(f"Wrote {output}", flush=True)


def side_by_side_shot(page: Page, output: Path) -> None:
    page.mouse.move(0, 0)
    page.get_by_test_id("stButtonGroup").get_by_text("Side by side").click()
    page.get_by_text("Pane 2").wait_for()
    settle(page)
    for pane, temperature_steps in enumerate((0, 24)):  # 0 and 1.2
        page.get_by_role("button", name="Settings").nth(pane).click()
        body = page.get_by_test_id("stPopoverBody")
        body.wait_for()
        for label, keys in (
            ("Temperature", ["Home", *["ArrowRight"] * temperature_steps]),
            ("Max tokens", ["Home", *["ArrowRight"] * (MAX_TOKENS - 1)]),
        ):
            thumb = body.get_by_test_id("stSlider").filter(has_text=label)
            thumb = thumb.locator("input[type=range]").first
            thumb.focus()
            for key in keys:
                thumb.press(key)
        settle(page)
        page.keyboard.press("Escape")
        body.wait_for(state="hidden")
        settle(page)
    print(f"Asking both panes: {PANE_QUESTION}", flush=True)
    ask(page, PANE_QUESTION)
    page.locator(".st-key-w_stop_panes").wait_for()
    page.locator(".st-key-w_stop_panes").wait_for(state="detached", timeout=SLOW_MS)
    settle(page)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(output))
    print(f"Wrote {output}", flush=True)


def take(url: str, output_dir: Path) -> None:
    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(SLOW_MS)
        page.goto(url)
        page.get_by_text("Connected to TorchServe").first.wait_for()
        chat_shot(page, output_dir / "client_app.png")
        side_by_side_shot(page, output_dir / "client_app_side_by_side.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=ROOT / "screenshots")
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
        take(chat.url, args.output_dir.resolve())
    finally:
        if chat is not None:
            stop_app(chat.process)
        process.stop(settings)
        shutil.rmtree(run_root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
