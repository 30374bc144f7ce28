"""The OpenAI wire format: validate requests, build responses and Server-Sent Events.

Pure Python (stdlib only), so it is tested without a model. Every problem with a request raises
``RequestError`` carrying an HTTP status and an OpenAI-style error body naming the problem.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import uuid
from collections.abc import Mapping
from typing import Any

CHAT = "chat"
COMPLETION = "completion"
LEGACY = "legacy"
MODELS = "models"

# url_path (the part after /predictions/{model}/{version}/) -> endpoint
ROUTES = {
    "v1/chat/completions": CHAT,
    "v1/completions": COMPLETION,
    "v1/models": MODELS,
    "": LEGACY,
}

ROLES = ("system", "user", "assistant", "developer", "tool")
MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256


class RequestError(Exception):
    """A request the handler refuses; status is the HTTP code (4xx)."""

    def __init__(
        self, message: str, param: str | None = None, status: int = 400, code: str | None = None
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code

    def body(self) -> dict[str, Any]:
        err_type = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {
                "message": self.message,
                "type": err_type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclasses.dataclass(frozen=True)
class Sampling:
    """Sampling settings as the client sent them; None means the server default."""

    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int | None
    stop: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ParsedRequest:
    """One validated request."""

    endpoint: str
    stream: bool
    sampling: Sampling
    messages: tuple[dict[str, str], ...] = ()
    prompt: str = ""
    include_usage: bool = True


DEFAULTS = {
    "temperature": 0.8,
    "top_p": 0.95,
    "top_k": 40,
    "min_p": 0.05,
    "repeat_penalty": 1.1,
}


def route(url_path: str | None, method: str | None = None) -> str:
    """Map the url_path request header to an endpoint.

    >>> route("v1/chat/completions")
    'chat'
    >>> route("/v1/models/")
    'models'
    >>> route(None)
    'legacy'
    """
    path = (url_path or "").strip("/")
    if path not in ROUTES:
        raise RequestError(
            f"Unknown endpoint '/{path}'. Use v1/chat/completions, v1/completions or v1/models.",
            status=404,
            code="unknown_url",
        )
    return ROUTES[path]


def decode_body(body: Any) -> dict[str, Any]:
    """The request body as a JSON object, whatever form TorchServe delivered it in."""
    if body is None or body == b"" or body == "":
        raise RequestError("The request body is empty; send a JSON object.")
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(f"The request body is not valid UTF-8 (byte {exc.start}).") from None
    if isinstance(body, str):
        try:
            body = json.loads(body, parse_constant=_reject_constant)
        except RequestError:
            raise
        except (ValueError, RecursionError) as exc:
            raise RequestError(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    return body


def _reject_constant(name: str) -> float:
    raise RequestError(f"The request body contains {name}, which JSON does not allow.")


def parse(endpoint: str, body: Mapping[str, Any]) -> ParsedRequest:
    """Validate a request body for an endpoint."""
    if endpoint == CHAT:
        messages = _messages(body.get("messages"))
        prompt = ""
    else:
        messages = ()
        prompt = _string(body, "prompt", required=True, allow_empty=False)
    stream = _bool(body, "stream", False)
    if endpoint == LEGACY:
        stream = False
    include_usage = True
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise RequestError("'stream_options' must be an object.", "stream_options")
        include_usage = _bool(options, "include_usage", True)
    n = body.get("n", 1)
    if n != 1 or isinstance(n, bool):
        raise RequestError("Only n=1 is supported.", "n")
    max_tokens = body.get(
        "max_completion_tokens", body.get("max_tokens", body.get("max_new_tokens"))
    )
    sampling = Sampling(
        max_tokens=_int_value(max_tokens, "max_tokens", 1, 1_000_000, optional=True),
        temperature=_number(body, "temperature", 0.0, 2.0),
        top_p=_number(body, "top_p", 0.0, 1.0),
        top_k=int(_number(body, "top_k", 0, 1_000_000, integer=True)),
        min_p=_number(body, "min_p", 0.0, 1.0),
        repeat_penalty=_number(body, "repeat_penalty", 0.01, 10.0),
        seed=_int_value(body.get("seed"), "seed", -(2**63), 2**64 - 1, optional=True),
        stop=_stop(body.get("stop")),
    )
    return ParsedRequest(endpoint, stream, sampling, messages, prompt, include_usage)


def _messages(value: Any) -> tuple[dict[str, str], ...]:
    if value is None:
        raise RequestError("'messages' is required.", "messages")
    if not isinstance(value, list):
        raise RequestError("'messages' must be a list of {role, content} objects.", "messages")
    if not value:
        raise RequestError("'messages' must not be empty.", "messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object with 'role' and 'content'.", where)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise RequestError(
                f"{where}.role must be one of {', '.join(ROLES)}; got {role!r}.", f"{where}.role"
            )
        content = message.get("content")
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            parts = []
            for part in content:
                if (
                    not isinstance(part, dict)
                    or part.get("type") != "text"
                    or not isinstance(part.get("text"), str)
                ):
                    raise RequestError(
                        f"{where}.content parts must be {{type: 'text', text: ...}}.",
                        f"{where}.content",
                    )
                parts.append(part["text"])
            content = "".join(parts)
        if not isinstance(content, str):
            raise RequestError(f"{where}.content must be a string.", f"{where}.content")
        _check_text(content, f"{where}.content")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    if all(not m["content"].strip() for m in out):
        raise RequestError("Every message is empty; send some text.", "messages")
    return tuple(out)


def _check_text(text: str, param: str) -> None:
    if "\x00" in text:
        raise RequestError(f"{param} contains a NUL character.", param)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(
            f"{param} contains an unpaired surrogate (invalid Unicode).", param
        ) from None


def _string(body: Mapping[str, Any], key: str, required: bool, allow_empty: bool) -> str:
    value = body.get(key)
    if value is None:
        if required:
            raise RequestError(f"'{key}' is required.", key)
        return ""
    if not isinstance(value, str):
        raise RequestError(f"'{key}' must be a string.", key)
    if not allow_empty and not value.strip():
        raise RequestError(f"'{key}' must not be empty.", key)
    _check_text(value, key)
    return value


def _bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise RequestError(f"'{key}' must be true or false.", key)
    return value


def _number(
    body: Mapping[str, Any], key: str, low: float, high: float, integer: bool = False
) -> float:
    value = body.get(key)
    if value is None:
        return DEFAULTS[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{key}' must be a number.", key)
    if not math.isfinite(value):
        raise RequestError(f"'{key}' must be a finite number.", key)
    if integer and value != int(value):
        raise RequestError(f"'{key}' must be a whole number.", key)
    if not low <= value <= high:
        raise RequestError(f"'{key}' must be between {low} and {high}; got {value}.", key)
    return float(value)


def _int_value(value: Any, key: str, low: int, high: int, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{key}' must be a whole number.", key)
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        raise RequestError(f"'{key}' must be a whole number.", key)
    if not low <= value <= high:
        raise RequestError(f"'{key}' must be between {low} and {high}; got {value}.", key)
    return int(value)


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise RequestError("'stop' must be a string or a list of strings.", "stop")
    if len(value) > MAX_STOP_SEQUENCES:
        raise RequestError(f"'stop' may hold at most {MAX_STOP_SEQUENCES} sequences.", "stop")
    for s in value:
        if len(s) > MAX_STOP_LENGTH:
            raise RequestError(
                f"Each stop sequence must be at most {MAX_STOP_LENGTH} characters.", "stop"
            )
        _check_text(s, "stop")
    return tuple(s for s in value if s)


# -- responses ---------------------------------------------------------------------------------


def new_id(endpoint: str) -> str:
    prefix = "chatcmpl" if endpoint == CHAT else "cmpl"
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object; ``cached_tokens``: prompt tokens taken from the cache."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def sse(payload: Mapping[str, Any] | str) -> bytes:
    """One Server-Sent Event line.

    >>> sse("[DONE]")
    b'data: [DONE]\\n\\n'
    """
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def chunk(
    endpoint: str,
    response_id: str,
    created: int,
    model: str,
    text: str | None,
    finish_reason: str | None = None,
    first: bool = False,
) -> dict[str, Any]:
    """A streamed chunk in OpenAI's format (chat.completion.chunk or text_completion)."""
    if endpoint == CHAT:
        delta: dict[str, Any] = {}
        if first:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    return {
        "id": response_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
    }


def completion(
    endpoint: str,
    response_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    usage_: dict[str, int],
    timings: dict[str, float | None],
) -> dict[str, Any]:
    """A whole (non-streamed) response: chat.completion or text_completion."""
    if endpoint == CHAT:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        obj = "text_completion"
    return {
        "id": response_id,
        "object": obj,
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage_,
        "timings": timings,
    }


def model_list(model: str, owned_by: str, meta: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": model,
                "object": "model",
                "created": int(time.time()),
                "owned_by": owned_by,
                "meta": dict(meta),
            }
        ],
    }
