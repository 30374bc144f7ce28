"""Errors with messages written for the person using the apps.

Every message is a sentence that says what went wrong and what to do next, so a UI can
show ``str(error)`` as it is. The whole tree:

* TsChatError
    * SettingsError - a TSCHAT_* value or a settings field is invalid.
    * SetupError - TorchServe cannot be started on this machine.
        * JavaMissing - no Java 17 or newer.
        * PortInUse - a port TorchServe needs is taken by another program.
        * ArchiveInvalid - a model archive name or file is not usable.
        * PackagingFailed - packaging could not build an archive.
        * StartupFailed - TorchServe exited while starting.
            * StartupTimeout - TorchServe did not answer /ping in time.
    * ApiError - a request to a TorchServe API failed.
        * ServerNotRunning - nothing answers on the API port.
        * AuthError - TorchServe refused the key (it answers 400).
            * KeyFileMissing - key_file.json is not there to read keys from.
        * ModelNotFound - the model is not registered (404).
        * ModelNotReady - the model has no READY worker.
        * BadRequest - the request was refused (4xx); carries the server's message.
        * QueueFull - TorchServe is busy (503).
        * ServerError - the server failed (5xx), or an answer broke off.
            * ServerTimeout - no answer within the read timeout.
"""

from __future__ import annotations


class TsChatError(Exception):
    """Base of every error this package raises; ``message`` is meant for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SettingsError(TsChatError, ValueError):
    """A setting has a value that cannot be used."""


class SetupError(TsChatError):
    """TorchServe cannot be started on this machine."""


class JavaMissing(SetupError):
    """No Java 17 or newer to run the TorchServe frontend."""

    def __init__(self, found: str | None = None) -> None:
        self.found = found
        what = f"found {found}" if found else "no `java` command was found"
        super().__init__(
            f"TorchServe needs Java 17 or newer, but {what}. Install a JDK 17 "
            "(scripts/install_system.sh does it) or point JAVA_HOME at one, then start again."
        )


class PortInUse(SetupError):
    """A port TorchServe needs is already taken by another program."""

    def __init__(self, host: str, port: int, setting: str | None = None) -> None:
        self.host = host
        self.port = port
        self.setting = setting
        hint = f", or choose another port with {setting}" if setting else ""
        super().__init__(
            f"Port {port} on {host} is already in use by another program. Stop that program{hint}, "
            "then start TorchServe again."
        )


class ArchiveInvalid(SetupError):
    """A model archive name or file cannot be registered."""

    def __init__(self, archive: str, reason: str) -> None:
        self.archive = archive
        self.reason = reason
        super().__init__(
            f"Cannot use model archive {archive!r}: {reason} Build one with "
            "`bash package_model.sh` and pick a .mar file from the model store."
        )


class PackagingFailed(SetupError):
    """Packaging could not build an archive; ``reason`` says why."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(
            f"Packaging model {name!r} failed: {reason} Nothing was written to the model store; "
            "fix the input and package again."
        )


class StartupFailed(SetupError):
    """TorchServe stopped or failed while starting; ``log_tail`` holds its last log lines."""

    def __init__(self, reason: str, log_tail: str = "") -> None:
        self.reason = reason
        self.log_tail = log_tail
        tail = f"\nLast log lines:\n{log_tail}" if log_tail else ""
        super().__init__(
            f"TorchServe did not start: {reason} See the logs in var/logs for details.{tail}"
        )


class StartupTimeout(StartupFailed):
    """TorchServe did not answer /ping within the startup timeout."""

    def __init__(self, timeout: float, log_tail: str = "") -> None:
        self.timeout = timeout
        super().__init__(
            f"it did not answer /ping within {timeout:g} s, so it was stopped again. "
            "Raise TSCHAT_STARTUP_TIMEOUT_S on a slow machine.",
            log_tail,
        )


class ApiError(TsChatError):
    """A request to a TorchServe API failed."""


class ServerNotRunning(ApiError):
    """Nothing answers at the API address."""

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(
            f"TorchServe is not answering at {url}. Start it from the server console or with "
            "`make run`, then try again."
        )


class AuthError(ApiError):
    """TorchServe refused the key: it answers 400 for a missing, wrong or expired key."""

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(
            "TorchServe refused the API key (HTTP 400: the key is missing, wrong or expired). "
            "Keys change every time TorchServe starts: reload the page, or paste the current key "
            "from var/key_file.json when the server runs elsewhere."
        )


class KeyFileMissing(AuthError):
    """There is no key_file.json to read keys from."""

    def __init__(self, path: str) -> None:
        self.path = path
        ApiError.__init__(
            self,
            f"No key file at {path}. TorchServe writes it when it starts: start TorchServe "
            "(`make run`), or give the keys of the server you connect to.",
        )
        self.detail = ""


class ModelNotFound(ApiError):
    """The model is not registered."""

    def __init__(self, model: str, detail: str = "") -> None:
        self.model = model
        self.detail = detail
        super().__init__(
            f"Model {model!r} is not registered with TorchServe. "
            "Register it from the server console, then try again."
        )


class ModelNotReady(ApiError):
    """The model is registered but no worker is READY."""

    def __init__(self, model: str, detail: str = "") -> None:
        self.model = model
        self.detail = detail
        suffix = f" ({detail})" if detail else ""
        super().__init__(
            f"Model {model!r} has no READY worker yet{suffix}. Wait for the worker to finish "
            "loading, or scale the model to at least one worker in the server console."
        )


class BadRequest(ApiError):
    """The request was refused; ``message`` is the server's (the handler's ``error.message``)."""

    def __init__(
        self, message: str, *, status: int = 400, param: str | None = None, code: str | None = None
    ) -> None:
        self.status = status
        self.param = param
        self.code = code
        super().__init__(message)


class QueueFull(ApiError):
    """TorchServe answered 503: the request queue is full, or the model has no worker."""

    def __init__(self, detail: str = "") -> None:
        self.detail = detail
        super().__init__(
            "TorchServe is busy (HTTP 503): its request queue is full or the model has no worker. "
            "Retry in a moment; if it persists, check the model's workers in the server console."
        )


class ServerError(ApiError):
    """TorchServe failed (5xx), or an answer broke off part-way."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class ServerTimeout(ServerError):
    """No bytes arrived within the read timeout."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        super().__init__(
            f"TorchServe sent nothing for {timeout:g} s ({url}). The worker may be stuck or "
            "overloaded: look at model_log.log in the server console, and retry."
        )
