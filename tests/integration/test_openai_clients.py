"""Real OpenAI clients against the real server: the `openai` SDK and LangChain's ChatOpenAI."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel, Field

pytestmark = pytest.mark.integration


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population_millions: float


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
        },
    },
}


def base_url(server: Any) -> str:
    return f"{server.settings.inference_url}/predictions/{server.model}/1.0/v1"


@pytest.fixture(scope="module")
def client(torchserve_server: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base_url(torchserve_server), api_key=torchserve_server.keys.key("inference")
    )


@pytest.fixture(autouse=True)
def _no_tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """LangChain's tracing would try to reach its hosted service: keep it off."""
    for name in list(os.environ):
        if name.startswith(("LANGSMITH_", "LANGCHAIN_")):
            monkeypatch.delenv(name)
    yield


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_parse_returns_a_pydantic_object(client: openai.OpenAI, torchserve_server: Any) -> None:
    kwargs: dict[str, Any] = {
        "model": torchserve_server.model,
        "messages": ask("Describe Paris as JSON."),
        "response_format": City,
        "temperature": 0,
        "max_tokens": 120,
    }
    whole = client.chat.completions.parse(**kwargs)
    with client.chat.completions.stream(**kwargs) as events:
        streamed = events.get_final_completion()
    for completion in (whole, streamed):
        city = completion.choices[0].message.parsed
        assert isinstance(city, City), completion
        assert city.name
    assert streamed.choices[0].message.parsed == whole.choices[0].message.parsed


def test_json_object_mode(client: openai.OpenAI, torchserve_server: Any) -> None:
    answer = client.chat.completions.create(
        model=torchserve_server.model,
        messages=ask("Give me a JSON object with your favourite colour."),
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=80,
    )
    assert answer.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)


def test_logprobs_one_entry_per_token(client: openai.OpenAI, torchserve_server: Any) -> None:
    kwargs: dict[str, Any] = {
        "model": torchserve_server.model,
        "messages": ask("Name three fruits."),
        "logprobs": True,
        "top_logprobs": 3,
        "max_tokens": 12,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**kwargs)
    assert whole.usage is not None and whole.choices[0].logprobs is not None
    entries = whole.choices[0].logprobs.content
    assert entries is not None and len(entries) == whole.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        assert all(alt.logprob <= 0 for alt in entry.top_logprobs)
        # Greedy: the chosen token is the likeliest one.
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
    streamed = []
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
            streamed += chunk.choices[0].logprobs.content
    assert [e.token for e in streamed] == [e.token for e in entries]


def test_penalties_change_a_greedy_answer_that_repeats_itself(
    client: openai.OpenAI, torchserve_server: Any
) -> None:
    def complete(**penalties: float) -> str:
        answer = client.completions.create(
            model=torchserve_server.model,
            prompt="one, one, one, one, one, one, one,",
            max_tokens=16,
            temperature=0,
            extra_body={"repeat_penalty": 1.0},
            **penalties,  # type: ignore[arg-type]
        )
        return answer.choices[0].text

    plain = complete()
    assert plain.count("one") >= 4, plain
    assert complete(frequency_penalty=2.0) != plain
    assert complete(presence_penalty=2.0) != plain


def test_required_tool_call_is_valid(client: openai.OpenAI, torchserve_server: Any) -> None:
    kwargs: dict[str, Any] = {
        "model": torchserve_server.model,
        "messages": ask("What is the weather like in Oslo?"),
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
        "temperature": 0,
        "max_tokens": 60,
    }
    whole = client.chat.completions.create(**kwargs)
    with client.chat.completions.stream(**kwargs) as events:
        streamed = events.get_final_completion()
    for completion in (whole, streamed):
        choice = completion.choices[0]
        assert choice.finish_reason == "tool_calls"
        (call,) = choice.message.tool_calls or []
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        arguments = json.loads(call.function.arguments)  # type: ignore[union-attr]
        assert isinstance(arguments["city"], str) and arguments["city"]


def test_tool_results_go_back_into_the_prompt(
    client: openai.OpenAI, torchserve_server: Any
) -> None:
    answer = client.chat.completions.create(
        model=torchserve_server.model,
        messages=[
            {"role": "user", "content": "What is the weather like in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "Snowing, minus four degrees."},
        ],
        tools=[WEATHER_TOOL],
        tool_choice="none",
        temperature=0,
        max_tokens=40,
    )
    assert answer.choices[0].message.content
    assert not answer.choices[0].message.tool_calls


def test_unknown_field_is_a_400_naming_it(client: openai.OpenAI, torchserve_server: Any) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=torchserve_server.model,
            messages=ask("Hi"),
            max_tokens=4,
            extra_body={"mirostat": 2},
        )
    assert "mirostat" in str(err.value)
    with pytest.raises(openai.BadRequestError, match="reasoning_effort"):
        client.chat.completions.create(
            model=torchserve_server.model, messages=ask("Hi"), reasoning_effort="high"
        )


def test_langchain_structured_output_and_tools(torchserve_server: Any) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=torchserve_server.model,
        base_url=base_url(torchserve_server),
        api_key=torchserve_server.keys.key("inference"),
        temperature=0,
        max_tokens=120,
    )
    city = llm.with_structured_output(City, method="json_schema").invoke("Describe Paris.")
    assert isinstance(city, City) and city.name

    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return "sunny"

    message = llm.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather like in Oslo?"
    )
    (call,) = message.tool_calls  # type: ignore[attr-defined]
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    streamed = "".join(str(chunk.content) for chunk in llm.stream("Say hello."))
    assert streamed
