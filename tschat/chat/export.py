"""Save a conversation as Markdown or JSON, and load a JSON one back."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, fields
from datetime import datetime, timezone
from typing import Any

from tschat.chat.conversation import AnswerStats, Conversation, Message, clean_name
from tschat.chat.sampling import SamplingSettings
from tschat.errors import (
    TsChatError,
)

FORMAT = "tschat-conversation"
FORMAT_VERSION = 1
MAX_IMPORT_BYTES = 5_000_000
MAX_MESSAGES = 5_000


class ConversationFileError(TsChatError):
    """A file given to :func:`from_json` is not a conversation this app can load."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"This file cannot be loaded as a conversation: {reason} Choose a JSON file saved "
            "with “Download JSON”, or a JSON object with a `messages` list of "
            "{role, content} objects."
        )


def to_markdown(conversation: Conversation, model: str | None = None) -> str:
    """The conversation as a Markdown document a person can read.

    >>> c = Conversation("Trip", "Be brief.")
    >>> c.add_question("Hi?")
    >>> c.add_answer(Message("assistant", "Hello.", AnswerStats(finish_reason="stop")))
    >>> print(to_markdown(c))
    # Trip
    <BLANKLINE>
    **System prompt:** Be brief.
    <BLANKLINE>
    ### You
    <BLANKLINE>
    Hi?
    <BLANKLINE>
    ### Assistant
    <BLANKLINE>
    Hello.
    <BLANKLINE>
    *finish: stop*
    <BLANKLINE>
    """
    lines = [f"# {conversation.name}", ""]
    if model:
        lines += [f"**Model:** {model}", ""]
    if conversation.system_prompt.strip():
        lines += [f"**System prompt:** {conversation.system_prompt.strip()}", ""]
    for message in conversation.messages:
        lines += ["### You" if message.role == "user" else "### Assistant", ""]
        lines += [message.content, ""]
        notes = []
        if message.stopped:
            notes.append("stopped before the end")
        if message.stats is not None and message.stats.summary():
            notes.append(message.stats.summary())
        if notes:
            lines += [f"*{' · '.join(notes)}*", ""]
    return "\n".join(lines)


def to_json(
    conversation: Conversation,
    *,
    model: str | None = None,
    settings: SamplingSettings | None = None,
    now: datetime | None = None,
) -> str:
    """The conversation as JSON that :func:`from_json` loads back."""
    data: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "name": conversation.name,
        "exported_at": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
        "system_prompt": conversation.system_prompt,
        "messages": [message.to_json() for message in conversation.messages],
    }
    if model:
        data["model"] = model
    if settings is not None:
        data["settings"] = asdict(settings) | {"stop": list(settings.stop)}
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def from_json(content: str | bytes, default_name: str = "Imported") -> Conversation:
    """Load a conversation saved by :func:`to_json` (or an OpenAI-style ``messages`` list).

    Raises :class:`ConversationFileError` saying what is wrong with the file.

    >>> c = from_json('{"messages": [{"role": "system", "content": "Be brief."},'
    ...               ' {"role": "user", "content": "Hi"}]}')
    >>> c.name, c.system_prompt, c.messages[0].content
    ('Imported', 'Be brief.', 'Hi')
    >>> try:
    ...     from_json('{"messages": [{"role": "robot", "content": "x"}]}')
    ... except ConversationFileError as error:
    ...     print(error.reason)
    messages[0].role must be "user" or "assistant" (or "system" first), not 'robot'.
    """
    if len(content) > MAX_IMPORT_BYTES:
        raise ConversationFileError(f"it is larger than {MAX_IMPORT_BYTES // 1_000_000} MB.")
    if isinstance(content, bytes):
        try:
            content = content.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ConversationFileError("it is not UTF-8 text.") from None
    try:
        data = json.loads(content)
    except (ValueError, RecursionError) as error:
        raise ConversationFileError(f"it is not valid JSON ({error}).") from None
    if isinstance(data, list):
        data = {"messages": data}
    if not isinstance(data, dict):
        raise ConversationFileError("it holds no JSON object.")
    if "format" in data and data["format"] != FORMAT:
        raise ConversationFileError(f"its format is {data['format']!r}, not {FORMAT!r}.")
    version = data.get("version", FORMAT_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or version > FORMAT_VERSION:
        raise ConversationFileError(
            f"it was saved as version {version!r}; this app reads version {FORMAT_VERSION}."
        )
    name = data.get("name", default_name)
    if not isinstance(name, str):
        raise ConversationFileError("name must be text.")
    system_prompt = data.get("system_prompt", "")
    if not isinstance(system_prompt, str):
        raise ConversationFileError("system_prompt must be text.")
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list):
        raise ConversationFileError("it has no `messages` list.")
    if len(raw_messages) > MAX_MESSAGES:
        raise ConversationFileError(f"it has more than {MAX_MESSAGES} messages.")
    messages: list[Message] = []
    for index, raw in enumerate(raw_messages):
        where = f"messages[{index}]"
        if not isinstance(raw, dict):
            raise ConversationFileError(f"{where} must be an object with role and content.")
        role, text = raw.get("role"), raw.get("content")
        if not isinstance(text, str):
            raise ConversationFileError(f"{where}.content must be text.")
        _check_text(text, f"{where}.content")
        if role == "system" and index == 0 and not system_prompt:
            system_prompt = text
            continue
        if role not in ("user", "assistant"):
            raise ConversationFileError(
                f'{where}.role must be "user" or "assistant" (or "system" first), not {role!r}.'
            )
        stats = None
        if raw.get("stats") is not None:
            if role != "assistant":
                raise ConversationFileError(f"{where} is a question; only answers have stats.")
            stats = _stats_from_json(raw["stats"], f"{where}.stats")
        stopped = raw.get("stopped", False)
        if not isinstance(stopped, bool):
            raise ConversationFileError(f"{where}.stopped must be true or false.")
        messages.append(Message(role, text, stats, stopped))
    _check_text(system_prompt, "system_prompt")
    return Conversation(clean_name(name) or default_name, system_prompt, messages)


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise ConversationFileError(f"{where} contains a NUL character.")


def _stats_from_json(data: object, where: str) -> AnswerStats:
    """Parse and check the ``stats`` object of a saved answer."""
    if not isinstance(data, Mapping):
        raise ConversationFileError(f"{where} must be an object.")
    known = {spec.name for spec in fields(AnswerStats)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known or value is None:
            continue
        if key in ("finish_reason", "model"):
            if not isinstance(value, str):
                raise ConversationFileError(f"{where}.{key} must be text.")
            values[key] = value[:200]
        elif key == "estimated":
            values[key] = bool(value)
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConversationFileError(f"{where}.{key} must be a number.")
            if not math.isfinite(value) or value < 0:
                raise ConversationFileError(f"{where}.{key} must be a positive number.")
            whole = key in ("completion_tokens", "prompt_tokens")
            values[key] = int(value) if whole else float(value)
    return AnswerStats(**values)
