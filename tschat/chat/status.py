"""The server status of the chat, as data: whether TorchServe answers, and which models can
take questions; and the one rule for a remote server's address. The chat app turns the status
into sentences (apps/chat_status.py).

Whatever answers at a typed address is checked, never trusted: an answer that is not what
TorchServe sends (an HTML page, JSON of another shape) becomes a state with a sentence of our
own, so nothing the other server says reaches the page."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

from tschat.api.management import ModelEntry, ModelStatus
from tschat.errors import (
    AuthError,
    KeyFileMissing,
    ModelNotFound,
    ServerNotRunning,
    SettingsError,
    TsChatError,
)

# An answer that broke the parsing of what TorchServe sends (JSON of another shape).
NOT_TORCHSERVE = (
    "its answer is not shaped like TorchServe's: the address probably points at another server."
)


def server_address(text: str) -> str:
    """A remote server's address: ``http(s)://host[:port]`` and nothing else.

    Raises :class:`tschat.errors.SettingsError` saying what is wrong; the message quotes the
    address only as far as it is plain text.

    >>> server_address(" http://gpu-box:8080/ ")
    'http://gpu-box:8080'
    >>> server_address("https://[::1]:8443")
    'https://[::1]:8443'
    >>> server_address("http://host:8080/predictions/x")
    Traceback (most recent call last):
    ...
    tschat.errors.SettingsError: 'http://host:8080/predictions/x' has a path: give only the \
scheme, host and port, like http://host:8080.
    """
    value = text.strip()
    shown = repr(value[:80].encode("ascii", "backslashreplace").decode("ascii"))
    like = "like http://host:8080."
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise SettingsError(f"{shown} is not an address {like}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{shown} is not an address {like}")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise SettingsError(
            f"{shown} holds a user name or password: give the key in the key field, and only "
            f"the scheme, host and port here, {like}"
        )
    if parts.path not in ("", "/"):
        raise SettingsError(f"{shown} has a path: give only the scheme, host and port, {like}")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise SettingsError(
            f"{shown} has a query or fragment: give only the scheme, host and port, {like}"
        )
    host = parts.hostname
    if not all(c.isalnum() or c in ".-_:" for c in host):
        raise SettingsError(f"{shown} is not an address {like}")
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


class InferenceApi(Protocol):
    """The part of ``InferenceClient`` the status check uses."""

    base_url: str

    def ping(self) -> str: ...

    def models(self, model: str) -> dict[str, Any]: ...


class ManagementApi(Protocol):
    """The part of ``ManagementClient`` the status check uses."""

    def list_models(self) -> list[ModelEntry]: ...

    def describe_model(self, name: str, version: str | None = None) -> ModelStatus: ...


@dataclass(frozen=True)
class ModelChoice:
    """A model for the picker: its name and state in words."""

    name: str
    state: str  # "ready", "loading", "no worker", "not registered", "unknown"
    workers: str = ""

    @property
    def label(self) -> str:
        """The picker's text, e.g. ``smollm2 · ready (1/1 workers)``."""
        detail = f" ({self.workers})" if self.workers else ""
        return f"{self.name} · {self.state}{detail}"


State = Literal[
    "ready",  # the model takes questions
    "unreachable",  # nothing answers at the inference address
    "no_key_file",  # no key file here: TorchServe does not seem to run on this machine
    "key_refused",  # TorchServe refuses the key
    "bad_answer",  # TorchServe answered /ping with an error
    "list_unreadable",  # it answers, but the model list could not be read
    "not_registered",  # the model is not registered
    "loading",  # the model has workers, none READY yet
    "no_worker",  # the model has no worker
    "not_ready",  # a server without management access: the model does not answer
]
ERRORS: frozenset[State] = frozenset(
    {"unreachable", "no_key_file", "key_refused", "bad_answer", "not_registered"}
)


