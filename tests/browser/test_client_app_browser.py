"""The chat client in headless chromium: streaming, Stop, two people at once, saved conversations
across a reload and a restart, branches, side by side, token probabilities, and answers that can
neither inject markup nor make the browser fetch anything.

The app runs with ``streamlit run`` against the session's real TorchServe (the markup and image
tests use a small fake inference server instead, because the model cannot be made to print them
on cue). The page is read straight from the DOM, several times a second, while answers stream.
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

from apps.browser import (
    ANSWER_TIMEOUT_S,
    READY_TIMEOUT_MS,
    ask,
    open_chat,
    press_slider,
    settle,
    slider_value,
    stop_app,
    wait_answers,
)
from apps.chat_view import CURSOR

if TYPE_CHECKING:
    from conftest import Helpers, LocalServer, TorchServeServer
    from playwright.sync_api import Browser, Locator, Page

    from tests.browser.conftest import RunningApp

pytestmark = [pytest.mark.integration, pytest.mark.browser]

APP = "client_app.py"
LONG_STORY = "Write a very long story about a dragon who learns to bake bread, with many chapters."

StartApp = Callable[[str, int, Mapping[str, str]], "RunningApp"]


@pytest.fixture
def chat_app(
    torchserve_server: TorchServeServer, streamlit_app: StartApp, helpers: Helpers
) -> RunningApp:
    """client_app.py served for this test, talking to the session's TorchServe."""
    return streamlit_app(APP, helpers.free_port(), torchserve_server.settings.as_env())


# ---------------------------------------------------------------- page helpers


ASSISTANT = '[data-testid="stChatMessage"]:has([aria-label="Chat message from assistant"])'
USER = '[data-testid="stChatMessage"]:has([aria-label="Chat message from user"])'


def message_texts(page: Page, selector: str) -> list[str]:
    """The text of each message matching ``selector`` (questions or answers), in order: its
    Markdown, without the captions, the buttons and the ◀ n/m ▶ position under it."""
    texts = []
    for message in page.locator(selector).all():
        parts = message.locator(
            '[data-testid="stMarkdown"] [data-testid="stMarkdownContainer"]'
        ).all_inner_texts()
        parts = [part for part in parts if not re.fullmatch(r"\d+/\d+", part.strip())]
        texts.append("\n".join(parts).replace(CURSOR, "").strip())
    return texts


def answer_text(page: Page, index: int = -1) -> str:
    """The text of an assistant message (``index`` among them); empty when there is none."""
    answers = message_texts(page, ASSISTANT)
    return answers[index] if answers else ""


def answer_caption(page: Page, index: int = -1) -> str:
    messages = page.locator(ASSISTANT)
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


# ---------------------------------------------------------------- tests


def test_answer_streams_in_and_stop_keeps_the_partial_text(
    browser: Browser, chat_app: RunningApp, torchserve_server: TorchServeServer
) -> None:
    page = open_chat(browser, chat_app.url)

    # An answer of 200 tokens (seconds long, redrawn twice a second) grows on the page, read
    # after read, then ends. A story runs to the limit: a shorter answer, ended by the model,
    # may stream in under a second on a fast machine.
    press_slider(page, "Max tokens", "Home", *["ArrowRight"] * 199)
    settle(page)
    assert slider_value(page, "Max tokens") == "200"
    ask(page, LONG_STORY)
    stop_button(page).wait_for(timeout=READY_TIMEOUT_MS)
    reads = follow(page, lambda text: not streaming(page), ANSWER_TIMEOUT_S)
    wait_answers(page, 1)
    final = answer_text(page)
    assert len(reads) >= 3, f"the answer did not grow in steps: {reads}"
    lengths = [len(r) for r in reads]
    assert lengths == sorted(lengths) and lengths[0] < len(final)
    assert all(final.startswith(r) for r in reads[:-1]), "earlier reads are prefixes of the end"
    caption = answer_caption(page)
    assert "first token" in caption and "tokens/s" in caption and "finish:" in caption
    tokens = int(re.search(r"(\d+) tokens? ·", caption).group(1))  # type: ignore[union-attr]
    assert 1 <= tokens <= 200, caption

    # A long answer is stopped midway; the text shown so far stays, marked as stopped.
    # (160 tokens: enough to stop midway when the text is redrawn twice a second, and short
    # enough for a server that finishes the answer anyway, as TorchServe does without
    # continuous batching.)
    limit = 160
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
        # Up to 120 tokens, and a question asking for a poem: a short answer could end before
        # the other question is sent, and the two would never be in flight together.
        press_slider(page, "Max tokens", "Home", *["ArrowRight"] * 119)
        settle(page)
    for page, name in zip(pages, names, strict=True):
        ask(page, f"My name is {name}. What is my name? Then write a poem about my name.")
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
        questions = message_texts(page, USER)
        assert len(questions) == 1 and name in questions[0] and other not in questions[0]


# ---------------------------------------------------------------- HTML stays text


