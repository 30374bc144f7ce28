"""Client for the inference API: ping, OpenAI-style chat and completions (streamed as text, or as
deltas with token probabilities and tool calls), and token counts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, TypedDict, TypeGuard, cast
from urllib.parse import quote

import requests
from urllib3.exceptions import ReadTimeoutError

from tschat.api.keys import KeyStore
from tschat.api.transport import CONNECT_TIMEOUT_S, Transport, parse_error_body
from tschat.errors import BadRequest, ServerError, ServerTimeout
from tschat.settings import Settings

MODEL_VERSION = "1.0"


class ChatMessage(TypedDict):
    """One message of a conversation."""

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str


class UsagePayload(TypedDict, total=False):
    """Token counts sent with the last chunk or the whole answer."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TimingsPayload(TypedDict, total=False):
    """Server-measured speed sent with the last chunk or the whole answer."""

    ttft_ms: float
    tokens_per_second: float


class ChatChoice(TypedDict, total=False):
    """One choice of a chat.completion."""

    index: int
    message: ChatMessage
    finish_reason: str | None


class ChatCompletion(TypedDict, total=False):
    """A non-streamed chat.completion object."""

    id: str
    object: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsagePayload
    timings: TimingsPayload


@dataclass(frozen=True)
class Usage:
    """Token counts of one answer."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Usage:
        """Parse an OpenAI ``usage`` object.

        >>> Usage.from_json({"prompt_tokens": 5, "completion_tokens": 7})
        Usage(prompt_tokens=5, completion_tokens=7, total_tokens=12)
        """
        prompt = int(data.get("prompt_tokens") or 0)
        completion = int(data.get("completion_tokens") or 0)
        return cls(prompt, completion, int(data.get("total_tokens") or prompt + completion))


@dataclass(frozen=True)
class Timings:
    """Speed of one answer as measured by the server."""

    ttft_ms: float | None
    tokens_per_second: float | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Timings:
        """Parse the handler's ``timings`` object.

        >>> Timings.from_json({"ttft_ms": 12.5, "tokens_per_second": 40})
        Timings(ttft_ms=12.5, tokens_per_second=40.0)
        """
        ttft, speed = data.get("ttft_ms"), data.get("tokens_per_second")
        return cls(None if ttft is None else float(ttft), None if speed is None else float(speed))


@dataclass(frozen=True)
class TokenCount:
    """What the tokenize route says: how many tokens, out of the model's context window."""

    count: int
    n_ctx: int


@dataclass(frozen=True)
class StreamDelta:
    """What one chunk of a streamed chat answer adds.

    ``logprobs`` holds the chunk's ``choices[0].logprobs.content`` entries (one per token, when
    the request asked for them); ``tool_calls`` the tool calls the chunk completes or extends.
    """

    text: str = ""
    logprobs: tuple[dict[str, Any], ...] = ()
    tool_calls: tuple[dict[str, Any], ...] = ()

    @property
    def empty(self) -> bool:
        """Whether the chunk adds nothing (e.g. the last one, with the figures)."""
        return not (self.text or self.logprobs or self.tool_calls)


