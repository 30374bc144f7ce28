"""Whose cached prompt beginnings a request may reuse: handler.prefix_cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import load_handler
from test_handler import CHAT
from worker_harness import Harness

SYSTEM = "You are a careful assistant for the accounts team of a small company. " * 6
GREEDY = {"temperature": 0, "max_tokens": 4}


def ask(harness: Harness, question: str, user: str | None = None) -> dict:
    body = {
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        **GREEDY,
        **({"user": user} if user else {}),
    }
    _, final = harness.run([(CHAT, body)])
    return json.loads(final.predictions[0].body)


def cached(answer: dict) -> int:
    return int(answer["usage"]["prompt_tokens_details"]["cached_tokens"])


@pytest.fixture(scope="module")
def per_user(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    harness = load_handler(tmp_path_factory.mktemp("model"), handler={"prefix_cache": "per_user"})
    yield harness
    harness.handler.engine.close()


def test_per_user_reuses_only_the_same_users_cache(per_user: Harness) -> None:
    first = ask(per_user, "What is the salary of Ann?", user="alice")
    assert cached(first) == 0
    again = ask(per_user, "What is the salary of Bob?", user="alice")
    assert cached(again) > 80, "alice's own beginning is reused"
    other = ask(per_user, "What is the salary of Ann?", user="bob")
    assert cached(other) == 0, "bob learns nothing of what alice sent"
    anonymous = ask(per_user, "What is the salary of Ann?")
    assert cached(anonymous) == 0, "a request without a user shares with no one"
    assert other["choices"] == first["choices"]


def test_shared_reuses_anyones_cache(harness: Harness) -> None:
    ask(harness, "What is the salary of Ann?", user="alice")
    other = ask(harness, "What is the salary of Ann?", user="bob")
    assert cached(other) == other["usage"]["prompt_tokens"] - 1


def test_off_reuses_nothing(tmp_path: Path) -> None:
    harness = load_handler(tmp_path, handler={"prefix_cache": "off"})
    try:
        ask(harness, "What is the salary of Ann?", user="alice")
        assert cached(ask(harness, "What is the salary of Ann?", user="alice")) == 0
    finally:
        harness.handler.engine.close()


def test_packaging_offers_the_engines_scopes() -> None:
    import engine

    from tschat.ops.packaging import PREFIX_CACHE_SCOPES

    assert PREFIX_CACHE_SCOPES == engine.CACHE_SCOPES
