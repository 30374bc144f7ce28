"""The request contract: every field declared once, validated, and shown in the README."""

from __future__ import annotations

import doctest
import math
from typing import Any

import pytest

from tschat import contract
from tschat.contract import CHAT, COMPLETION, DETOKENIZE, LEGACY, TOKENIZE, RequestError
from tschat.settings import REPO_ROOT

GOOD: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
LIMITS = contract.Limits(n_ctx=1024, n_vocab=49152, max_sequences=8, max_text_chars=10_000)

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
    ({"messages": [{"role": "user", "content": "a\ufdd0"}]}, "messages[0].content", "U+FDD0"),
    (
        {"messages": [{"role": "user", "content": "x", "mood": 1}]},
        "messages[0].mood",
        "not a field",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        "messages[0].content",
        "text only",
    ),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", "required"),
    ({**GOOD, "temperature": "hot"}, "temperature", "must be a number"),
    ({**GOOD, "temperature": -1}, "temperature", "between"),
    ({**GOOD, "temperature": True}, "temperature", "must be a number"),
    ({**GOOD, "temperature": 1e308 * 10}, "temperature", "between"),
    ({**GOOD, "top_p": 1.5}, "top_p", "between"),
    ({**GOOD, "top_k": 2.5}, "top_k", "whole number"),
    ({**GOOD, "top_k": -3}, "top_k", "between"),
    ({**GOOD, "min_p": 2}, "min_p", "between"),
    ({**GOOD, "repeat_penalty": 0}, "repeat_penalty", "between"),
    ({**GOOD, "presence_penalty": 3}, "presence_penalty", "between"),
    ({**GOOD, "frequency_penalty": -2.5}, "frequency_penalty", "between"),
    ({**GOOD, "max_tokens": 0}, "max_tokens", "between"),
    ({**GOOD, "max_tokens": -5}, "max_tokens", "between"),
    ({**GOOD, "max_tokens": 10**12}, "max_tokens", "between"),
    ({**GOOD, "max_tokens": 5000}, "max_tokens", "context window"),
    ({**GOOD, "max_tokens": "ten"}, "max_tokens", "whole number"),
    ({**GOOD, "max_tokens": 1.5}, "max_tokens", "whole number"),
    ({**GOOD, "max_tokens": 5, "max_completion_tokens": 6}, "max_completion_tokens", "disagree"),
    ({**GOOD, "seed": "x"}, "seed", "whole number"),
    ({**GOOD, "seed": 2**70}, "seed", "between"),
    ({**GOOD, "stop": 5}, "stop", "string or a list"),
    ({**GOOD, "stop": ["a", 1]}, "stop", "string or a list"),
    ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
    ({**GOOD, "stop": ["x" * 300]}, "stop", "at most 256"),
    ({**GOOD, "stream": "yes"}, "stream", "true or false"),
    ({**GOOD, "n": 0}, "n", "between"),
    ({**GOOD, "n": 9}, "n", "at most 8 here"),
    ({**GOOD, "stream_options": 3}, "stream_options", "must be an object"),
    ({**GOOD, "stream_options": {"x": 1}}, "stream_options", "Unknown field"),
    ({**GOOD, "logit_bias": {"abc": 1}}, "logit_bias", "not a token id"),
    ({**GOOD, "logit_bias": {"99999999": 1}}, "logit_bias", "not a token id"),
    ({**GOOD, "logit_bias": {"5": 101}}, "logit_bias", "-100 to 100"),
    ({**GOOD, "logprobs": 3}, "logprobs", "true or false"),
    ({**GOOD, "top_logprobs": 2}, "top_logprobs", "needs 'logprobs'"),
    ({**GOOD, "logprobs": True, "top_logprobs": 21}, "top_logprobs", "between"),
    ({**GOOD, "response_format": {"type": "yaml"}}, "response_format", "must be"),
    ({**GOOD, "response_format": {"type": "json_schema"}}, "response_format", "json_schema"),
    (
        {**GOOD, "response_format": {"type": "json_schema", "json_schema": {"name": "a b"}}},
        "response_format",
        "name",
    ),
    (
        {**GOOD, "response_format": {"type": "json_object"}, "grammar": "root ::= x"},
        "grammar",
        "not both",
    ),
    ({**GOOD, "tools": [{"type": "custom", "custom": {}}]}, "tools[0]", "'custom' tools"),
    ({**GOOD, "tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0]", "name"),
    ({**GOOD, "tool_choice": "required"}, "tool_choice", "needs 'tools'"),
    ({**GOOD, "model": "gpt-4o"}, "model", "not served"),
    ({**GOOD, "temperature": 0.5, "colour": "red"}, "colour", "Unknown field 'colour'"),
    ({**GOOD, "functions": [{"name": "f"}]}, "functions", "not supported"),
    ({**GOOD, "reasoning_effort": "high"}, "reasoning_effort", "not supported"),
    ({**GOOD, "modalities": ["text", "audio"]}, "modalities", "text only"),
    ({**GOOD, "metadata": {"k": 5}}, "metadata.k", "must be a string"),
    ({**GOOD, "user": 5}, "user", "must be a string"),
    ({"messages": [{"role": "user", "content": "x"}] * 1024}, "messages", "at most 1023"),
    ({"messages": [{"role": "user", "content": "x" * 10_001}]}, "messages", "characters of text"),
]


