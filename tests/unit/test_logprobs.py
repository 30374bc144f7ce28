"""Token probabilities: OpenAI logprobs parsed, shades, hover text, an HTML strip that escapes."""

from __future__ import annotations

import doctest
import math
from html.parser import HTMLParser
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import apps.token_view
import tschat.chat.logprobs
from apps.token_view import token_strip_html
from tschat.chat.logprobs import Alternative, TokenView, token_views


def test_doctests() -> None:
    assert doctest.testmod(tschat.chat.logprobs).failed == 0
    assert doctest.testmod(apps.token_view).failed == 0


def test_tokens_with_their_alternatives_likeliest_first() -> None:
    content = [
        {
            "token": " Paris",
            "logprob": math.log(0.6),
            "bytes": [32, 80, 97, 114, 105, 115],
            "top_logprobs": [
                {"token": " Lyon", "logprob": math.log(0.1)},
                {"token": " Paris", "logprob": math.log(0.6)},
                {"token": " the", "logprob": math.log(0.2)},
            ],
        },
        {"token": ".", "logprob": 0.0, "top_logprobs": []},
        {"token": "\n", "logprob": -30.0},
    ]
    views = token_views(content)
    assert [v.text for v in views] == [" Paris", ".", "\n"]
    assert views[0].probability == pytest.approx(0.6)
    assert [a.text for a in views[0].alternatives] == [" Paris", " the", " Lyon"]
    assert [a.probability for a in views[0].alternatives] == pytest.approx([0.6, 0.2, 0.1])
    assert views[1].probability == 1.0 and views[1].alternatives == ()
    assert views[2].probability == pytest.approx(math.exp(-30))
    assert views[0].shade == pytest.approx(0.4)
    assert views[1].colour == "rgba(255, 140, 0, 0.00)"
    assert views[2].colour == "rgba(255, 140, 0, 0.70)"  # least sure: the strongest shade


def test_no_logprobs_is_no_tokens() -> None:
    assert token_views(None) == []
    assert token_views([]) == []


def test_a_tiny_positive_logprob_from_rounding_is_certainty() -> None:
    assert token_views([{"token": "a", "logprob": 1e-9}])[0].probability == 1.0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text", "logprobs.content must be a list"),
        ({"token": "a"}, "logprobs.content must be a list"),
        ([1], r"logprobs.content\[0\] must be an object"),
        ([{"token": 5, "logprob": 0}], r"content\[0\].token must be text"),
        ([{"token": "a", "logprob": "0"}], r"content\[0\].logprob must be a number"),
        ([{"token": "a", "logprob": True}], r"content\[0\].logprob must be a number"),
        ([{"token": "a", "logprob": math.nan}], r"content\[0\].logprob must be a number"),
        ([{"token": "a"}], r"content\[0\].logprob must be a number"),
        (
            [{"token": "a", "logprob": 0, "top_logprobs": "a"}],
            r"content\[0\].top_logprobs must be a list",
        ),
        (
            [{"token": "a", "logprob": 0}, {"token": "b", "logprob": 0, "top_logprobs": [{}]}],
            r"content\[1\].top_logprobs\[0\].token must be text",
        ),
    ],
)
def test_badly_shaped_logprobs_say_which_entry(content: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        token_views(content)


def test_hover_text_writes_out_invisible_characters() -> None:
    view = TokenView("\n\t", 0.5, (Alternative("\n\t", 0.5), Alternative(" ", 0.25)))
    assert view.hover() == "“\\n\\t” 50.0%\nalternatives: “\\n\\t” 50.0% · “ ” 25.0%"


class StripReader(HTMLParser):
    """Collects the tags, texts and alternatives of a token strip (its style sheet aside)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.titles: list[str | None] = []
        self.texts: list[str] = []
        self.in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.in_style = tag == "style"
        if self.in_style:
            return
        self.tags.append(tag)
        if tag == "span":
            self.titles.append(dict(attrs).get("data-alternatives"))
            self.texts.append("")

    def handle_endtag(self, tag: str) -> None:
        self.in_style = False

    def handle_data(self, data: str) -> None:
        if self.in_style:
            return
        assert self.texts, f"text outside a span: {data!r}"
        self.texts[-1] += data


TOKENS = st.lists(
    st.tuples(
        st.text(st.characters(blacklist_categories=["Cs"]), max_size=8),
        st.floats(0.0, 1.0),
    ),
    max_size=20,
)


@given(tokens=TOKENS)
def test_the_strip_escapes_everything_and_keeps_each_token(tokens: list[tuple[str, float]]) -> None:
    views = [
        TokenView(text, p, (Alternative(text + '"><img src=x>', p / 2),)) for text, p in tokens
    ]
    strip = token_strip_html(views)
    reader = StripReader()
    reader.feed(strip)
    reader.close()
    assert reader.tags == ["div"] + ["span"] * len(views)
    assert reader.texts == [v.text.replace("\n", "↵\n") for v in views]
    assert reader.titles == [v.hover() for v in views]
    assert "<img" not in strip
