"""Safe Markdown: images become links, code stays as written, LaTeX delimiters become Streamlit's.

The documents and their expected rewrites are in tests/markdown_cases.py; the browser test
(tests/browser/test_safe_markdown_browser.py) draws the same documents in Streamlit itself.
"""

from __future__ import annotations

import doctest
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import apps.safe_markdown
from apps.safe_markdown import safe_markdown
from tests.markdown_cases import ANSWER, IMAGE, KEPT, REWRITTEN, SAFE_ANSWER


def test_doctests() -> None:
    assert doctest.testmod(apps.safe_markdown).failed == 0


@pytest.mark.parametrize(("text", "expected"), REWRITTEN, ids=[t for t, _ in REWRITTEN])
def test_images_become_links(text: str, expected: str) -> None:
    assert safe_markdown(text) == expected


@pytest.mark.parametrize("text", KEPT, ids=KEPT)
def test_code_and_non_images_are_kept(text: str) -> None:
    assert safe_markdown(text) == text


def test_a_bracket_after_an_exclamation_mark_is_escaped_and_reads_the_same() -> None:
    # Not an image (no definition), but "!" before "[" is escaped anyway: it renders as "!".
    assert safe_markdown("Wow![1] and ![r]") == "Wow\\![1] and \\![r]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Area \\(\\pi r^2\\) here", "Area $\\pi r^2$ here"),
        ("\\[\nE = mc^2\n\\]", "$$\nE = mc^2\n$$"),
        ("inline \\[x\\] too", "inline $$x$$ too"),
        ("cost \\(a\\$b\\)", "cost $$a\\$b$$"),  # a dollar inside needs a longer fence
        ("`\\(x\\)` and\n```\n\\[y\\]\n```", "`\\(x\\)` and\n```\n\\[y\\]\n```"),
        ("\\\\(not math\\\\)", "\\\\(not math\\\\)"),  # escaped backslashes
        ("open \\( only", "open \\( only"),
        ("empty \\(\\) stays", "empty \\(\\) stays"),
        ("$\\(x\\)$", "$\\(x\\)$"),  # already inside math
        ("\\(a\n\nb\\)", "\\(a\n\nb\\)"),  # across paragraphs
    ],
)
def test_latex_delimiters(text: str, expected: str) -> None:
    assert safe_markdown(text) == expected


def test_a_realistic_answer() -> None:
    assert safe_markdown(ANSWER) == SAFE_ANSWER


MARKDOWNISH = st.lists(
    st.sampled_from(
        [*"![]()`$\\<>:{}|#-*> \n\tax1~", "```", "$$", ":::d", "http://", "\\(", "\\[", "    "]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=MARKDOWNISH)
def test_rewriting_twice_changes_nothing_more(text: str) -> None:
    once = safe_markdown(text)
    assert safe_markdown(once) == once


def clean(text: str) -> str:
    """What st.markdown does to any text first (and safe_markdown too)."""
    return textwrap.dedent(text).strip()


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.characters(blacklist_characters="!\\"), max_size=80))
def test_text_without_an_exclamation_mark_or_backslash_is_only_cleaned(text: str) -> None:
    assert safe_markdown(text) == clean(text)


@settings(max_examples=200, deadline=None)
@given(code=st.text(st.characters(blacklist_characters="`~\r"), max_size=80))
def test_anything_inside_a_fenced_block_is_kept(code: str) -> None:
    text = f"Before ![a]({IMAGE})\n\n```text\n{code}\n```"
    assert safe_markdown(text) == clean(text).replace("![a]", "[image: a]", 1)


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(st.sampled_from(["a", "b", " ", "![", "](", ")", "`", "\\", "!"]), max_size=30)
)
def test_only_exclamation_marks_and_image_openers_change(words: list[str]) -> None:
    # Without LaTeX delimiters, the output is the input with backslashes inserted before "!",
    # "![" replaced by "[image" (+ ": ") and reference labels added.
    text = clean("".join(words))
    out = safe_markdown(text)
    simplified = out.replace("[image: ", "![").replace("[image", "![").replace("\\!", "!")
    assert simplified.replace("\\", "") == text.replace("\\", "")


def test_a_text_too_long_to_parse_has_every_image_opener_escaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(apps.safe_markdown, "MAX_PARSED_CHARS", 40)
    text = "a ![x](http://h/i.png) \\![kept] \\\\![y](http://h/i.png) `![in code](z)`"
    assert safe_markdown(text) == (
        "a \\![x](http://h/i.png) \\![kept] \\\\\\![y](http://h/i.png) `\\![in code](z)`"
    )


@pytest.mark.parametrize(
    "text",
    [
        "<!-- " * 4000,
        '<a b="' * 4000,
        " ".join("`" * k for k in range(1, 200)),
        "[" * 5000 + "[a](b)" * 5000,
        "\n".join("  " * k + "- x" for k in range(100)),
    ],
    ids=["comments", "quotes", "backtick runs", "brackets", "deep lists"],
)
def test_pathological_texts_are_handled(text: str) -> None:
    # Texts that once made the parser quadratic (unclosed comments, unmatched runs, brackets
    # left open): each is still read whole and its image rewritten.
    assert safe_markdown("![a](http://h/i.png) " + text).startswith("[image: a](http://h/i.png)")
