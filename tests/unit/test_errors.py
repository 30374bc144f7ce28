"""The error tree drawn in tschat.errors matches the classes, and every message reads as advice."""

from __future__ import annotations

import inspect
import re

import pytest

from tschat import errors
from tschat.api.transport import parse_error_body

ERROR_CLASSES = {
    name: value
    for name, value in vars(errors).items()
    if inspect.isclass(value) and issubclass(value, errors.TsChatError)
}

EXAMPLES: list[errors.TsChatError] = [
    errors.SettingsError("TSCHAT_INFERENCE_PORT='x' is not a whole number."),
    errors.JavaMissing(None),
    errors.JavaMissing("Java 11"),
    errors.PortInUse("127.0.0.1", 8080, "TSCHAT_INFERENCE_PORT"),
    errors.ArchiveInvalid("x.tar", "give the file name of a .mar archive."),
    errors.PackagingFailed("smollm2", "there is no file at x.gguf."),
    errors.StartupFailed("the launcher exited with code 1.", "Invalid configuration"),
    errors.StartupTimeout(180, ""),
    errors.ServerNotRunning("http://127.0.0.1:8080"),
    errors.AuthError("Token Authorization failed."),
    errors.KeyFileMissing("var/key_file.json"),
    errors.ModelNotFound("smollm2"),
    errors.ModelNotReady("smollm2", "UNLOADING"),
    errors.BadRequest("'max_tokens' must be at least 1.", param="max_tokens"),
    errors.QueueFull("no worker"),
    errors.ServerError("TorchServe failed (HTTP 500): Worker died.", status=500),
    errors.ServerTimeout("http://127.0.0.1:8080/ping", 30),
]


def test_docstring_draws_the_whole_tree() -> None:
    doc = errors.__doc__ or ""
    drawn = {}
    for line in doc.splitlines():
        match = re.match(r"( *)\* (\w+)", line)
        if match:
            drawn[match.group(2)] = len(match.group(1))
    assert set(drawn) == set(ERROR_CLASSES)
    # Indentation follows inheritance: each class sits one level under its base.
    for name, cls in ERROR_CLASSES.items():
        if cls is errors.TsChatError:
            continue
        base = next(b for b in cls.__mro__[1:] if b.__name__ in ERROR_CLASSES)
        assert drawn[name] == drawn[base.__name__] + 4, name


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_messages_are_sentences(error: errors.TsChatError) -> None:
    message = str(error)
    assert message == error.message
    assert message[0].isupper() or message[0] in "'\""
    assert message.rstrip().endswith((".", ")")) or "Last log lines" in message


def test_every_class_has_an_example() -> None:
    assert {type(error) for error in EXAMPLES} == set(ERROR_CLASSES.values()) - {
        errors.TsChatError,
        errors.SetupError,
        errors.ApiError,
    }


def test_catching_one_branch() -> None:
    with pytest.raises(errors.ApiError):
        raise errors.KeyFileMissing("x")
    with pytest.raises(errors.AuthError):
        raise errors.KeyFileMissing("x")
    with pytest.raises(errors.SetupError):
        raise errors.StartupTimeout(1)
    with pytest.raises(ValueError):  # settings errors are also ValueErrors
        raise errors.SettingsError("bad")


def test_advice_in_messages() -> None:
    assert "make run" in str(errors.ServerNotRunning("http://x"))
    assert "400" in str(errors.AuthError())
    assert "retry" in str(errors.QueueFull()).lower()
    assert "TSCHAT_INFERENCE_PORT" in str(
        errors.PortInUse("127.0.0.1", 8080, "TSCHAT_INFERENCE_PORT")
    )
    assert "Invalid configuration" in str(errors.StartupFailed("x.", "Invalid configuration"))


def test_handler_error_body_shapes() -> None:
    assert parse_error_body("").message == ""
    assert parse_error_body('{"error": {}}').message == "request refused"
    assert parse_error_body('{"message": "plain"}').type is None