class FakeInference(BaseHTTPRequestHandler):
    """Plays the inference API: /ping, v1/models, v1/tokenize (a token per character) and a
    streamed answer made of PIECES (here: full of markup)."""

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
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        if self.path.endswith("/v1/tokenize"):
            count = len(json.dumps(body))
            self._json({"tokens": list(range(count)), "count": count, "n_ctx": 100_000})
            return
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
    assert message_texts(page, USER) == ["Show me <b>markup</b>"]


def connect_to(page: Page, fake: LocalServer) -> None:
    """Point the chat at a fake inference server through the sidebar."""
    page.get_by_text("Remote server").click()
    url = page.get_by_label("Inference URL")
    url.fill(fake.url)
    url.press("Enter")
    page.get_by_text(f"Connected to {fake.url}: model fake answers.").wait_for(timeout=30_000)


# ---------------------------------------------------------------- nothing loads by itself


class Listener(BaseHTTPRequestHandler):
    """A local server a reply names: it records every request that reaches it."""

    requests: list[str] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        type(self).requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_markdown_image_in_a_reply_makes_no_request(
    browser: Browser,
    streamlit_app: StartApp,
    http_server: Callable[[type[BaseHTTPRequestHandler]], LocalServer],
    helpers: Helpers,
    tmp_path: Path,
) -> None:
    Listener.requests = []
    listener = http_server(Listener)
    leak = f"{listener.url}/leak.png?chat=secret"

    class ImageReply(FakeInference):
        PIECES = (
            "Here is the chart: ",
            f"![the chart]({leak})",
            " and a reference ![logo][l]\n\n",
            f"[l]: {listener.url}/logo.png\n\n",
            "Area: \\(\\pi r^2\\)",
        )

    fake = http_server(ImageReply)
    env = {"TSCHAT_RUN_DIR": str(tmp_path), "TSCHAT_MODEL_NAME": "fake"}
    app = streamlit_app(APP, helpers.free_port(), env)
    page = open_chat(browser, app.url, ready_text="No key file")
    connect_to(page, fake)
    ask(page, "Show me the chart.")
    wait_answers(page, 1, 60)
    page.wait_for_timeout(1500)  # time enough for any image to be fetched

    message = page.locator('[data-testid="stChatMessageContent"]').last
    assert message.locator("img").count() == 0
    link = message.get_by_role("link", name="image: the chart")
    assert link.get_attribute("href") == leak  # a link the user may follow, never loaded
    assert message.locator(".katex").count() >= 1  # \\( \\) is drawn as math
    assert Listener.requests == [], "the reply made the browser fetch a URL it named"


# ---------------------------------------------------------------- saved conversations


def test_a_conversation_survives_a_reload_and_a_restart_of_the_app(
    browser: Browser,
    torchserve_server: TorchServeServer,
    streamlit_app: StartApp,
    helpers: Helpers,
) -> None:
    port = helpers.free_port()
    env = torchserve_server.settings.as_env()
    app = streamlit_app(APP, port, env)
    page = open_chat(browser, app.url)
    press_slider(page, "Max tokens", "Home", *["ArrowRight"] * 7)
    settle(page)
    question = "Please remember the word 'marmalade'."
    ask(page, question)
    wait_answers(page, 1)
    answer = answer_text(page)
    assert answer
    page.wait_for_url(re.compile(r"[?&]c=\d+"))
    address = page.url

    page.reload()
    page.get_by_text("Connected to").first.wait_for(timeout=READY_TIMEOUT_MS)
    wait_answers(page, 1, 30)
    assert message_texts(page, USER) == [question]
    assert answer_text(page) == answer
    from playwright.sync_api import expect

    title = page.get_by_test_id("stSidebar").get_by_role("button", name=question)
    expect(title).to_have_count(1, timeout=READY_TIMEOUT_MS)  # the list may be drawn after the chat

    # The app stops and starts again: the same address shows the same conversation.
    stop_app(app.process)
    streamlit_app(APP, port, env)
    page.goto(address)
    page.get_by_text("Connected to").first.wait_for(timeout=READY_TIMEOUT_MS)
    wait_answers(page, 1, 30)
    assert message_texts(page, USER) == [question]
    assert answer_text(page) == answer
    assert "finish:" in answer_caption(page)


def branch_label(page: Page, message: Any) -> str:
    """What the ◀ n/m ▶ controls of a message read, spaces collapsed."""
    controls = message.locator('[class*="st-key-branch_"]')
    return " ".join(controls.inner_text().split()) if controls.count() else ""


def wait_branch(page: Page, position: str) -> None:
    """Wait until a message's ◀ ▶ controls show ``position`` (e.g. "2/2")."""
    page.wait_for_function(
        "position => [...document.querySelectorAll('[class*=st-key-branch_]')]"
        ".some(e => e.innerText.includes(position))",
        arg=position,
        timeout=READY_TIMEOUT_MS,
    )


