"""Request validation and response shapes of the OpenAI wire format (no model needed)."""

from __future__ import annotations

import doctest
import json

import openai_protocol as api
import pytest

GOOD = {"messages": [{"role": "user", "content": "hi"}]}

BAD_BODIES = [
    (b"", "body is empty"),
    (b"{", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', "NaN"),
    (b'{"messages": [{"role": "user", "content": "x"}], "top_p": Infinity}', "Infinity"),
    (b"[" * 100000 + b"]" * 100000, "not valid JSON"),
]

BAD_FIELDS = [
    ({}, "messages", "'messages' is required"),
    ({"messages": "hi"}, "messages", "must be a list"),
    ({"messages": []}, "messages", "must not be empty"),
    ({"messages": [1]}, "messages[0]", "must be an object"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "must be one of"),
    ({"messages": [{"content": "x"}]}, "messages[0].role", "must be one of"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "must be a string"),
    ({"messages": [{"role": "user", "content": "   "}]}, "messages", "Every message is empty"),
    ({"messages": [{"role": "user", "content": "a\x00b"}]}, "messages[0].content", "NUL"),
    ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content", "surrogate"),
    ({**GOOD, "temperature": "hot"}, "temperature", "must be a number"),
    ({**GOOD, "temperature": -1}, "temperature", "between"),
    ({**GOOD, "temperature": True}, "temperature", "must be a number"),
    ({**GOOD, "top_p": 1.5}, "top_p", "between"),
    ({**GOOD, "top_k": 2.5}, "top_k", "whole number"),
    ({**GOOD, "top_k": -3}, "top_k", "between"),
    ({**GOOD, "min_p": 2}, "min_p", "between"),
    ({**GOOD, "repeat_penalty": 0}, "repeat_penalty", "between"),
    ({**GOOD, "max_tokens": 0}, "max_tokens", "between"),
    ({**GOOD, "max_tokens": -5}, "max_tokens", "between"),
    ({**GOOD, "max_tokens": 10**12}, "max_tokens", "between"),
    ({**GOOD, "max_tokens": "ten"}, "max_tokens", "whole number"),
    ({**GOOD, "max_tokens": 1.5}, "max_tokens", "whole number"),
    ({**GOOD, "seed": "x"}, "seed", "whole number"),
    ({**GOOD, "seed": 2**70}, "seed", "between"),
    ({**GOOD, "stop": 5}, "stop", "string or a list"),
    ({**GOOD, "stop": ["a", 1]}, "stop", "string or a list"),
    ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({**GOOD, "stop": ["x" * 300]}, "stop", "at most 256"),
    ({**GOOD, "stream": "yes"}, "stream", "true or false"),
    ({**GOOD, "n": 2}, "n", "n=1"),
    ({**GOOD, "stream_options": 3}, "stream_options", "must be an object"),
]


@pytest.mark.parametrize(("body", "fragment"), BAD_BODIES)
def test_bad_bodies(body: bytes, fragment: str) -> None:
    with pytest.raises(api.RequestError) as err:
        api.decode_body(body)
    assert fragment in err.value.message
    assert err.value.status == 400


@pytest.mark.parametrize(("body", "param", "fragment"), BAD_FIELDS)
def test_bad_fields(body: dict, param: str, fragment: str) -> None:
    with pytest.raises(api.RequestError) as err:
        api.parse(api.CHAT, body)
    assert fragment in err.value.message
    assert err.value.param == param
    assert err.value.body()["error"]["type"] == "invalid_request_error"


def test_completion_needs_a_prompt() -> None:
    with pytest.raises(api.RequestError, match="'prompt' is required"):
        api.parse(api.COMPLETION, {"max_tokens": 3})
    with pytest.raises(api.RequestError, match="must be a string"):
        api.parse(api.LEGACY, {"prompt": ["a"]})


def test_unknown_endpoint_is_404() -> None:
    with pytest.raises(api.RequestError) as err:
        api.route("v2/embeddings")
    assert err.value.status == 404


def test_defaults_and_aliases() -> None:
    req = api.parse(api.CHAT, {**GOOD, "max_completion_tokens": 7, "stop": "\n", "developer": 1})
    assert req.sampling.max_tokens == 7
    assert req.sampling.stop == ("\n",)
    assert req.sampling.temperature == api.DEFAULTS["temperature"]
    legacy = api.parse(api.LEGACY, {"prompt": "Q:", "max_new_tokens": 3, "stream": True})
    assert legacy.sampling.max_tokens == 3 and legacy.stream is False
    parts = api.parse(
        api.CHAT,
        {"messages": [{"role": "developer", "content": [{"type": "text", "text": "be brief"}]}]},
    )
    assert parts.messages == ({"role": "system", "content": "be brief"},)


def test_chunk_and_completion_shapes() -> None:
    c = api.chunk(api.CHAT, "id", 1, "m", "hé", first=True)
    assert c["choices"][0]["delta"] == {"role": "assistant", "content": "hé"}
    assert json.loads(api.sse(c)[len(b"data: ") :]) == c
    whole = api.completion(api.COMPLETION, "id", 1, "m", "t", "length", api.usage(3, 4), {})
    assert whole["usage"]["total_tokens"] == 7 and whole["choices"][0]["text"] == "t"


def test_doctests() -> None:
    assert doctest.testmod(api).failed == 0
