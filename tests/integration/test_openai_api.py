"""The OpenAI-style API served by a real TorchServe with the real default model."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
import requests

pytestmark = pytest.mark.integration


def api_url(server: Any, path: str = "") -> str:
    return f"{server.settings.inference_url}/predictions/{server.model}/1.0/{path}"


def headers(server: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.keys.key('inference')}"}


def post(server: Any, path: str, body: Any, **kwargs: Any) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(
        api_url(server, path),
        data=data,
        headers={**headers(server), "Content-Type": "application/json"},
        timeout=120,
        **kwargs,
    )


def ask(content: str, **params: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, **params}


def read_stream(response: requests.Response) -> tuple[list[tuple[float, dict[str, Any]]], bool]:
    """(arrival time, chunk) for every SSE chunk, and whether [DONE] closed the stream."""
    response.encoding = "utf-8"
    chunks = []
    done = False
    for line in response.iter_lines(decode_unicode=True):
        if not line:
            continue
        assert line.startswith("data: ")
        data = line[len("data: ") :]
        if data == "[DONE]":
            done = True
            continue
        chunks.append((time.perf_counter(), json.loads(data)))
    return chunks, done


def prompt_token_count(messages: list[dict[str, str]]) -> int:
    """Count the prompt's tokens independently, with llama-cpp-python's tokenizer and template."""
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from tests.handler.worker_harness import default_gguf

    llm = llama_cpp.Llama(str(default_gguf()), vocab_only=True, verbose=False)
    formatter = Jinja2ChatFormatter(
        template=llm.metadata["tokenizer.chat_template"],
        eos_token=llm._model.token_get_text(llm.token_eos()),
        bos_token=llm._model.token_get_text(llm.token_bos()),
    )
    prompt = formatter(messages=messages)
    return len(llm.tokenize(prompt.prompt.encode(), add_bos=not prompt.added_special, special=True))


def test_streamed_chat_arrives_token_by_token(torchserve_server: Any) -> None:
    body = ask("Tell me a short story about a cat.", stream=True, max_tokens=48)
    start = time.perf_counter()
    response = post(torchserve_server, "v1/chat/completions", body, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    chunks, done = read_stream(response)
    assert done
    content = [
        (t, c) for t, c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")
    ]
    text = "".join(c["choices"][0]["delta"]["content"] for _, c in content)
    assert len(content) >= 40, "one chunk per token"
    first, last = content[0][0] - start, content[-1][0] - start
    assert first < last / 2, f"first token at {first:.3f}s, last at {last:.3f}s: not streamed"
    final, usage_chunk = chunks[-2][1], chunks[-1][1]
    assert final["choices"][0]["finish_reason"] == "length"
    assert usage_chunk["choices"] == [], "usage comes in a chunk of its own, as OpenAI sends it"
    usage = usage_chunk["usage"]
    assert usage["completion_tokens"] == 48
    assert usage["prompt_tokens"] == prompt_token_count(body["messages"])
    assert usage["total_tokens"] == usage["prompt_tokens"] + 48
    assert text.strip()


def test_whole_chat_completion(torchserve_server: Any) -> None:
    response = post(
        torchserve_server,
        "v1/chat/completions",
        ask("What is the capital of France?", max_tokens=40),
    )
    assert response.status_code == 200
    data = response.json()
    assert data["object"] == "chat.completion"
    assert "Paris" in data["choices"][0]["message"]["content"]
    assert data["choices"][0]["finish_reason"] in ("stop", "length")
    assert data["usage"]["completion_tokens"] > 0


def test_text_completion(torchserve_server: Any) -> None:
    body = {"prompt": "The three primary colours are", "max_tokens": 12, "temperature": 0}
    data = post(torchserve_server, "v1/completions", body).json()
    assert data["object"] == "text_completion"
    assert data["choices"][0]["text"].strip()
    assert data["usage"]["completion_tokens"] == 12


def test_legacy_body_still_works(torchserve_server: Any) -> None:
    prompt = "Question: What is the closest star to Earth ? Answer:"
    body = {
        "prompt": prompt,
        "max_tokens": 20,
        "temperature": 0.1,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 3,
        "stop": ["Q:"],
    }
    response = requests.post(
        f"{torchserve_server.settings.inference_url}/predictions/{torchserve_server.model}",
        data=json.dumps(body),
        headers={
            **headers(torchserve_server),
            "Content-type": "application/json",
            "Accept": "text/plain",
        },
        timeout=60,
    )
    assert response.status_code == 200
    assert response.text.startswith(prompt) and len(response.text) > len(prompt)


def test_models_endpoint(torchserve_server: Any) -> None:
    response = requests.get(
        api_url(torchserve_server, "v1/models"), headers=headers(torchserve_server), timeout=30
    )
    assert response.status_code == 200
    model = response.json()["data"][0]
    assert model["id"] == torchserve_server.model and model["object"] == "model"


def test_batch_of_four_concurrent_requests_all_answered(torchserve_server: Any) -> None:
    questions = ["Name a fruit.", "Name a country.", "Name a planet.", "Name an animal."]
    solo = [
        post(torchserve_server, "v1/chat/completions", ask(q, max_tokens=20)).json()
        for q in questions
    ]

    def one(i: int) -> dict[str, Any]:
        stream = i % 2 == 0
        response = post(
            torchserve_server,
            "v1/chat/completions",
            ask(questions[i], max_tokens=20, stream=stream),
            stream=stream,
        )
        assert response.status_code == 200
        if not stream:
            return response.json()
        chunks, done = read_stream(response)
        assert done
        text = "".join(
            c["choices"][0]["delta"].get("content") or "" for _, c in chunks if c["choices"]
        )
        return {"choices": [{"message": {"content": text}}], "usage": chunks[-1][1]["usage"]}

    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(one, range(4)))
    for alone, batched in zip(solo, together, strict=True):
        assert (
            batched["choices"][0]["message"]["content"] == alone["choices"][0]["message"]["content"]
        )
        counts = ("prompt_tokens", "completion_tokens")
        assert [batched["usage"][k] for k in counts] == [alone["usage"][k] for k in counts]
    status = torchserve_server.management.describe_model(torchserve_server.model)
    assert status.batch_size == 4


def test_openai_sdk_streamed_and_whole(torchserve_server: Any) -> None:
    client = openai.OpenAI(
        base_url=api_url(torchserve_server, "v1"),
        api_key=torchserve_server.keys.key("inference"),
    )
    messages = [{"role": "user", "content": "Say hello in French."}]
    whole = client.chat.completions.create(
        model=torchserve_server.model, messages=messages, max_tokens=16, temperature=0
    )
    assert whole.choices[0].message.content
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model=torchserve_server.model, messages=messages, max_tokens=16, temperature=0, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == whole.choices[0].message.content
    models = client.models.list()
    assert [m.id for m in models] == [torchserve_server.model]
