"""The handler against the real default model, driven like TorchServe's worker drives it."""

from __future__ import annotations

import json

from worker_harness import Harness, Message

CHAT = "v1/chat/completions"


def chat(content: str, **params: object) -> dict[str, object]:
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, **params}


def sse_events(body: bytes) -> list[dict | str]:
    events: list[dict | str] = []
    for block in body.decode("utf-8").split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def stream_of(request_id: str, messages: list[Message], final: Message) -> tuple[bytes, list[str]]:
    """All bytes sent for one request and the ts_stream_next header of each piece."""
    body = b""
    flags = []
    for message in [*messages, final]:
        for p in message.predictions:
            if p.request_id == request_id:
                body += p.body
                flags.append(p.headers.get("ts_stream_next", "absent"))
    return body, flags


def streamed_text(body: bytes) -> tuple[str, dict]:
    """The streamed text and the last chunk with a choice, with the usage chunk's figures."""
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert isinstance(usage, dict) and usage["choices"] == [] and "usage" in usage
    last = events[-3]
    assert isinstance(last, dict) and last["choices"][0]["finish_reason"] is not None
    text = "".join(
        e["choices"][0]["delta"].get("content") or ""
        for e in events[:-1]
        if isinstance(e, dict) and e["choices"]
    )
    return text, {**last, "usage": usage["usage"], "timings": usage["timings"]}


def test_every_request_of_a_batch_gets_its_own_answer(harness: Harness) -> None:
    requests = [
        (CHAT, chat("What is the capital of France?", stream=True, max_tokens=5)),
        (CHAT, chat("Name three colours.", stream=True, max_tokens=30)),
        (CHAT, chat("What is 2+2?", max_tokens=12)),
        ("v1/completions", {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}),
    ]
    messages, final = harness.run(requests)
    closed_early = {
        p.request_id
        for m in messages
        for p in m.predictions
        if p.headers["ts_stream_next"] == "false"
    }
    assert len(closed_early) == 1, "the short stream is completed while the long one goes on"
    (short_id,) = closed_early
    assert short_id not in {p.request_id for p in final.predictions}
    body, flags = stream_of(short_id, messages, final)
    text, last = streamed_text(body)
    assert flags[-1] == "false" and set(flags[:-1]) == {"true"}
    assert last["choices"][0]["finish_reason"] == "length"
    assert last["usage"]["completion_tokens"] == 5
    assert text

    long_id = next(p.request_id for p in messages[0].predictions if p.request_id != short_id)
    body, flags = stream_of(long_id, messages, final)
    text, last = streamed_text(body)
    assert flags[-1] == "false" and len(flags) > 10
    assert last["usage"]["completion_tokens"] == 30 and len(text) > 20

    whole = {p.request_id: p for p in final.predictions if p.request_id != long_id}
    assert len(whole) == 2
    for p in whole.values():
        assert p.status == 200
        data = json.loads(p.body)
        assert data["usage"]["completion_tokens"] > 0
        content = data["choices"][0].get("message", {}).get("content") or data["choices"][0].get(
            "text"
        )
        assert content


def test_stream_matches_whole_answer(harness: Harness) -> None:
    question = "Write one sentence about the sea."
    messages, final = harness.run([(CHAT, chat(question, stream=True, max_tokens=24, seed=1))])
    body = b"".join(p.body for m in [*messages, final] for p in m.predictions)
    text, last = streamed_text(body)
    _, final2 = harness.run([(CHAT, chat(question, max_tokens=24, seed=1))])
    whole = json.loads(final2.predictions[0].body)
    assert whole["choices"][0]["message"]["content"] == text
    counts = ("prompt_tokens", "completion_tokens", "total_tokens")
    assert [whole["usage"][k] for k in counts] == [last["usage"][k] for k in counts]
    # The second request found the first one's prompt in the cache.
    cached = whole["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached == whole["usage"]["prompt_tokens"] - 1
    assert whole["object"] == "chat.completion"
    assert last["timings"]["ttft_ms"] > 0


def test_bad_request_in_a_batch_hurts_no_one(harness: Harness) -> None:
    requests = [
        (CHAT, b"{not json"),
        (CHAT, chat("Say hello.", max_tokens=6)),
        ("v1/nowhere", {}),
        (CHAT, {"messages": []}),
    ]
    _, final = harness.run(requests)
    statuses = [p.status for p in final.predictions]
    assert statuses == [400, 200, 404, 400]
    errors = [json.loads(p.body)["error"]["message"] for p in final.predictions if p.status != 200]
    assert "not valid JSON" in errors[0]
    assert "Unknown endpoint" in errors[1]
    assert "must not be empty" in errors[2]


def test_legacy_body_answers_with_text(harness: Harness) -> None:
    prompt = "Question: What is the closest star to Earth ? Answer:"
    _, final = harness.run(
        [(None, {"prompt": prompt, "max_tokens": 16, "temperature": 0, "top_p": 0.9})]
    )
    p = final.predictions[0]
    assert p.status == 200 and p.content_type.startswith("text/plain")
    text = p.body.decode()
    assert text.startswith(prompt) and len(text) > len(prompt)


def test_models_endpoint(harness: Harness) -> None:
    _, final = harness.run([("v1/models", b"")])
    data = json.loads(final.predictions[0].body)
    assert data["data"][0]["id"] == "smollm2"
    assert data["data"][0]["meta"]["backend"] == "cpu"


def test_prompt_longer_than_context_is_refused(harness: Harness) -> None:
    _, final = harness.run([(CHAT, chat("word " * 3000, max_tokens=4))])
    p = final.predictions[0]
    assert p.status == 400
    error = json.loads(p.body)["error"]
    assert error["code"] == "context_length_exceeded" and "context window" in error["message"]


def test_stop_sequence_ends_cleanly(harness: Harness) -> None:
    _, final = harness.run(
        [
            (
                "v1/completions",
                {"prompt": "1, 2, 3, 4,", "max_tokens": 30, "temperature": 0, "stop": [" 7"]},
            )
        ]
    )
    data = json.loads(final.predictions[0].body)
    assert data["choices"][0]["finish_reason"] == "stop"
    assert " 7" not in data["choices"][0]["text"]
    assert "6" in data["choices"][0]["text"]