def test_editing_a_question_makes_a_branch_and_both_can_be_read(
    browser: Browser, chat_app: RunningApp
) -> None:
    page = open_chat(browser, chat_app.url)
    press_slider(page, "Temperature", "Home")
    press_slider(page, "Max tokens", "Home", *["ArrowRight"] * 9)
    settle(page)
    ask(page, "Name a colour.")
    wait_answers(page, 1)
    first_answer = answer_text(page)

    question = page.locator(USER).first
    question.get_by_role("button", name="Edit").click()
    editor = page.get_by_label("Edit the question")
    editor.wait_for()
    editor.fill("Name a fruit.")
    page.locator(".st-key-w_resend button").click()
    page.locator(USER).get_by_text("Name a fruit.").wait_for()
    wait_branch(page, "2/2")
    wait_answers(page, 1)
    settle(page)
    question = page.locator(USER).first
    assert branch_label(page, question) == "◀ 2/2 ▶"
    assert message_texts(page, USER) == ["Name a fruit."]
    second_answer = answer_text(page)

    # ◀: the first version, with its own answer; ▶: back to the edited one.
    question.get_by_role("button", name="◀").click()
    page.locator(USER).get_by_text("Name a colour.").wait_for()
    wait_branch(page, "1/2")
    settle(page)
    question = page.locator(USER).first
    assert branch_label(page, question) == "◀ 1/2 ▶"
    assert message_texts(page, USER) == ["Name a colour."]
    assert answer_text(page) == first_answer
    question.get_by_role("button", name="▶").click()
    page.locator(USER).get_by_text("Name a fruit.").wait_for()
    wait_branch(page, "2/2")
    settle(page)
    assert answer_text(page) == second_answer
    assert branch_label(page, page.locator(USER).first) == "◀ 2/2 ▶"


# ---------------------------------------------------------------- side by side


def pane_text(page: Page, pane: int) -> str:
    box = page.locator(f".st-key-pane_answer_{pane}")
    if not box.count():
        return ""
    texts = box.locator('[data-testid="stMarkdownContainer"]').all_inner_texts()
    return "".join(texts).replace(CURSOR, "").strip()


def test_side_by_side_panes_stream_at_the_same_time(browser: Browser, chat_app: RunningApp) -> None:
    page = open_chat(browser, chat_app.url)
    page.get_by_test_id("stButtonGroup").get_by_text("Side by side").click()
    page.get_by_text("Pane 2").wait_for()
    box = page.get_by_test_id("stChatInput").locator("textarea")
    box.fill(LONG_STORY)
    box.press("Enter")
    page.locator(".st-key-w_stop_panes").wait_for(timeout=READY_TIMEOUT_MS)

    # Read both panes every 0.1 s: in some reads, both have grown since the read before.
    reads: list[tuple[int, int]] = []
    both_grew = 0
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while both_grew < 3:
        assert time.monotonic() < deadline, f"the panes did not grow together: {reads[-10:]}"
        current = (len(pane_text(page, 0)), len(pane_text(page, 1)))
        if reads and current[0] > reads[-1][0] and current[1] > reads[-1][1]:
            both_grew += 1
        if not reads or current != reads[-1]:
            reads.append(current)
        page.wait_for_timeout(100)
    page.locator(".st-key-w_stop_panes button").click()
    page.locator(".st-key-w_stop_panes").wait_for(state="detached", timeout=60_000)
    for pane in (0, 1):
        caption = " ".join(
            page.locator(f".st-key-pane_answer_{pane}")
            .locator('[data-testid="stCaptionContainer"]')
            .all_inner_texts()
        )
        assert "first token" in caption and "tokens/s" in caption, caption


# ---------------------------------------------------------------- token probabilities


def test_the_token_probability_view_shows_the_alternatives_of_a_token(
    browser: Browser, chat_app: RunningApp
) -> None:
    page = open_chat(browser, chat_app.url)
    page.get_by_text("Token probabilities").first.click()
    page.get_by_text("Alternatives per token").wait_for()
    press_slider(page, "Max tokens", "Home", *["ArrowRight"] * 5)
    settle(page)
    ask(page, "Name a colour.")
    wait_answers(page, 1)
    tokens = page.locator(".tschat-token")
    tokens.first.wait_for()
    assert tokens.count() == 6
    first = tokens.first
    assert "alternatives: " in (first.get_attribute("data-alternatives") or "")
    hidden = first.evaluate(AFTER_CONTENT)
    assert hidden in ("none", "normal"), hidden

    def hover() -> None:
        page.mouse.move(0, 0)  # off and on again: a replaced element gets the hover too
        first.hover()

    assert "alternatives: " in _after_touching(first, hover)
    # A click (focus) shows them too, for a screen without hover.
    page.mouse.move(0, 0)
    assert "alternatives: " in _after_touching(tokens.nth(1), tokens.nth(1).click)


AFTER_CONTENT = "e => getComputedStyle(e, '::after').content"


def _after_touching(token: Locator, touch: Callable[[], None], timeout_s: float = 10.0) -> str:
    """A token's ::after text once hovered or clicked; touched again while the page's last
    rerun after the answer may still replace the element."""
    deadline = time.monotonic() + timeout_s
    while True:
        touch()
        shown = str(token.evaluate(AFTER_CONTENT))
        if "alternatives: " in shown or time.monotonic() > deadline:
            return shown
        time.sleep(0.2)
