"""InferenceClient against a local HTTP server that plays TorchServe and the handler."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, urlparse

import pytest

from tschat.api.inference import (
    ChatMessage,
    InferenceClient,
    StreamDelta,
    Timings,
    TokenCount,
    ToolCall,
    Usage,
)
from tschat.api.keys import KeyStore
from tschat.errors import (
    AuthError,
    BadRequest,
    ModelNotFound,
    QueueFull,
    ServerError,
    ServerNotRunning,
    ServerTimeout,
)

if TYPE_CHECKING:
    from conftest import Helpers, LocalServer

CHAT_PATH = "/predictions/m/1.0/v1/chat/completions"
MESSAGES: list[ChatMessage] = [{"role": "user", "content": "hi"}]


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


def delta(text: str) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }


FINAL = {
    "object": "chat.completion.chunk",
    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    "timings": {"ttft_ms": 12.5, "tokens_per_second": 80.0},
}


class FakeTorchServe(BaseHTTPRequestHandler):
    """Routes like TorchServe; the user message picks the behaviour of a chat request."""

    protocol_version = "HTTP/1.1"
    valid_key: ClassVar[str] = "good"
    key_file: ClassVar[Path | None] = None
    bodies: ClassVar[list[dict[str, Any]]] = []
    headers_seen: ClassVar[list[str | None]] = []
    cancelled: ClassVar[threading.Event] = threading.Event()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: dict[str, Any] | bytes) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        type(self).headers_seen.append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") == f"Bearer {self.valid_key}":
            return True
        self._send(
            400,
            {
                "code": 400,
                "type": "InvalidKeyException",
                "message": "Token Authorization failed. Token either incorrect, expired, or not "
                "provided correctly",
            },
        )
        return False

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        if url.path == "/token":  # the management API's key refresh, served here for brevity
            kind = parse_qs(url.query)["type"][0]
            assert self.key_file is not None
            data = json.loads(self.key_file.read_text())
            data[kind]["key"] = self.valid_key
            self.key_file.write_text(json.dumps(data))
            self._send(200, b"\n")
            return
        if not self._authorized():
            return
        if url.path == "/ping":
            self._send(200, {"status": "Healthy"})
        elif url.path == "/html/ping":  # a web server's page where TorchServe was expected
            page = b"<html><body><img src='http://x/leak'>Welcome</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)
        elif url.path == "/other/ping":  # JSON, but not TorchServe's
            self._send(200, {"hello": "world"})
        else:
            self._send(404, {"code": 404, "type": "ResourceNotFoundException", "message": url.path})

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        type(self).bodies.append(body)
        if not self._authorized():
            return
        if not self.path.startswith("/predictions/m/"):
            name = self.path.split("/")[2]
            self._send(
                404,
                {
                    "code": 404,
                    "type": "ModelNotFoundException",
                    "message": f"Model not found: {name}",
                },
            )
            return
        if self.path.endswith("/v1/tokenize"):
            count = len(body["content"]) if "content" in body else 10 * len(body["messages"])
            self._send(200, {"tokens": list(range(count)), "count": count, "n_ctx": 2048})
            return
        if self.path.endswith("/v1/completions"):
            text = {
                "object": "text_completion",
                "choices": [{"text": " Paris", "finish_reason": "length"}],
            }
            self._send(200, text)
            return
        mode = body.get("messages", [{}])[-1].get("content", "")
        getattr(self, f"_mode_{mode}", self._mode_hi)(body)

    def _mode_hi(self, body: dict[str, Any]) -> None:
        if not body.get("stream"):
            message = {"role": "assistant", "content": "Grüße"}
            answer = {"object": "chat.completion", "choices": [{"message": message}]}
            self._send(200, {**answer, "usage": FINAL["usage"], "timings": FINAL["timings"]})
            return
        self._start_stream()
        self._chunk(b": comment lines are ignored\n\n")
        self._chunk(sse(delta("Gr")))
        # One SSE event split inside the two bytes of "ü", and inside "data:".
        event = sse(delta("üße 👋"))
        cut = event.index("ü".encode()) + 1
        self._chunk(event[:3])
        time.sleep(0.02)
        self._chunk(event[3:cut])
        time.sleep(0.02)
        self._chunk(event[cut:])
        self._chunk(sse(FINAL) + sse("[DONE]"))
        self._end_stream()

    def _mode_details(self, body: dict[str, Any]) -> None:
        """Token log-probabilities with the text, then a tool call in two pieces."""
        entry = {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}
        with_logprobs = delta("Hi")
        with_logprobs["choices"][0]["logprobs"] = {"content": [entry], "refusal": None}
        call = {"index": 0, "id": "c1", "type": "function"}
        first = {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {**call, "function": {"name": "get_time", "arguments": '{"city"'}}
                        ]
                    },
                }
            ]
        }
        second = {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ': "Oslo"}'}}]},
                }
            ]
        }
        self._start_stream()
        self._chunk(sse(with_logprobs) + sse(first) + sse(second) + sse(FINAL) + sse("[DONE]"))
        self._end_stream()

    def _mode_separators(self, body: dict[str, Any]) -> None:
        self._start_stream()
        self._chunk(sse(delta("a\u2028b\x85c\x1cd")) + sse(FINAL) + sse("[DONE]"))
        self._end_stream()

    def _mode_bad(self, body: dict[str, Any]) -> None:
        error = {"message": "'max_tokens' must be at least 1.", "type": "invalid_request_error"}
        self._send(400, {"error": {**error, "param": "max_tokens", "code": None}})

    def _mode_wrapped(self, body: dict[str, Any]) -> None:
        inner = json.dumps({"error": {"message": "prompt too long", "param": "messages"}})
        self._send(400, {"code": 400, "type": "InternalServerException", "message": inner})

    def _mode_busy(self, body: dict[str, Any]) -> None:
        message = 'Model "m" has no worker to serve inference request.'
        self._send(503, {"code": 503, "type": "ServiceUnavailableException", "message": message})

    def _mode_boom(self, body: dict[str, Any]) -> None:
        self._send(500, {"code": 500, "type": "InternalServerException", "message": "Worker died."})

    def _mode_cut(self, body: dict[str, Any]) -> None:
        self._start_stream()
        self._chunk(sse(delta("partial")))
        self.wfile.write(b"40\r\ndata: {")  # a chunk that never completes
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    def _mode_incomplete(self, body: dict[str, Any]) -> None:
        self._start_stream()
        self._chunk(sse(delta("partial")))
        self._end_stream()  # a clean end, but no finish_reason and no [DONE]

    def _mode_nodone(self, body: dict[str, Any]) -> None:
        self._start_stream()
        self._chunk(sse(delta("ok")) + sse(FINAL))
        self._end_stream()

    def _mode_stall(self, body: dict[str, Any]) -> None:
        self._start_stream()
        self._chunk(sse(delta("first")))
        time.sleep(2.0)
        self.close_connection = True

    def _mode_errorchunk(self, body: dict[str, Any]) -> None:
        self._start_stream()
        self._chunk(sse(delta("a")))
        self._chunk(
            sse({"error": {"message": "context window full", "type": "invalid_request_error"}})
        )
        self._end_stream()

    def _mode_plainerror(self, body: dict[str, Any]) -> None:
        self._start_stream()
        self._chunk(sse(delta("a")))
        self._chunk(
            b'{"code": 500, "type": "InternalServerException", "message": "Worker died."}\n'
        )
        self._end_stream()

    def _mode_slow(self, body: dict[str, Any]) -> None:
        self._start_stream()
        try:
            for index in range(300):
                self._chunk(sse(delta(f"{index} ")))
                time.sleep(0.01)
            self._chunk(sse(FINAL) + sse("[DONE]"))
            self._end_stream()
        except OSError:
            type(self).cancelled.set()
            self.close_connection = True


@pytest.fixture
def fake(http_server: Callable[..., LocalServer]) -> LocalServer:
    FakeTorchServe.valid_key = "good"
    FakeTorchServe.key_file = None
    FakeTorchServe.bodies = []
    FakeTorchServe.headers_seen = []
    FakeTorchServe.cancelled = threading.Event()
    return http_server(FakeTorchServe)


def say(content: str) -> list[ChatMessage]:
    return [{"role": "user", "content": content}]


def test_ping_sends_the_inference_key(fake: LocalServer) -> None:
    assert InferenceClient(fake.url, "good").ping() == "Healthy"
    assert FakeTorchServe.headers_seen == ["Bearer good"]


def test_whole_chat_answer(fake: LocalServer) -> None:
    answer = InferenceClient(fake.url, "good").chat("m", MESSAGES, max_tokens=5, temperature=None)
    assert answer["choices"][0]["message"]["content"] == "Grüße"
    assert FakeTorchServe.bodies == [{"messages": MESSAGES, "max_tokens": 5, "stream": False}]


def test_stream_yields_text_and_keeps_utf8_whole(fake: LocalServer) -> None:
    stream = InferenceClient(fake.url, "good").chat_stream("m", MESSAGES, seed=1)
    pieces = list(stream)
    assert pieces == ["Gr", "üße 👋"]
    assert stream.text == "Grüße 👋"
    assert stream.finish_reason == "stop"
    assert stream.usage == Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
    assert stream.timings == Timings(ttft_ms=12.5, tokens_per_second=80.0)
    assert stream.client_ttft_ms is not None and stream.client_ttft_ms > 0
    assert FakeTorchServe.bodies[0]["stream"] is True and FakeTorchServe.bodies[0]["seed"] == 1
    assert list(stream) == []  # a stream is read once


def test_unicode_line_separators_inside_text_do_not_split_events(fake: LocalServer) -> None:
    stream = InferenceClient(fake.url, "good").chat_stream("m", say("separators"))
    assert list(stream) == ["a\u2028b\x85c\x1cd"]


def test_stream_without_done_marker_but_with_finish_reason(fake: LocalServer) -> None:
    stream = InferenceClient(fake.url, "good").chat_stream("m", say("nodone"))
    assert list(stream) == ["ok"]
    assert stream.finish_reason == "stop"


def test_stream_deltas_carry_token_probabilities_and_tool_calls(fake: LocalServer) -> None:
    stream = InferenceClient(fake.url, "good").chat_stream("m", say("details"), logprobs=True)
    deltas = list(stream.deltas())
    assert [d.text for d in deltas] == ["Hi", "", ""]
    assert deltas[0].logprobs == (
        {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []},
    )
    assert isinstance(deltas[1], StreamDelta) and deltas[1].tool_calls[0]["id"] == "c1"
    assert stream.tool_calls == [ToolCall("c1", "get_time", '{"city": "Oslo"}')]
    assert stream.finish_reason == "stop"


def test_tokenize_counts_a_chat_or_a_text(fake: LocalServer) -> None:
    client = InferenceClient(fake.url, "good")
    assert client.tokenize("m", content="four") == TokenCount(4, 2048)
    assert client.tokenize("m", messages=MESSAGES) == TokenCount(10, 2048)
    assert FakeTorchServe.bodies == [{"content": "four"}, {"messages": MESSAGES}]
    with pytest.raises(ValueError, match="either messages or content"):
        client.tokenize("m")


@pytest.mark.parametrize("path", ["/html", "/other"])
def test_an_answer_that_is_not_torchserves_is_described_not_repeated(
    fake: LocalServer, path: str
) -> None:
    with pytest.raises(ServerError) as caught:
        InferenceClient(fake.url + path, "good").ping()
    message = caught.value.message
    assert "points at another server" in message
    assert "<" not in message and "leak" not in message and "world" not in message


def test_completions(fake: LocalServer) -> None:
    answer = InferenceClient(fake.url, "good").completions("m", "The capital is", max_tokens=1)
    assert answer["choices"][0]["text"] == " Paris"
    assert FakeTorchServe.bodies == [{"prompt": "The capital is", "max_tokens": 1, "stream": False}]


@pytest.mark.parametrize(
    ("content", "error", "words"),
    [
        ("bad", BadRequest, "'max_tokens' must be at least 1."),
        ("wrapped", BadRequest, "prompt too long"),
        ("busy", QueueFull, "busy"),
        ("boom", ServerError, "Worker died."),
    ],
)
def test_error_answers_become_package_errors(
    fake: LocalServer, content: str, error: type[Exception], words: str
) -> None:
    client = InferenceClient(fake.url, "good")
    with pytest.raises(error) as caught:
        client.chat("m", say(content))
    assert words in str(caught.value)
    with pytest.raises(error):
        client.chat_stream("m", say(content))


def test_bad_request_carries_the_handlers_details(fake: LocalServer) -> None:
    with pytest.raises(BadRequest) as caught:
        InferenceClient(fake.url, "good").chat("m", say("bad"))
    assert caught.value.status == 400
    assert caught.value.param == "max_tokens"


def test_unknown_model(fake: LocalServer) -> None:
    with pytest.raises(ModelNotFound) as caught:
        InferenceClient(fake.url, "good").chat("nope", MESSAGES)
    assert caught.value.model == "nope"


def test_wrong_fixed_key_is_an_auth_error(fake: LocalServer) -> None:
    with pytest.raises(AuthError, match="400"):
        InferenceClient(fake.url, "wrong").ping()


def test_refused_key_is_refreshed_once_and_retried(fake: LocalServer, tmp_path: Path) -> None:
    key_file = tmp_path / "key_file.json"
    keys = {"inference": {"key": "old"}, "management": {"key": "m"}, "API": {"key": "api"}}
    key_file.write_text(json.dumps(keys))
    FakeTorchServe.key_file = key_file
    FakeTorchServe.valid_key = "new"
    client = InferenceClient(fake.url, KeyStore(key_file, management_url=fake.url))
    assert client.ping() == "Healthy"
    assert FakeTorchServe.headers_seen == ["Bearer old", "Bearer new"]


def test_stream_cut_off_is_a_server_error(fake: LocalServer) -> None:
    stream = InferenceClient(fake.url, "good").chat_stream("m", say("cut"))
    received = []
    with pytest.raises(ServerError, match="broke off"):
        for piece in stream:
            received.append(piece)
    assert received == ["partial"]


def test_stream_ending_without_finish_is_a_server_error(fake: LocalServer) -> None:
    with pytest.raises(ServerError, match="broke off"):
        list(InferenceClient(fake.url, "good").chat_stream("m", say("incomplete")))


def test_stalled_stream_times_out_instead_of_hanging(fake: LocalServer) -> None:
    stream = InferenceClient(fake.url, "good", timeout=0.3).chat_stream("m", say("stall"))
    started = time.monotonic()
    with pytest.raises(ServerTimeout):
        list(stream)
    assert time.monotonic() - started < 1.5


def test_error_inside_a_stream(fake: LocalServer) -> None:
    client = InferenceClient(fake.url, "good")
    with pytest.raises(BadRequest, match="context window full"):
        list(client.chat_stream("m", say("errorchunk")))
    with pytest.raises(ServerError, match="Worker died."):
        list(client.chat_stream("m", say("plainerror")))


def test_close_cancels_the_stream(fake: LocalServer) -> None:
    stream = InferenceClient(fake.url, "good").chat_stream("m", say("slow"))
    pieces = iter(stream)
    assert next(pieces) == "0 "
    stream.close()
    assert FakeTorchServe.cancelled.wait(5), "the server kept writing to a closed stream"


def test_stream_as_context_manager_closes(fake: LocalServer) -> None:
    with InferenceClient(fake.url, "good").chat_stream("m", say("slow")) as stream:
        assert next(iter(stream)) == "0 "
    assert FakeTorchServe.cancelled.wait(5)


def test_no_server(helpers: Helpers) -> None:
    client = InferenceClient(f"http://127.0.0.1:{helpers.free_port()}", "k")
    with pytest.raises(ServerNotRunning, match="make run"):
        client.ping()
    with pytest.raises(ServerNotRunning):
        client.chat_stream("m", MESSAGES)
