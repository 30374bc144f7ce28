"""The chat client in headless chromium: streaming, Stop, two people at once, HTML as text.

The app runs with ``streamlit run`` against the session's real TorchServe (the HTML test uses a
small fake inference server instead, because the model cannot be made to print markup on cue).
The page is read straight from the DOM, several times a second, while answers stream.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

if TYPE_CHECKING:
    from conftest import Helpers, LocalServer, TorchServeServer
    from playwright.sync_api import Browser, Page

    from tests.browser.conftest import RunningApp

pytestmark = [pytest.mark.integration, pytest.mark.browser]

APP = "client_app.py"
READY_TIMEOUT_MS = 60_000
ANSWER_TIMEOUT_S = 240.0  # a whole answer on a busy 2-core machine
LONG_STORY = "Write a very long story about a dragon who learns to bake bread, with many chapters."

StartApp = Callable[[str, int, Mapping[str, str]], "RunningApp"]


@pytest.fixture
def chat_app(
    torchserve_server: TorchServeServer, streamlit_app: StartApp, helpers: Helpers
) -> RunningApp:
    """client_app.py served for this test, talking to the session's TorchServe."""
    return streamlit_app(APP, helpers.free_port(), torchserve_server.settings.as_env())


# ---------------------------------------------------------------- page helpers


