"""Bad requests get a 4xx naming the problem, and the same worker goes on serving."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.integration

GOOD = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}

CASES = [
    ("malformed JSON", "v1/chat/completions", b'{"messages": [', 400, "not valid JSON"),
    ("not an object", "v1/chat/completions", b"[]", 400, "must be a JSON object"),
    ("messages wrong type", "v1/chat/completions", {"messages": "hello"}, 400, "must be a list"),
    ("empty messages", "v1/chat/completions", {"messages": []}, 400, "must not be empty"),
    (
        "unknown role",
        "v1/chat/completions",
        {"messages": [{"role": "robot", "content": "x"}]},
        400,
        "role must be one of",
    ),
    (
        "temperature as text",
        "v1/chat/completions",
        {**GOOD, "temperature": "warm"},
        400,
        "'temperature' must be a number",
    ),
    (
        "top_p out of range",
        "v1/chat/completions",
        {**GOOD, "top_p": 7},
        400,
        "'top_p' must be between",
    ),
    (
        "negative max_tokens",
        "v1/chat/completions",
        {**GOOD, "max_tokens": -1},
        400,
        "'max_tokens' must be between",
    ),
    (
        "NaN",
        "v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        400,
        "NaN",
    ),
    ("prompt missing", "v1/completions", {"max_tokens": 3}, 400, "'prompt' is required"),
    (
        "prompt longer than context",
        "v1/completions",
        {"prompt": "hello " * 5000, "max_tokens": 3},
        400,
        "context window",
    ),
    ("unknown path", "v1/embeddings", GOOD, 404, "Unknown endpoint"),
    (
        "invalid UTF-8",
        "v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "\xff"}]}',
        400,
        "UTF-8",
    ),
]


def worker_pids(server: Any) -> list[int]:
    return sorted(w.pid for w in server.management.describe_model(server.model).workers)


@pytest.mark.parametrize(
    ("name", "path", "body", "status", "fragment"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_request_is_refused_and_worker_survives(
    torchserve_server: Any, name: str, path: str, body: Any, status: int, fragment: str
) -> None:
    server = torchserve_server
    before = worker_pids(server)
    url = f"{server.settings.inference_url}/predictions/{server.model}/1.0/{path}"
    auth = {
        "Authorization": f"Bearer {server.keys.key('inference')}",
        "Content-Type": "application/json",
    }
    data = body if isinstance(body, bytes) else json.dumps(body)
    response = requests.post(url, data=data, headers=auth, timeout=60)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"]
    assert error["type"] == "invalid_request_error"

    good = requests.post(
        f"{server.settings.inference_url}/predictions/{server.model}/1.0/v1/chat/completions",
        data=json.dumps(GOOD),
        headers=auth,
        timeout=60,
    )
    assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"] is not None
    assert worker_pids(server) == before, "the worker was restarted"
