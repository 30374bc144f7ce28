"""Response shapes of the OpenAI wire format, no model needed (requests: unit/test_contract)."""

from __future__ import annotations

import doctest
import json
from types import SimpleNamespace

import openai_protocol as api
import pytest
from contract import CHAT, COMPLETION, RequestError


def test_unknown_endpoint_is_404() -> None:
    with pytest.raises(RequestError) as err:
        api.route("v2/embeddings")
    assert err.value.status == 404


def test_chunk_and_completion_shapes() -> None:
    c = api.chunk(CHAT, "id", 1, "m", [api.chat_delta(0, text="hé", first=True)])
    assert c["choices"][0]["delta"] == {"role": "assistant", "content": "hé"}
    assert json.loads(api.sse(c)[len(b"data: ") :]) == c
    whole = api.completion(
        COMPLETION, "id", 1, "m", [api.text_delta(0, "t", None, "length")], api.usage(3, 4), {}
    )
    assert whole["usage"]["total_tokens"] == 7 and whole["choices"][0]["text"] == "t"
    assert "obfuscation" in api.chunk(CHAT, "id", 1, "m", [], obfuscate=True)


def test_tool_calls_shape() -> None:
    call = SimpleNamespace(id="call_1", name="f", arguments='{"a": 1}')
    streamed = api.tool_calls_json([call], first_index=2, stream=True)
    assert streamed == [
        {
            "index": 2,
            "id": "call_1",
            "type": "function",
            "function": {"name": "f", "arguments": '{"a": 1}'},
        }
    ]
    choice = api.chat_choice(0, None, "tool_calls", api.tool_calls_json([call]))
    assert (
        choice["message"]["content"] is None
        and choice["message"]["tool_calls"][0]["id"] == "call_1"
    )


def test_doctests() -> None:
    assert doctest.testmod(api).failed == 0