def open_chat(browser: Browser, url: str, ready_text: str = "Connected to") -> Page:
    """A page in a browser context of its own (its own Streamlit session)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(url)
    page.get_by_text(ready_text).first.wait_for(timeout=READY_TIMEOUT_MS)
    return page


def press_slider(page: Page, label: str, *keys: str) -> None:
    """Move a sidebar slider with the keyboard, as a person without a mouse would."""
    thumb = page.get_by_test_id("stSlider").filter(has_text=label).locator("input[type=range]")
    thumb.focus()
    for key in keys:
        thumb.press(key)


def slider_value(page: Page, label: str) -> str:
    thumb = page.get_by_test_id("stSlider").filter(has_text=label).locator("input[type=range]")
    return thumb.get_attribute("value") or ""


def settle(page: Page) -> None:
    """Wait until the script run caused by the last input has finished."""
    page.wait_for_timeout(600)
    page.get_by_test_id("stStatusWidget").wait_for(state="hidden", timeout=30_000)


def ask(page: Page, question: str) -> None:
    box = page.get_by_test_id("stChatInput").locator("textarea")
    box.wait_for(state="visible")
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=stChatInput] textarea').disabled",
        timeout=READY_TIMEOUT_MS,
    )
    box.fill(question)
    box.press("Enter")


def answer_text(page: Page, index: int = -1) -> str:
    """The text of an assistant message (``index`` among them), without its captions."""
    messages = page.locator(
        '[data-testid="stChatMessage"]:has([aria-label="Chat message from assistant"])'
    )
    count = messages.count()
    if count == 0:
        return ""
    message = messages.nth(index if index >= 0 else count + index)
    # The answer's Markdown, not the captions under it nor the Stop button's label.
    texts = message.locator(
        '[data-testid="stMarkdown"] [data-testid="stMarkdownContainer"]'
    ).all_inner_texts()
    return "\n".join(texts).replace("▌", "").strip()


def answer_caption(page: Page, index: int = -1) -> str:
    messages = page.locator(
        '[data-testid="stChatMessage"]:has([aria-label="Chat message from assistant"])'
    )
    message = messages.nth(index if index >= 0 else messages.count() + index)
    return " ".join(message.locator('[data-testid="stCaptionContainer"]').all_inner_texts())


def stop_button(page: Page) -> Any:
    return page.locator(".st-key-w_stop button")


def streaming(page: Page) -> bool:
    return bool(stop_button(page).count()) and stop_button(page).is_visible()


def follow(page: Page, until: Callable[[str], bool], timeout_s: float) -> list[str]:
    """Read the growing answer from the DOM every 0.1 s; each distinct text is kept."""
    reads: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = answer_text(page) if streaming(page) else ""
        if text and (not reads or reads[-1] != text):
            reads.append(text)
        if until(text):
            return reads
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out; read so far: {reads[-3:]}")


def wait_answers(page: Page, count: int, timeout_s: float = ANSWER_TIMEOUT_S) -> None:
    """Wait until ``count`` answers are complete (each shows its finish reason)."""
    page.wait_for_function(
        """count => [...document.querySelectorAll('[data-testid="stCaptionContainer"]')]
            .filter(c => c.innerText.includes("finish:")).length >= count
            && !document.querySelector(".st-key-w_stop")""",
        arg=count,
        timeout=timeout_s * 1000,
    )


# ---------------------------------------------------------------- tests


def test_answer_streams_in_and_stop_keeps_the_partial_text(
    browser: Browser, chat_app: RunningApp, torchserve_server: TorchServeServer
) -> None:
    page = open_chat(browser, chat_app.url)

    # A short answer (at most 40 tokens) grows on the page, read after read, then ends.
    press_slider(page, "Max tokens", "Home", *["ArrowRight"] * 39)
    settle(page)
    assert slider_value(page, "Max tokens") == "40"
    ask(page, "Tell me about the moon.")
    stop_button(page).wait_for(timeout=READY_TIMEOUT_MS)
    reads = follow(page, lambda text: not streaming(page), ANSWER_TIMEOUT_S)
    wait_answers(page, 1)
    final = answer_text(page)
    assert len(reads) >= 5, f"the answer did not grow in steps: {reads}"
    lengths = [len(r) for r in reads]
    assert lengths == sorted(lengths) and lengths[0] < len(final)
    assert all(final.startswith(r) for r in reads[:-1]), "earlier reads are prefixes of the end"
    caption = answer_caption(page)
    assert "first token" in caption and "tokens/s" in caption and "finish:" in caption
    tokens = int(re.search(r"(\d+) tokens? ·", caption).group(1))  # type: ignore[union-attr]
    assert 1 <= tokens <= 40, caption

    # A long answer is stopped midway; the text shown so far stays, marked as stopped.
    # (80 tokens: enough to stop midway, and short enough for a server that finishes the
    # answer anyway, as TorchServe does without continuous batching.)
    limit = 80
    press_slider(page, "Max tokens", "Home", *["ArrowRight"] * (limit - 1))
    settle(page)
    assert slider_value(page, "Max tokens") == str(limit)
    ask(page, LONG_STORY)
    stop_button(page).wait_for(timeout=READY_TIMEOUT_MS)
    reads = follow(page, lambda text: len(text) >= 60, ANSWER_TIMEOUT_S)
    # Any other click reruns the script mid-answer: the answer goes on where it was.
    press_slider(page, "Temperature", "ArrowRight")
    reads += follow(page, lambda text: len(text) >= 140, ANSWER_TIMEOUT_S)
    assert all(later.startswith(earlier) for earlier, later in pairwise(reads)), reads
    before_stop = reads[-1]
    stop_button(page).click()
    page.get_by_text("stopped: partial answer").wait_for(timeout=60_000)
    kept = answer_text(page)
    assert kept.startswith(before_stop[: len(before_stop) - 5])
    assert len(kept) < limit * 3, "stopped long before the token limit"
    page.wait_for_timeout(1500)
    assert answer_text(page) == kept, "nothing is added after Stop"
    assert "finish: stopped" in answer_caption(page)
    assert not streaming(page)
    # The chat goes on: the next question is answered after the stopped one.
    press_slider(page, "Max tokens", "Home", *["ArrowRight"] * 4)
    settle(page)
    ask(page, "Thanks!")
    wait_answers(page, 3)
    assert answer_text(page, 1) == kept
    assert "finish:" in answer_caption(page, 2)

    if _continuous_batching(torchserve_server):
        # TorchServe schedules the answer step by step, and dropped it once Stop closed it.
        log = torchserve_server.settings.log_dir / "ts_log.log"
        assert "Connection to client got closed" in log.read_text(errors="replace")


def _continuous_batching(server: TorchServeServer) -> bool:
    """Whether the model runs with continuousBatching, where TorchServe drops a request whose
    client left. Without it, TorchServe does not tell the handler, which then generates up to
    max_tokens for nobody (the app has closed the stream either way)."""
    key = server.keys.key("management")
    answer = requests.get(
        f"{server.settings.management_url}/models/{server.model}",
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    return bool(answer.json()[0].get("continuousBatching"))


def test_two_browser_sessions_chat_at_the_same_time(browser: Browser, chat_app: RunningApp) -> None:
    names = ("Zork", "Quib")
    pages = [open_chat(browser, chat_app.url) for _ in names]
    for page in pages:
        press_slider(page, "Temperature", "Home")
        press_slider(page, "Max tokens", "Home", *["ArrowRight"] * 15)
        settle(page)
    for page, name in zip(pages, names, strict=True):
        ask(page, f"My name is {name}. What is my name?")
    # Both conversations are in flight together (streaming, or queued with Stop shown).
    deadline = time.monotonic() + READY_TIMEOUT_MS / 1000
    while not all(streaming(page) for page in pages):
        assert time.monotonic() < deadline, "the two questions were not in flight together"
        pages[0].wait_for_timeout(50)
    for page in pages:
        wait_answers(page, 1)
    for page, name in zip(pages, names, strict=True):
        other = names[1 - names.index(name)]
        text = answer_text(page)
        assert name in text and other not in text, (name, text)
        questions = page.locator(
            '[data-testid="stChatMessage"]:has([aria-label="Chat message from user"])'
        ).all_inner_texts()
        assert len(questions) == 1 and name in questions[0] and other not in questions[0]


# ---------------------------------------------------------------- HTML stays text


class FakeInference(BaseHTTPRequestHandler):
    """Plays the inference API: /ping, v1/models and a streamed answer full of markup."""

    protocol_version = "HTTP/1.1"

    PIECES = (
        "Look: ",
        '<img src="x" onerror="window.__injected = 1">',
        " and ",
        "<script>window.__injected = 2</script>",
        " and **bold**",
    )

    def log_message(self, *args: Any) -> None:
        pass

    def _json(self, data: Any) -> None:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/ping":
            self._json({"status": "Healthy"})
        else:
            self._json({"object": "list", "data": [{"id": "fake"}]})

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        # Chunked, as TorchServe sends it: each piece reaches the client on its own.
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for piece in self.PIECES:
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            self._send_chunk(f"data: {json.dumps(chunk)}\n\n")
            time.sleep(0.4)
        final = {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
            "timings": {"ttft_ms": 1.0, "tokens_per_second": 5.0},
        }
        self._send_chunk(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _send_chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def test_markup_in_answers_is_shown_as_text(
    browser: Browser,
    streamlit_app: StartApp,
    http_server: Callable[[type[BaseHTTPRequestHandler]], LocalServer],
    helpers: Helpers,
    tmp_path: Path,
) -> None:
    fake = http_server(FakeInference)
    env = {"TSCHAT_RUN_DIR": str(tmp_path), "TSCHAT_MODEL_NAME": "fake"}
    app = streamlit_app(APP, helpers.free_port(), env)
    page = open_chat(browser, app.url, ready_text="No key file")
    page.get_by_text("Remote server").click()
    url = page.get_by_label("Inference URL")
    url.fill(fake.url)
    url.press("Enter")
    page.get_by_text(f"Connected to {fake.url}: model fake answers.").wait_for(timeout=30_000)

    ask(page, "Show me <b>markup</b>")
    stop_button(page).wait_for(timeout=READY_TIMEOUT_MS)
    seen_while_streaming = follow(page, lambda text: "<script>" in text, 30)
    wait_answers(page, 1, 60)

    final = answer_text(page)
    assert '<img src="x" onerror="window.__injected = 1">' in final
    assert "<script>window.__injected = 2</script>" in final
    assert "<img" in seen_while_streaming[-1], "markup is text while streaming too"
    message = page.locator('[data-testid="stChatMessageContent"]').last
    assert message.locator("img").count() == 0 and message.locator("script").count() == 0
    assert message.locator("strong").inner_text() == "bold"  # Markdown still applies
    assert page.evaluate("() => window.__injected") is None
    assert page.locator('[data-testid="stChatMessageContent"]').first.inner_text() == (
        "Show me <b>markup</b>"
    )