@dataclass(frozen=True)
class ServerCheck:
    """What the chat knows about the server and ``model``; ``detail`` is the error's message.

    ``models`` come from TorchServe's model list when ``listed`` (else: just the asked model).
    """

    state: State
    url: str
    model: str
    reachable: bool
    models: tuple[ModelChoice, ...] = ()
    listed: bool = False
    detail: str = ""

    @property
    def level(self) -> Literal["ok", "warning", "error"]:
        """How the status line shows it."""
        if self.state == "ready":
            return "ok"
        return "error" if self.state in ERRORS else "warning"

    @property
    def can_chat(self) -> bool:
        """Whether sending a question makes sense (a warning may still let it through)."""
        return self.level != "error"

    @property
    def choice(self) -> ModelChoice | None:
        """The asked model's entry in ``models``."""
        return next((c for c in self.models if c.name == self.model), None)


def describe_choice(status: ModelStatus) -> ModelChoice:
    """A model's state from TorchServe's description of it."""
    total, ready = len(status.workers), status.ready_workers
    workers = f"{ready}/{total} worker{'s' if total != 1 else ''}" if total else ""
    if ready:
        return ModelChoice(status.name, "ready", workers)
    if total:
        states = ", ".join(sorted({w.status.lower() for w in status.workers}))
        return ModelChoice(status.name, "loading", f"{workers}: {states}")
    return ModelChoice(status.name, "no worker")


def check_server(
    inference: InferenceApi, management: ManagementApi | None, model: str
) -> ServerCheck:
    """Ask TorchServe whether it answers and whether ``model`` can take questions.

    Every failure becomes a state of the result; nothing is raised for API errors.
    """
    url = inference.base_url
    try:
        inference.ping()
    except ServerNotRunning:
        return ServerCheck("unreachable", url, model, reachable=False)
    except KeyFileMissing as error:
        return ServerCheck("no_key_file", url, model, reachable=False, detail=error.message)
    except AuthError as error:
        return ServerCheck("key_refused", url, model, reachable=True, detail=error.message)
    except TsChatError as error:
        return ServerCheck("bad_answer", url, model, reachable=True, detail=error.message)
    except Exception:  # noqa: BLE001 - whatever answered is not TorchServe
        return ServerCheck("bad_answer", url, model, reachable=True, detail=NOT_TORCHSERVE)

    if management is None:
        return _check_without_management(inference, model)
    try:
        choices = {
            entry.name: ModelChoice(entry.name, "unknown") for entry in management.list_models()
        }
        for name in list(choices):
            try:
                choices[name] = describe_choice(management.describe_model(name))
            except ModelNotFound:
                del choices[name]  # unregistered between the two calls
    except TsChatError as error:
        return ServerCheck("list_unreadable", url, model, reachable=True, detail=error.message)
    except Exception:  # noqa: BLE001 - JSON of another shape
        return ServerCheck("list_unreadable", url, model, reachable=True, detail=NOT_TORCHSERVE)
    found = tuple(choices.values())
    choice = choices.get(model)
    if choice is None:
        missing = found + (ModelChoice(model, "not registered"),)
        return ServerCheck("not_registered", url, model, True, missing, listed=True)
    states: dict[str, State] = {"ready": "ready", "loading": "loading"}
    return ServerCheck(states.get(choice.state, "no_worker"), url, model, True, found, listed=True)


def _check_without_management(inference: InferenceApi, model: str) -> ServerCheck:
    url = inference.base_url
    try:
        inference.models(model)
    except ModelNotFound:
        return ServerCheck(
            "not_registered", url, model, True, (ModelChoice(model, "not registered"),)
        )
    except TsChatError as error:
        choices = (ModelChoice(model, "unknown"),)
        return ServerCheck("not_ready", url, model, True, choices, detail=error.message)
    except Exception:  # noqa: BLE001 - JSON of another shape
        choices = (ModelChoice(model, "unknown"),)
        return ServerCheck("not_ready", url, model, True, choices, detail=NOT_TORCHSERVE)
    return ServerCheck("ready", url, model, True, (ModelChoice(model, "ready"),))
