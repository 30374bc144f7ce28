"""Safe Markdown in Streamlit itself: no answer makes the browser load an image, code is kept.

The documents of tests/markdown_cases.py, and a few hundred random ones, have their image URLs
pointed at a local listener and are drawn by tests/browser/safe_markdown_page.py. As they are,
they make the browser fetch images from it (the control); through safe_markdown, no request
reaches it, no <img> is on the page, and code spans and blocks show the same text.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from tests.markdown_cases import ANSWER, KEPT, REWRITTEN, random_documents

if TYPE_CHECKING:
    from conftest import Helpers, LocalServer
    from playwright.sync_api import Browser, Page

    from tests.browser.conftest import RunningApp

pytestmark = [pytest.mark.browser]

PAGE = "tests/browser/safe_markdown_page.py"
DRAWN_TIMEOUT_MS = 120_000
FETCH_WAIT_MS = 2_000  # images start loading as soon as they are in the page
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


class ImageServer(BaseHTTPRequestHandler):
    """Answers every GET with a tiny PNG and notes the path."""

    fetched: ClassVar[list[str]] = []

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.fetched.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG)))
        self.end_headers()
        self.wfile.write(PNG)


def draw(browser: Browser, url: str) -> Page:
    page = browser.new_page()
    page.goto(url)
    page.get_by_text("All documents drawn.").wait_for(timeout=DRAWN_TIMEOUT_MS)
    page.wait_for_timeout(FETCH_WAIT_MS)
    return page


def documents_part(page: Page, index: int) -> Any:
    return page.locator(f".st-key-document-{index}")


def test_no_answer_makes_the_browser_load_an_image(
    browser: Browser,
    streamlit_app: Callable[[str, int, Mapping[str, str]], RunningApp],
    http_server: Callable[[type[BaseHTTPRequestHandler]], LocalServer],
    helpers: Helpers,
    tmp_path: Path,
) -> None:
    fetched: list[str] = []
    listener = http_server(type("Images", (ImageServer,), {"fetched": fetched}))
    kept = [*KEPT, ANSWER]
    # Each document has its own addresses, so that the browser's cache hides no fetch.
    documents = [
        text.replace("http://h/", f"{listener.url}/{index}/")
        for index, text in enumerate(
            [*kept, *(text for text, _ in REWRITTEN), *random_documents(7, 300)]
        )
    ]
    source = tmp_path / "documents.json"
    source.write_text(json.dumps(documents), encoding="utf-8")
    app = streamlit_app(PAGE, helpers.free_port(), {"SAFE_MARKDOWN_DOCUMENTS": str(source)})

    # The control: drawn as they are, the documents load images from the listener.
    raw = draw(browser, f"{app.url}/?raw=1")
    raw_images = raw.locator("[class*='st-key-document-'] img").count()
    assert raw_images > 100 and len(fetched) > 100, (raw_images, len(fetched))
    raw_code = [documents_part(raw, i).locator("code").all_inner_texts() for i in range(len(kept))]
    raw.close()

    fetched.clear()
    page = draw(browser, app.url)
    assert page.locator("[class*='st-key-document-']").count() == len(documents)
    images = page.locator("[class*='st-key-document-'] img").evaluate_all(
        "els => els.map(e => [e.closest(\"[class*='st-key-document-']\").className, e.outerHTML])"
    )
    assert images == []
    assert fetched == []
    # Code spans and blocks show exactly what they showed before.
    for index, code in enumerate(raw_code):
        assert documents_part(page, index).locator("code").all_inner_texts() == code, kept[index]
    # Images became links to the same address.
    first_trap = len(kept)
    link = documents_part(page, first_trap).locator("a")
    assert link.inner_text() == "image: a"
    assert link.get_attribute("href") == f"{listener.url}/{first_trap}/i.png"
