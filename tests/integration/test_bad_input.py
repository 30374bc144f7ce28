"""Malformed requests get a 4xx naming the problem, and the same worker goes on serving."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.integration

CHAT = "v1/chat/completions"
GOOD = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}


def with_(**fields: Any) -> dict[str, Any]:
    return {**GOOD, **fields}


def msg(**fields: Any) -> dict[str, Any]:
    return {"messages": [fields], "max_tokens": 4}


# (name, url_path, body, status, fragment of the error message)
CASES: list[tuple[str, str, Any, int, str]] = [
    # broken JSON
    ("truncated JSON", CHAT, b'{"messages": [', 400, "not valid JSON"),
    ("trailing comma", CHAT, b'{"messages": [],}', 400, "not valid JSON"),
    ("single quotes", CHAT, b"{'messages': []}", 400, "not valid JSON"),
    ("bare word", CHAT, b"hello", 400, "not valid JSON"),
    ("empty body", CHAT, b"", 400, "body is empty"),
    ("JSON array", CHAT, b"[]", 400, "must be a JSON object"),
    ("JSON string", CHAT, b'"hi"', 400, "must be a JSON object"),
    ("JSON null", CHAT, b"null", 400, "must be a JSON object"),
    ("deep nesting", CHAT, b"[" * 50_000 + b"]" * 50_000, 400, "not valid JSON"),
    (
        "raw control character",
        CHAT,
        b'{"messages": [{"role": "user", "content": "a\x01b"}]}',
        400,
        "not valid JSON",
    ),
    # wrong types
    ("messages as string", CHAT, {"messages": "hello"}, 400, "must be a list"),
    ("messages as object", CHAT, {"messages": {"role": "user"}}, 400, "must be a list"),
    ("message as number", CHAT, {"messages": [7]}, 400, "must be an object"),
    ("content as number", CHAT, msg(role="user", content=42), 400, "content must be a string"),
    (
        "content as object",
        CHAT,
        msg(role="user", content={"a": 1}),
        400,
        "content must be a string",
    ),
    (
        "content part not text",
        CHAT,
        msg(role="user", content=[{"type": "bogus"}]),
        400,
        "parts must be",
    ),
    (
        "image content part",
        CHAT,
        msg(role="user", content=[{"type": "image_url", "image_url": {"url": "x"}}]),
        400,
        "reads text only",
    ),
    ("temperature as text", CHAT, with_(temperature="warm"), 400, "'temperature' must be a number"),
    ("temperature as bool", CHAT, with_(temperature=True), 400, "'temperature' must be a number"),
    (
        "max_tokens as text",
        CHAT,
        with_(max_tokens="10"),
        400,
        "'max_tokens' must be a whole number",
    ),
    (
        "max_tokens fractional",
        CHAT,
        with_(max_tokens=2.5),
        400,
        "'max_tokens' must be a whole number",
    ),
    ("stream as text", CHAT, with_(stream="yes"), 400, "'stream' must be true or false"),
    ("stop as number", CHAT, with_(stop=3), 400, "'stop' must be a string or a list"),
    ("seed as text", CHAT, with_(seed="abc"), 400, "'seed' must be a whole number"),
    # negative, huge, non-finite numbers
    ("negative max_tokens", CHAT, with_(max_tokens=-1), 400, "'max_tokens' must be between"),
    ("zero max_tokens", CHAT, with_(max_tokens=0), 400, "'max_tokens' must be between"),
    ("huge max_tokens", CHAT, with_(max_tokens=10**18), 400, "'max_tokens' must be between"),
    ("negative temperature", CHAT, with_(temperature=-0.5), 400, "'temperature' must be between"),
    ("huge temperature", CHAT, with_(temperature=1e308), 400, "'temperature' must be between"),
    ("top_p above one", CHAT, with_(top_p=7), 400, "'top_p' must be between"),
    ("negative top_k", CHAT, with_(top_k=-1), 400, "'top_k' must be between"),
    ("min_p above one", CHAT, with_(min_p=1.5), 400, "'min_p' must be between"),
    ("zero repeat_penalty", CHAT, with_(repeat_penalty=0), 400, "'repeat_penalty' must be between"),
    ("huge seed", CHAT, with_(seed=2**80), 400, "'seed' must be between"),
    (
        "NaN",
        CHAT,
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        400,
        "NaN",
    ),
    (
        "Infinity",
        CHAT,
        b'{"messages": [{"role": "user", "content": "x"}], "top_p": Infinity}',
        400,
        "Infinity",
    ),
    ("n above the limit", CHAT, with_(n=99), 400, "'n' must be between"),
    # roles and messages
    ("unknown role", CHAT, msg(role="robot", content="x"), 400, "role must be one of"),
    ("missing role", CHAT, msg(content="x"), 400, "role must be one of"),
    ("missing messages", CHAT, {"max_tokens": 3}, 400, "'messages' is required"),
    ("empty messages", CHAT, {"messages": []}, 400, "must not be empty"),
    ("blank content only", CHAT, msg(role="user", content="   \n"), 400, "Every message is empty"),
    ("NUL in content", CHAT, msg(role="user", content="a\u0000b"), 400, "NUL"),
    (
        "lone surrogate",
        CHAT,
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
        400,
        "surrogate",
    ),
    ("too many stops", CHAT, with_(stop=["a", "b", "c", "d", "e"]), 400, "at most 4"),
    # sizes and encodings
    (
        "1 MB prompt",
        "v1/completions",
        {"prompt": "lorem ipsum " * 90_000, "max_tokens": 3},
        400,
        "context window",
    ),
    ("prompt over context", CHAT, msg(role="user", content="hello " * 5000), 400, "context window"),
    (
        "invalid UTF-8",
        CHAT,
        b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
        400,
        "UTF-8",
    ),
    ("prompt missing", "v1/completions", {"max_tokens": 3}, 400, "'prompt' is required"),
    (
        "prompt list with a number",
        "v1/completions",
        {"prompt": ["a", 5]},
        400,
        "prompt[1] must be a non-empty string",
    ),
    ("legacy without prompt", "", {"max_tokens": 3}, 400, "'prompt' is required"),
    # endpoints
    ("unknown endpoint", "v1/embeddings", GOOD, 404, "Unknown endpoint"),
    ("deeper unknown path", "v1/chat/completions/extra", GOOD, 404, "Unknown endpoint"),
]


def worker_pids(server: Any) -> list[int]:
    return sorted(w.pid for w in server.management.describe_model(server.model).workers)


def auth(server: Any) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {server.keys.key('inference')}",
        "Content-Type": "application/json",
    }


def predictions_url(server: Any, path: str) -> str:
    base = f"{server.settings.inference_url}/predictions/{server.model}"
    return f"{base}/1.0/{path}" if path else base


def assert_still_serving(server: Any, pids_before: list[int]) -> None:
    good = requests.post(
        predictions_url(server, CHAT), data=json.dumps(GOOD), headers=auth(server), timeout=60
    )
    assert good.status_code == 200, good.text
    assert good.json()["usage"]["completion_tokens"] > 0
    assert worker_pids(server) == pids_before, "the worker was restarted"


def test_there_are_at_least_forty_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize(
    ("name", "path", "body", "status", "fragment"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_request_is_refused_and_worker_survives(
    torchserve_server: Any, name: str, path: str, body: Any, status: int, fragment: str
) -> None:
    server = torchserve_server
    before = worker_pids(server)
    data = body if isinstance(body, bytes) else json.dumps(body)
    response = requests.post(
        predictions_url(server, path), data=data, headers=auth(server), timeout=60
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"
    assert_still_serving(server, before)


def test_oversized_body_is_refused_by_torchserve(torchserve_server: Any) -> None:
    server = torchserve_server
    before = worker_pids(server)
    size = server.settings.max_request_size + 1024
    body = b'{"prompt": "' + b"a" * size + b'"}'
    response = requests.post(
        predictions_url(server, "v1/completions"), data=body, headers=auth(server), timeout=60
    )
    assert response.status_code == 413, response.status_code
    assert_still_serving(server, before)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "messages": JSON
        | st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "role": JSON | st.sampled_from(["user", "system", "assistant"]),
                    "content": JSON,
                },
            ),
            max_size=3,
        ),
        "temperature": JSON,
        "top_p": JSON,
        "top_k": JSON,
        "stop": JSON,
        "stream": JSON,
        "seed": JSON,
        "prompt": JSON,
    },
)


@pytest.fixture(scope="module")
def pids_before_fuzzing(torchserve_server: Any) -> list[int]:
    return worker_pids(torchserve_server)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(body=JSON | FIELDS, path=st.sampled_from([CHAT, "v1/completions", ""]))
def test_random_json_never_breaks_the_server(
    torchserve_server: Any, pids_before_fuzzing: list[int], body: Any, path: str
) -> None:
    server = torchserve_server
    if isinstance(body, dict):
        body = {**body, "max_tokens": 4}  # bound the work when a body happens to be valid
    response = requests.post(
        predictions_url(server, path), data=json.dumps(body), headers=auth(server), timeout=60
    )
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert response.json()["error"]["message"]


def test_worker_survived_the_fuzzing(
    torchserve_server: Any, pids_before_fuzzing: list[int]
) -> None:
    server = torchserve_server
    assert_still_serving(server, pids_before_fuzzing)
    assert all(w.status == "READY" for w in server.management.describe_model(server.model).workers)
