"""Turn TorchServe and handler error answers into the package's errors (shared by the clients)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests

from tschat.errors import (
    AuthError,
    BadRequest,
    ModelNotFound,
    QueueFull,
    ServerError,
)

# TorchServe's words for a refused key (TokenAuthorizationHandler raises InvalidKeyException).
AUTH_ERROR_TYPE = "InvalidKeyException"
AUTH_ERROR_TEXT = "token"


@dataclass(frozen=True)
class ErrorInfo:
    """What an error body says: TorchServe's {code, type, message} or OpenAI's {error: {...}}."""

    message: str
    type: str | None = None
    param: str | None = None
    code: str | None = None
    openai: bool = False


def parse_error_body(text: str) -> ErrorInfo:
    """Read the message out of an error body, whatever its shape.

    >>> info = parse_error_body(
    ...     '{"code": 404, "type": "ModelNotFoundException", "message": "Model not found: x"}')
    >>> info.message, info.type, info.openai
    ('Model not found: x', 'ModelNotFoundException', False)
    >>> parse_error_body('{"error": {"message": "max_tokens must be positive",'
    ...                  ' "type": "invalid_request_error", "param": "max_tokens"}}').message
    'max_tokens must be positive'
    >>> inner = json.dumps({"error": {"message": "bad role", "param": "messages"}})
    >>> wrapped = {"code": 400, "type": "InternalServerException", "message": inner}
    >>> parse_error_body(json.dumps(wrapped)).param
    'messages'
    >>> parse_error_body("<html>oops</html>").message
    '<html>oops</html>'
    """
    data = _json(text)
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        error = data["error"]
        return ErrorInfo(
            message=str(error.get("message") or "request refused"),
            type=_opt(error.get("type")),
            param=_opt(error.get("param")),
            code=_opt(error.get("code")),
            openai=True,
        )
    if isinstance(data, dict) and "message" in data:
        message = str(data.get("message") or "")
        # A handler's PredictionException reaches us wrapped by TorchServe: the OpenAI body
        # is the text of TorchServe's "message".
        inner = _json(message)
        if isinstance(inner, dict) and isinstance(inner.get("error"), dict):
            return parse_error_body(message)
        return ErrorInfo(message=message, type=_opt(data.get("type")))
    return ErrorInfo(message=text.strip()[:500])


def is_auth_failure(status: int, info: ErrorInfo) -> bool:
    """Whether TorchServe refused the key (it answers 400 with InvalidKeyException)."""
    return (
        status == 400
        and (info.type == AUTH_ERROR_TYPE or AUTH_ERROR_TEXT in info.message.lower())
        and not info.openai
    )


def raise_for_status(response: requests.Response, *, model: str | None = None) -> None:
    """Raise the package error that matches an HTTP error answer; return for 1xx-3xx."""
    status = response.status_code
    if status < 400:
        return
    info = parse_error_body(response.text)
    if is_auth_failure(status, info):
        raise AuthError(info.message)
    if status == 404 and not info.openai and (info.type or "").startswith("Model"):
        raise ModelNotFound(model or _model_from_message(info.message), info.message)
    if status == 503:
        raise QueueFull(info.message)
    if status == 408:
        raise ServerError(f"TorchServe timed out: {info.message}", status=408)
    if status == 413:
        raise BadRequest(
            "The request is larger than TorchServe accepts (max_request_size).", status=413
        )
    if status == 507:
        raise ServerError(
            f"TorchServe ran out of memory or the answer was too large: {info.message}", status=507
        )
    if status < 500:
        raise BadRequest(
            info.message or f"HTTP {status}", status=status, param=info.param, code=info.code
        )
    raise ServerError(
        f"TorchServe failed (HTTP {status}): {info.message or response.reason}", status=status
    )


def _model_from_message(message: str) -> str:
    prefix = "Model not found: "
    return message[len(prefix) :] if message.startswith(prefix) else "?"


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return None


def _opt(value: object) -> str | None:
    return None if value is None else str(value)