@pytest.mark.parametrize(("body", "fragment"), BAD_BODIES)
def test_bad_bodies(body: bytes, fragment: str) -> None:
    with pytest.raises(RequestError) as err:
        contract.decode_body(body)
    assert fragment in err.value.message
    assert err.value.status == 400


@pytest.mark.parametrize(("body", "param", "fragment"), BAD_FIELDS)
def test_bad_fields(body: dict[str, Any], param: str, fragment: str) -> None:
    with pytest.raises(RequestError) as err:
        contract.parse(CHAT, body, contract.Limits(**{**LIMITS.__dict__, "model": "smollm2"}))
    assert fragment in err.value.message
    assert err.value.param == param
    assert err.value.status in (400, 404)


def test_huge_numbers_are_refused() -> None:
    with pytest.raises(RequestError, match="not valid JSON"):
        contract.decode_body(('{"messages": [], "seed": ' + "9" * 100_000 + "}").encode())
    body = contract.decode_body(('{"seed": ' + "9" * 300 + ', "top_p": 1e400}').encode())
    assert body["top_p"] == math.inf
    with pytest.raises(RequestError, match="'seed' must be between"):
        contract.parse(CHAT, {**GOOD, "seed": body["seed"]})
    with pytest.raises(RequestError, match="'top_p' must be between"):
        contract.parse(CHAT, {**GOOD, "top_p": body["top_p"]})


def test_completion_prompts() -> None:
    with pytest.raises(RequestError, match="'prompt' is required"):
        contract.parse(COMPLETION, {"max_tokens": 3})
    assert contract.parse(COMPLETION, {"prompt": ["a", "b"], "n": 2}, LIMITS).answers == 4
    assert contract.parse(COMPLETION, {"prompt": [1, 2, 3]}, LIMITS).prompts == ((1, 2, 3),)
    with pytest.raises(RequestError, match="not a token id"):
        contract.parse(COMPLETION, {"prompt": [1, 49152]}, LIMITS)
    with pytest.raises(RequestError, match="more than the 8"):
        contract.parse(COMPLETION, {"prompt": ["a", "b", "c"], "n": 3}, LIMITS)
    with pytest.raises(RequestError, match="'best_of' must equal 'n'"):
        contract.parse(COMPLETION, {"prompt": "a", "best_of": 2})
    with pytest.raises(RequestError, match="'suffix' is not supported"):
        contract.parse(COMPLETION, {"prompt": "a", "suffix": "b"})
    with pytest.raises(RequestError, match="Unknown field 'messages' for completions"):
        contract.parse(COMPLETION, {"prompt": "a", "messages": []})


