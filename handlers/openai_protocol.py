"""The OpenAI wire format of answers: routes, response bodies and Server-Sent Events.

Requests are validated by the contract module (``contract.parse``); this module writes what goes
back. Pure Python (stdlib only), so it is tested without a model.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from contract import CHAT, COMPLETION, LEGACY, RequestError

MODELS = "models"
TOKENIZE = "tokenize"
DETOKENIZE = "detokenize"

# url_path (the part after /predictions/{model}/{version}/) -> endpoint
ROUTES = {
    "v1/chat/completions": CHAT,
    "v1/completions": COMPLETION,
    "v1/models": MODELS,
    "v1/tokenize": TOKENIZE,
    "v1/detokenize": DETOKENIZE,
    "": LEGACY,
}


def route(url_path: str | None) -> str:
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
        shown = path if len(path) <= 80 else path[:80] + "…"
        raise RequestError(
            f"Unknown endpoint '/{shown}'. Use v1/chat/completions, v1/completions, v1/models, "
            "v1/tokenize or v1/detokenize.",
            status=404,
            code="unknown_url",
        )
    return ROUTES[path]


def new_id(endpoint: str) -> str:
    prefix = "chatcmpl" if endpoint == CHAT else "cmpl"
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage object; ``cached_tokens``: prompt tokens taken from the cache.

    >>> usage(10, 3, 9)["total_tokens"]
    13
    """
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def sse(payload: Mapping[str, Any] | str) -> bytes:
    """One Server-Sent Event.

    >>> sse("[DONE]")
    b'data: [DONE]\\n\\n'
    """
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


# -- log-probabilities ------------------------------------------------------------------------

# One token's entry as the engine gives it: (token text bytes, logprob, [(bytes, logprob), ...]).
Entry = tuple[bytes, float, Sequence[tuple[bytes, float]]]


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")


def chat_logprobs(entries: Sequence[Entry]) -> dict[str, Any]:
    """``choices[].logprobs`` of a chat answer.

    >>> chat_logprobs([(b"Hi", -0.5, [(b"Hi", -0.5), (b"Hey", -1.0)])])["content"][0]["bytes"]
    [72, 105]
    """
    return {
        "content": [
            {
                "token": _text(piece),
                "logprob": logprob,
                "bytes": list(piece),
                "top_logprobs": [
                    {"token": _text(alt), "logprob": alt_lp, "bytes": list(alt)}
                    for alt, alt_lp in top
                ],
            }
            for piece, logprob, top in entries
        ],
        "refusal": None,
    }


def completion_logprobs(entries: Sequence[Entry], offset: int) -> dict[str, Any]:
    """``choices[].logprobs`` of a text completion; ``offset``: where the first token's text starts.

    >>> completion_logprobs([(b"a", -1.0, [(b"a", -1.0)]), (b"b", -2.0, [])], 5)["text_offset"]
    [5, 6]
    """
    offsets = []
    for piece, _, _ in entries:
        offsets.append(offset)
        offset += len(_text(piece))
    return {
        "tokens": [_text(piece) for piece, _, _ in entries],
        "token_logprobs": [logprob for _, logprob, _ in entries],
        "top_logprobs": [{_text(alt): lp for alt, lp in top} for _, _, top in entries],
        "text_offset": offsets,
    }


# -- answers ----------------------------------------------------------------------------------


def tool_calls_json(
    calls: Sequence[Any], first_index: int = 0, stream: bool = False
) -> list[dict[str, Any]]:
    """OpenAI's ``tool_calls`` from calls with ``id``, ``name`` and ``arguments`` attributes."""
    out = []
    for k, call in enumerate(calls):
        item: dict[str, Any] = {
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        if stream:
            item = {"index": first_index + k, **item}
        out.append(item)
    return out


def chunk(
    endpoint: str,
    response_id: str,
    created: int,
    model: str,
    choices: Sequence[dict[str, Any]],
    obfuscate: bool = False,
) -> dict[str, Any]:
    """A streamed chunk (chat.completion.chunk or text_completion) with the given choices."""
    body = {
        "id": response_id,
        "object": "chat.completion.chunk" if endpoint == CHAT else "text_completion",
        "created": created,
        "model": model,
        "choices": list(choices),
    }
    if obfuscate:
        # Padding of random length hides the size of each token from someone watching the wire.
        body["obfuscation"] = secrets.token_urlsafe(secrets.randbelow(16) + 1)
    return body


def chat_delta(
    index: int,
    *,
    text: str | None = None,
    first: bool = False,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: dict[str, Any] | None = None,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """One choice of a chat chunk."""
    delta: dict[str, Any] = {}
    if first:
        delta["role"] = "assistant"
    if text is not None:
        delta["content"] = text
    if tool_calls:
        delta["tool_calls"] = tool_calls
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def text_delta(
    index: int, text: str, logprobs: dict[str, Any] | None = None, finish_reason: str | None = None
) -> dict[str, Any]:
    """One choice of a text_completion chunk."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_choice(
    index: int,
    text: str | None,
    finish_reason: str,
    tool_calls: list[dict[str, Any]] | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One choice of a whole chat.completion."""
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "index": index,
        "message": message,
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }


def completion(
    endpoint: str,
    response_id: str,
    created: int,
    model: str,
    choices: Sequence[dict[str, Any]],
    usage_: dict[str, Any],
    timings: dict[str, float | None],
) -> dict[str, Any]:
    """A whole (non-streamed) response: chat.completion or text_completion."""
    return {
        "id": response_id,
        "object": "chat.completion" if endpoint == CHAT else "text_completion",
        "created": created,
        "model": model,
        "choices": list(choices),
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