@dataclass(frozen=True)
class ToolCall:
    """A function the model asked to call, with its arguments as JSON text."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class SseEvent:
    """One parsed ``data:`` payload: a JSON chunk, or the end marker."""

    data: dict[str, Any] | None
    done: bool = False


def parse_sse_line(line: str) -> SseEvent | None:
    """Parse one line of a server-sent event stream; None for lines that carry no data.

    >>> parse_sse_line('data: {"choices": [{"delta": {"content": "Hi"}}]}').data["choices"]
    [{'delta': {'content': 'Hi'}}]
    >>> parse_sse_line("data: [DONE]")
    SseEvent(data=None, done=True)
    >>> parse_sse_line("") is None, parse_sse_line(": keep-alive") is None
    (True, True)
    """
    if not line.startswith("data:"):
        return None
    payload = line[5:].strip()
    if payload == "[DONE]":
        return SseEvent(None, done=True)
    if not payload:
        return None
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError):
        raise ServerError(
            f"The stream held a line that is not JSON ({len(payload):,} characters), which "
            "TorchServe never sends: the address probably points at another server."
        ) from None
    if not isinstance(data, dict):
        raise ServerError(
            "The stream held a chunk that is not a JSON object, which TorchServe never sends: "
            "the address probably points at another server."
        )
    return SseEvent(data)


def chunk_text(chunk: Mapping[str, Any]) -> str:
    """The text a chat or completion chunk adds.

    >>> chunk_text({"choices": [{"delta": {"content": "é"}}]})
    'é'
    >>> chunk_text({"choices": [{"text": "x"}]}), chunk_text({"choices": []})
    ('x', '')
    """
    choices = chunk.get("choices") or []
    if not choices:
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return str(delta.get("content") or "")
    return str(choice.get("text") or "")


def chunk_delta(chunk: Mapping[str, Any]) -> StreamDelta:
    """What a chat chunk adds: text, token log-probabilities, tool calls.

    >>> chunk_delta({"choices": [{"delta": {"content": "Hi"},
    ...                           "logprobs": {"content": [{"token": "Hi", "logprob": -0.1}]}}]})
    StreamDelta(text='Hi', logprobs=({'token': 'Hi', 'logprob': -0.1},), tool_calls=())
    >>> chunk_delta({"choices": [], "usage": {}}).empty
    True
    """
    text = chunk_text(chunk)
    choices = chunk.get("choices") or []
    if not choices or not isinstance(choices[0], Mapping):
        return StreamDelta(text)
    choice = choices[0]
    logprobs = choice.get("logprobs")
    entries = logprobs.get("content") if isinstance(logprobs, Mapping) else None
    delta = choice.get("delta")
    calls = delta.get("tool_calls") if isinstance(delta, Mapping) else None
    return StreamDelta(
        text,
        tuple(e for e in entries if isinstance(e, dict)) if isinstance(entries, list) else (),
        tuple(c for c in calls if isinstance(c, dict)) if isinstance(calls, list) else (),
    )


def merge_tool_calls(calls: list[ToolCall], pieces: Iterable[Mapping[str, Any]]) -> None:
    """Add streamed ``tool_calls`` pieces to ``calls``: a piece with a new ``index`` starts a
    call, one with a known index extends its arguments (OpenAI's streaming rule).

    >>> calls: list[ToolCall] = []
    >>> merge_tool_calls(calls, [{"index": 0, "id": "c1", "function": {"name": "f",
    ...                                                                 "arguments": '{"a"'}}])
    >>> merge_tool_calls(calls, [{"index": 0, "function": {"arguments": ': 1}'}}])
    >>> calls
    [ToolCall(id='c1', name='f', arguments='{"a": 1}')]
    """
    for piece in pieces:
        function = piece.get("function")
        function = function if isinstance(function, Mapping) else {}
        index = piece.get("index", len(calls))
        name, arguments = function.get("name"), function.get("arguments")
        if isinstance(index, int) and 0 <= index < len(calls):
            call = calls[index]
            calls[index] = ToolCall(
                call.id,
                call.name + (name if isinstance(name, str) else ""),
                call.arguments + (arguments if isinstance(arguments, str) else ""),
            )
        else:
            calls.append(
                ToolCall(
                    str(piece.get("id") or f"call_{len(calls)}"),
                    name if isinstance(name, str) else "",
                    arguments if isinstance(arguments, str) else "",
                )
            )


def split_lines(chunks: Iterable[str]) -> Iterator[str]:
    r"""Split streamed text at "\n" only (str.splitlines would also split at U+2028 and U+0085).

    >>> list(split_lines(["data: a\u2028b\n", "\ndata: c", "d\r\n", "tail"]))
    ['data: a\u2028b', '', 'data: cd', 'tail']
    """
    pending = ""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split("\n")
        for line in lines:
            yield line.removesuffix("\r")
    if pending:
        yield pending


class ChatStream:
    """The text deltas of a streamed answer; iterate once, then read the final figures.

    Iterating gives the text pieces; :meth:`deltas` gives whole :class:`StreamDelta` values
    instead (text, token log-probabilities, tool calls). After iteration: ``finish_reason``,
    ``usage`` and ``timings`` (as the server sent them), ``client_ttft_ms`` (time to the first
    text, measured here), ``text`` (all of it) and ``tool_calls``.
    ``close()`` cancels: it closes the connection so the server can stop generating.
    """

    def __init__(
        self, response: requests.Response, url: str, started: float, read_timeout: float
    ) -> None:
        self._response = response
        self._url = url
        self._started = started
        self._read_timeout = read_timeout
        self._consumed = False
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.timings: Timings | None = None
        self.client_ttft_ms: float | None = None
        self.text = ""
        self.tool_calls: list[ToolCall] = []

    def __iter__(self) -> Iterator[str]:
        for delta in self.deltas():
            if delta.text:
                yield delta.text

    def deltas(self) -> Iterator[StreamDelta]:
        """Each chunk's additions, as they arrive (chunks that add nothing are skipped)."""
        if self._consumed:
            return
        self._consumed = True
        # With the encoding set, requests decodes incrementally: a character split across two
        # network chunks arrives whole.
        self._response.encoding = "utf-8"
        done = False
        try:
            chunks = self._response.iter_content(chunk_size=None, decode_unicode=True)
            for line in split_lines(chunks):
                event = parse_sse_line(line)
                if event is None:
                    self._check_plain_error(line)
                    continue
                if event.done:
                    done = True
                    break
                assert event.data is not None
                delta = self._absorb(event.data)
                if not delta.empty:
                    if self.client_ttft_ms is None:
                        self.client_ttft_ms = (time.perf_counter() - self._started) * 1000
                    self.text += delta.text
                    merge_tool_calls(self.tool_calls, delta.tool_calls)
                    yield delta
        except requests.ConnectionError as error:
            if error.args and isinstance(error.args[0], ReadTimeoutError):
                raise ServerTimeout(self._url, self._read_timeout) from None
            raise self._cut_off() from error
        except (
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ) as error:
            raise self._cut_off() from error
        finally:
            self.close()
        if not done and self.finish_reason is None:
            raise self._cut_off()

    def _absorb(self, chunk: dict[str, Any]) -> StreamDelta:
        if isinstance(chunk.get("error"), dict):
            info = parse_error_body(json.dumps(chunk))
            if info.type == "invalid_request_error":
                raise BadRequest(info.message, param=info.param, code=info.code)
            raise ServerError(f"The model failed while answering: {info.message}")
        choices = chunk.get("choices") or []
        if choices and choices[0].get("finish_reason"):
            self.finish_reason = str(choices[0]["finish_reason"])
        if isinstance(chunk.get("usage"), dict):
            self.usage = Usage.from_json(chunk["usage"])
        if isinstance(chunk.get("timings"), dict):
            self.timings = Timings.from_json(chunk["timings"])
        return chunk_delta(chunk)

    def _check_plain_error(self, line: str) -> None:
        # TorchServe reports a failure during a stream as its own JSON error, not as SSE.
        stripped = line.strip()
        if stripped.startswith("{"):
            info = parse_error_body(stripped)
            raise ServerError(f"TorchServe stopped the answer: {info.message}")

    def _cut_off(self) -> ServerError:
        return ServerError(
            "The answer broke off before it was complete (the connection closed or the worker "
            "stopped). Check model_log.log in the server console, then retry."
        )

    def close(self) -> None:
        """Stop reading and close the connection (cancels generation on the server)."""
        self._response.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class InferenceClient:
    """Talks to the inference API (default port 8080) with the inference key."""

    def __init__(
        self,
        base_url: str,
        key: KeyStore | str | None = None,
        timeout: float = 330.0,
        *,
        session: requests.Session | None = None,
        connect_timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        if isinstance(key, KeyStore):
            self.keys: KeyStore | None = key
        elif key is not None:
            self.keys = KeyStore.explicit(inference=key)
        else:
            self.keys = None
        self.transport = Transport(
            base_url,
            timeout=timeout,
            keys=self.keys,
            kind="inference",
            connect_timeout=connect_timeout,
            session=session,
        )
        self.base_url = self.transport.base_url
        self.timeout = timeout
        self.session = self.transport.session

    @classmethod
    def from_settings(cls, settings: Settings, keys: KeyStore | None = None) -> InferenceClient:
        """A client for the local server described by ``settings``."""
        return cls(settings.inference_url, keys or KeyStore(settings), settings.request_timeout_s)

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        stream: bool = False,
        model: str | None = None,
    ) -> requests.Response:
        accept = "text/event-stream" if stream else "application/json"
        return self.transport.request(
            method, path, body=body, headers={"Accept": accept}, stream=stream, model=model
        )

    def _path(self, model: str, endpoint: str) -> str:
        return f"/predictions/{quote(model, safe='')}/{MODEL_VERSION}/v1/{endpoint}"

    def ping(self) -> str:
        """TorchServe's health: "Healthy", or "Unhealthy" when a model lacks workers."""
        try:
            response = self._request("GET", "/ping")
        except ServerError as error:
            if error.status == 500:
                return "Unhealthy"
            raise
        status = _json_object(response).get("status")
        if status not in ("Healthy", "Partial Healthy", "Unhealthy"):
            raise ServerError(
                f"The server at {self.base_url} answered /ping without TorchServe's health "
                "status: the address probably points at another server."
            )
        return str(status)

    def chat(self, model: str, messages: Sequence[ChatMessage], **params: Any) -> ChatCompletion:
        """One whole chat.completion (``stream`` false)."""
        body = _body(params, messages=list(messages), stream=False)
        response = self._request(
            "POST", self._path(model, "chat/completions"), body=body, model=model
        )
        return cast(ChatCompletion, _json_object(response))

    def chat_stream(
        self, model: str, messages: Sequence[ChatMessage], *, path: str | None = None, **params: Any
    ) -> ChatStream:
        """Stream a chat answer: iterate the returned ChatStream for text deltas.

        ``path`` is another server's chat-completions path on this base URL (llama-server's
        ``/v1/chat/completions``), instead of ``model``'s on TorchServe.
        """
        body = _body(params, messages=list(messages), stream=True)
        path = path or self._path(model, "chat/completions")
        started = time.perf_counter()
        response = self._request("POST", path, body=body, stream=True, model=model)
        return ChatStream(response, self.base_url + path, started, self.timeout)

    def completions(self, model: str, prompt: str, **params: Any) -> dict[str, Any]:
        """One whole text completion for a raw prompt."""
        body = _body(params, prompt=prompt, stream=False)
        return _json_object(
            self._request("POST", self._path(model, "completions"), body=body, model=model)
        )

    def models(self, model: str) -> dict[str, Any]:
        """The handler's OpenAI ``/v1/models`` list."""
        return _json_object(self._request("GET", self._path(model, "models"), model=model))

    def tokenize(
        self,
        model: str,
        *,
        messages: Sequence[ChatMessage] | None = None,
        content: str | None = None,
    ) -> TokenCount:
        """Count the tokens of a chat (its template applied, as a request would send it) or of
        one text, and read the model's context window."""
        if (messages is None) == (content is None):
            raise ValueError("tokenize takes either messages or content")
        body: dict[str, Any] = (
            {"messages": list(messages)} if messages is not None else {"content": content}
        )
        data = _json_object(
            self._request("POST", self._path(model, "tokenize"), body=body, model=model)
        )
        count, n_ctx = data.get("count"), data.get("n_ctx")
        if not (_whole(count) and _whole(n_ctx) and n_ctx):
            raise ServerError(
                "The tokenize route answered without a token count and context window: the "
                "server is not this project's handler, or an older one."
            )
        return TokenCount(count, n_ctx)


def _body(params: Mapping[str, Any], **fixed: Any) -> dict[str, Any]:
    body = {key: value for key, value in params.items() if value is not None}
    body.update(fixed)
    return body


def _whole(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _json_object(response: requests.Response) -> dict[str, Any]:
    """The JSON object of an answer. Anything else is not TorchServe's: the error says so
    without repeating it (it may come from any server the address points at)."""
    response.encoding = "utf-8"
    try:
        data = response.json()
    except (ValueError, RecursionError):
        kind = response.headers.get("Content-Type", "").split(";")[0].strip() or "no type"
        raise ServerError(
            f"The server at {response.url.split('?')[0]} answered with something that is not "
            f"JSON ({kind}, {len(response.content):,} bytes), which TorchServe never does: "
            "the address probably points at another server."
        ) from None
    if not isinstance(data, dict):
        raise ServerError(
            f"The server at {response.url.split('?')[0]} answered with JSON that is not an "
            "object, which TorchServe never does: the address probably points at another server."
        )
    return data
