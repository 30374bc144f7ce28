"""The load generator against any OpenAI-style target, driven by scenarios (a local fake server)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from tschat.api.keys import KeyStore
from tschat.bench.loadgen import LoadSpec, Target, run_target, ttft_by_turn
from tschat.bench.scenarios import DISTINCT, MULTI_TURN, SHARED_PREFIX

if TYPE_CHECKING:
    from conftest import LocalServer


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers every chat request with one SSE body: "answer N" for the Nth user message.

    ``fail_turn``: the request whose conversation has that many user messages gets a 500.
    """

    protocol_version = "HTTP/1.1"
    lock = threading.Lock()
    seen: ClassVar[list[tuple[str, str | None, dict[str, Any]]]] = []
    fail_turn: ClassVar[int | None] = None

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.seen.append((self.path, self.headers.get("Authorization"), body))
        turn = sum(m["role"] == "user" for m in body["messages"])
        if turn == self.fail_turn:
            self._send(500, "application/json", b'{"error": {"message": "boom"}}')
            return
        events = [
            {"choices": [{"delta": {"content": f"answer {turn}"}, "finish_reason": None}]},
            {"choices": [{"delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 10 * turn, "completion_tokens": 2}},
        ]
        data = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        self._send(200, "text/event-stream", data.encode())

    def _send(self, status: int, kind: str, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def fake(http_server: Callable[[type[BaseHTTPRequestHandler]], LocalServer]) -> LocalServer:
    FakeOpenAI.seen = []
    FakeOpenAI.fail_turn = None
    return http_server(FakeOpenAI)


def test_openai_target_path_key_and_sampling(fake: LocalServer) -> None:
    spec = LoadSpec(
        clients=2, requests=4, max_tokens=64, scenario=DISTINCT, repeat_penalty=1.0, ignore_eos=True
    )
    result = run_target(Target.openai(fake.url, "peer-key"), spec)
    s = result.summary
    assert (s.requests, s.failures, s.tokens) == (4, 0, 8)  # tokens from usage, not pieces
    paths, keys, bodies = zip(*FakeOpenAI.seen, strict=True)
    assert set(paths) == {"/v1/chat/completions"} and set(keys) == {"Bearer peer-key"}
    for body in bodies:
        assert body["stream"] is True and body["temperature"] == 0.0
        assert body["repeat_penalty"] == 1.0 and body["stream_options"] == {"include_usage": True}
        assert 8 <= body["max_tokens"] <= 64 and body["ignore_eos"] is True
    # Distinct prompts: every request asks something else, as the scenario drew them.
    expected = [c.turns[0].user for c in spec.conversations()]
    assert sorted(b["messages"][0]["content"] for b in bodies) == sorted(expected)
    assert all(r.prompt_tokens == 10 for r in result.records)


def test_torchserve_target_and_no_key(fake: LocalServer) -> None:
    keys = KeyStore.explicit(inference="ts-key")
    run_target(Target.torchserve(fake.url, keys, "m"), LoadSpec(clients=1, requests=1))
    run_target(Target.openai(fake.url, None), LoadSpec(clients=1, requests=1))
    (path, key, body), (peer_path, peer_key, _) = FakeOpenAI.seen
    assert (path, key) == ("/predictions/m/1.0/v1/chat/completions", "Bearer ts-key")
    assert (peer_path, peer_key) == ("/v1/chat/completions", None)
    # Left to the server unless the spec says.
    assert "repeat_penalty" not in body and "ignore_eos" not in body


def test_multi_turn_resends_the_history_with_the_answers(fake: LocalServer) -> None:
    spec = LoadSpec(clients=2, requests=6, scenario=MULTI_TURN, turns=3)
    result = run_target(Target.openai(fake.url, "k"), spec)
    assert result.summary.requests == 6 and result.summary.failures == 0
    chats = spec.conversations()
    for body in (b for _, _, b in FakeOpenAI.seen):
        roles = [m["role"] for m in body["messages"]]
        turn = roles.count("user")
        assert roles == ["user", "assistant"] * (turn - 1) + ["user"]
        # Each earlier answer is the server's own answer to that turn.
        answers = [m["content"] for m in body["messages"] if m["role"] == "assistant"]
        assert answers == [f"answer {n}" for n in range(1, turn)]
        users = [m["content"] for m in body["messages"] if m["role"] == "user"]
        assert any(users == [t.user for t in chat.turns[:turn]] for chat in chats)
    turns = sorted((r.conversation, r.turn) for r in result.records)
    assert turns == [(c, t) for c in (0, 1) for t in (1, 2, 3)]
    assert set(ttft_by_turn(result.records)) == {1, 2, 3}
    # Within a conversation, a turn starts after the previous one ended.
    for c in (0, 1):
        records = sorted((r for r in result.records if r.conversation == c), key=lambda r: r.turn)
        assert all(a.finished <= b.started for a, b in zip(records, records[1:], strict=False))


def test_a_failed_turn_ends_its_conversation(fake: LocalServer) -> None:
    FakeOpenAI.fail_turn = 2
    spec = LoadSpec(clients=1, requests=8, scenario=MULTI_TURN, turns=4)
    s = run_target(Target.openai(fake.url, "k"), spec).summary
    # Two chats: turn 1 answered, turn 2 failed, turns 3 and 4 never sent.
    assert (s.requests, s.failures) == (4, 2)
    assert len(FakeOpenAI.seen) == 4


def test_shared_prefix_is_the_historical_load(fake: LocalServer) -> None:
    spec = LoadSpec(clients=3, requests=5, max_tokens=7, prompt="same", scenario=SHARED_PREFIX)
    run_target(Target.openai(fake.url, "k"), spec)
    assert {(b["messages"][0]["content"], b["max_tokens"]) for _, _, b in FakeOpenAI.seen} == {
        ("same", 7)
    }
    assert len(FakeOpenAI.seen) == 5


def test_spec_refuses_unknown_scenarios_and_remote_targets() -> None:
    with pytest.raises(ValueError, match="unknown scenario"):
        LoadSpec(1, 1, scenario="nope")
    with pytest.raises(ValueError, match="turns"):
        LoadSpec(1, 1, turns=0)
    with pytest.raises(ValueError, match="loopback"):
        run_target(Target.openai("http://192.0.2.1:8080", "k"), LoadSpec(1, 1))
