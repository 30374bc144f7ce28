"""The one HTTP seam to TorchServe: a pooled session, keys with one refresh-and-retry, errors.

Every client of the package sends its requests through :class:`Transport`: the inference and
management clients, the key refresh, the metrics reader and the health probe. It

* keeps one ``requests.Session`` per client, pooled so that concurrent streams reuse connections;
* sends the current key of its kind as a bearer token and, when TorchServe refuses it (TorchServe
  answers 400 with ``InvalidKeyException``), asks the key source for another and retries once;
* turns every transport failure and every error answer into the package's errors
  (:func:`raise_for_status` is the one status-to-error map), with messages for people.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import requests
import requests.adapters

from tschat.errors import (
    AuthError,
    BadRequest,
    ModelNotFound,
    QueueFull,
    ServerError,
    ServerNotRunning,
    ServerTimeout,
)

KeyKind = Literal["inference", "management"]
CONNECT_TIMEOUT_S = 5.0
POOL_SIZE = 64  # concurrent streams one client may hold open (several chat tabs, load tests)

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
    "an answer that is not TorchServe's (17 characters of text, not its JSON)"
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
    if not text.strip():
        return ErrorInfo(message="")
    # Not TorchServe's: whatever answers at the address (a proxy's page, another server) is
    # described, never repeated, so nothing it says reaches a page.
    return ErrorInfo(
        message=f"an answer that is not TorchServe's ({len(text):,} characters of text, not its "
        "JSON)"
    )


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


class KeySource(Protocol):
    """Where a transport gets its key (``tschat.api.keys.KeyStore``)."""

    def key(self, kind: KeyKind) -> str:
        """A usable key of one kind."""
        ...

    def recover(self, kind: KeyKind, rejected: str | None) -> str:
        """A different key after TorchServe refused ``rejected``."""
        ...


def pooled_session() -> requests.Session:
    """A session that keeps up to POOL_SIZE connections, so concurrent streams reuse them."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class Transport:
    """Requests to one TorchServe API, with the key of ``kind`` from ``keys`` (none: no key)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float,
        keys: KeySource | None = None,
        kind: KeyKind = "inference",
        connect_timeout: float = CONNECT_TIMEOUT_S,
        session: requests.Session | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.keys = keys
        self.kind: KeyKind = kind
        self.connect_timeout = connect_timeout
        self.session = session or pooled_session()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        stream: bool = False,
        model: str | None = None,
        timeout: float | None = None,
    ) -> requests.Response:
        """Send one request; return the answer when it succeeded, else raise the package error.

        ``timeout`` is how long to wait for the next bytes (default: the transport's); with
        ``stream`` the body is left unread for the caller to iterate.
        """
        url = self.base_url + path
        read_timeout = self.timeout if timeout is None else timeout
        rejected: str | None = None
        for attempt in range(2):
            sent = dict(headers or {})
            key = None
            if self.keys is not None:
                key = (
                    self.keys.key(self.kind)
                    if rejected is None
                    else self.keys.recover(self.kind, rejected)
                )
                sent["Authorization"] = f"Bearer {key}"
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=body,
                    headers=sent,
                    stream=stream,
                    timeout=(self.connect_timeout, read_timeout),
                )
            except requests.Timeout:
                raise ServerTimeout(url, read_timeout) from None
            except requests.ConnectionError:
                raise ServerNotRunning(self.base_url) from None
            except requests.RequestException as error:
                raise ServerError(f"The answer from TorchServe broke off: {error}") from error
            if response.status_code >= 400:
                response.encoding = "utf-8"
                text = response.text  # reads and releases the connection
                if (
                    attempt == 0
                    and self.keys is not None
                    and is_auth_failure(response.status_code, parse_error_body(text))
                ):
                    rejected = key  # expired, or refreshed elsewhere: one more try
                    continue
                raise_for_status(response, model=model)
            return response
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()
