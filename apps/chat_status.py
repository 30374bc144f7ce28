"""The chat's status line: a sentence for each state of :class:`tschat.chat.status.ServerCheck`."""

from __future__ import annotations

from tschat.chat.status import ServerCheck


def status_message(check: ServerCheck) -> str:
    """What the status line at the top of the chat says: what is wrong and what to do."""
    url, model = check.url, check.model
    choice = check.choice
    if check.state == "unreachable":
        return (
            f"TorchServe is not reachable at {url}. Start it from the server console or with "
            "`make run` (or fix the remote server address in the sidebar), then press Check again."
        )
    if check.state == "no_key_file":
        return f"TorchServe does not seem to run here. {check.detail}"
    if check.state == "key_refused":
        return f"TorchServe answers, but {check.detail}"
    if check.state == "bad_answer":
        return f"TorchServe did not answer properly: {check.detail}"
    if check.state == "list_unreadable":
        return f"TorchServe answers, but its model list could not be read: {check.detail}"
    if check.state == "not_registered" and check.listed:
        others = ", ".join(c.name for c in check.models if c.name != model) or "none"
        return (
            f"Model {model!r} is not registered with TorchServe (registered: {others}). "
            "Register it in the server console, or pick another model in the sidebar."
        )
    if check.state == "not_registered":
        return (
            f"Model {model!r} is not registered on {url}. Type the name of a registered model "
            "in the sidebar."
        )
    if check.state == "not_ready":
        return f"Model {model!r} is not ready: {check.detail}"
    if check.state == "loading":
        workers = choice.workers if choice else ""
        return (
            f"Model {model!r} is loading ({workers}). Wait until its worker is READY "
            "(usually a few seconds), then press Check."
        )
    if check.state == "no_worker":
        return (
            f"Model {model!r} has no worker. Scale it to at least one worker in the server "
            "console, then press Check."
        )
    if check.listed and choice is not None:
        return f"Connected to TorchServe at {url}: {choice.label}."
    return f"Connected to {url}: model {model} answers."