def test_defaults_and_aliases() -> None:
    req = contract.parse(CHAT, {**GOOD, "max_completion_tokens": 7, "stop": "\n"})
    assert req.sampling.max_tokens == 7
    assert req.sampling.stop == ("\n",)
    assert req.sampling.temperature == contract.FIELD["temperature"].default
    assert req.sampling == contract.Sampling(max_tokens=7, stop=("\n",))
    legacy = contract.parse(LEGACY, {"prompt": "Q:", "max_new_tokens": 3, "stream": True})
    assert legacy.sampling.max_tokens == 3 and legacy.stream is True
    parts = contract.parse(
        CHAT,
        {"messages": [{"role": "developer", "content": [{"type": "text", "text": "be brief"}]}]},
    )
    assert parts.messages == (contract.Message("system", "be brief"),)
    meta = contract.parse(
        CHAT,
        {**GOOD, "user": "ann", "metadata": {"a": "b"}, "store": False, "modalities": ["text"]},
    )
    assert meta.user == "user:ann"


def test_the_original_example_body() -> None:
    body = {
        "seed": 0,
        "prompt": "Alan Turing was a ",
        "max_tokens": 128,
        "temperature": 0.7,
        "top_p": 0.7,
        "top_k": 50,
        "logprobs": 0,
        "stop": [],
    }
    req = contract.parse(LEGACY, body)
    assert req.logprobs == 0 and req.sampling.seed == 0 and req.sampling.top_k == 50


def test_tools_and_choices() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    auto = contract.parse(CHAT, {**GOOD, "tools": [tool]})
    assert auto.tool_choice == contract.ToolChoice("auto", ("f",))
    named = contract.parse(
        CHAT,
        {**GOOD, "tools": [tool], "tool_choice": {"type": "function", "function": {"name": "f"}}},
    )
    assert named.tool_choice == contract.ToolChoice("required", ("f",))
    with pytest.raises(RequestError, match="not in 'tools'"):
        contract.parse(
            CHAT,
            {
                **GOOD,
                "tools": [tool],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
        )
    history = {
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ]
    }
    req = contract.parse(CHAT, history)
    assert req.messages[1].tool_calls == (contract.ToolCall("c1", "f", "{}"),)
    assert req.messages[2].tool_call_id == "c1"


def test_token_routes() -> None:
    req = contract.parse(TOKENIZE, {"content": "hi", "with_pieces": True})
    assert req.content == "hi" and req.with_pieces and not req.add_special
    assert contract.parse(TOKENIZE, GOOD).messages
    with pytest.raises(RequestError, match="either 'content'"):
        contract.parse(TOKENIZE, {**GOOD, "content": "x"})
    assert contract.parse(DETOKENIZE, {"tokens": [1, 2]}, LIMITS).tokens == (1, 2)
    with pytest.raises(RequestError, match="not a token id"):
        contract.parse(DETOKENIZE, {"tokens": [-1]}, LIMITS)


def test_every_seed_maps_to_a_repeatable_sampler_seed() -> None:
    for seed in (-(2**63), -1, 0, 1, 2**32 - 1, 2**32, 2**64 - 1):
        assert 0 <= contract.sampler_seed(seed) < 0xFFFFFFFF


def test_sampling_holds_every_sampling_field() -> None:
    names = {f.name for f in contract.FIELDS}
    assert set(contract.Sampling.__dataclass_fields__) <= names
    for name, spec in contract.Sampling.__dataclass_fields__.items():
        if name in ("logit_bias", "seed", "stop"):
            continue
        assert spec.default == contract.FIELD[name].default, name


def test_readme_table_is_the_contract() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert contract.readme_table(readme) == contract.markdown_table(), (
        "README's parameter table differs from tschat/contract.py; "
        "regenerate it with: python -m tschat.contract"
    )


def test_doctests() -> None:
    assert doctest.testmod(contract).failed == 0
