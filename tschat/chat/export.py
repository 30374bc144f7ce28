"""The conversation file format's constants and errors, and the Markdown export.

Export and import themselves are :meth:`tschat.chat.store.ConversationStore.export_json` and
:meth:`~tschat.chat.store.ConversationStore.import_json` (which checks a file field by field).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tschat.chat.conversation import AnswerStats
from tschat.errors import TsChatError

FORMAT = "tschat-conversation"
MAX_IMPORT_BYTES = 5_000_000
MAX_MESSAGES = 5_000


class ConversationFileError(TsChatError):
    """A file given to the import is not a conversation this app can load."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"This file cannot be loaded as a conversation: {reason} Choose a JSON file saved "
            "with the JSON download button, or a JSON object with a `messages` list of "
            "{role, content} objects."
        )


class ShownMessage(Protocol):
    """What the Markdown export reads of a message (``tschat.chat.store.StoredMessage``)."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def stats(self) -> AnswerStats | None: ...


NOTES = {"stopped": "stopped before the end", "broken": "broke off", "streaming": "still coming"}


def to_markdown(
    title: str, system_prompt: str, messages: Sequence[ShownMessage], model: str | None = None
) -> str:
    """A conversation (its visible branch) as a Markdown document a person can read.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class M:
    ...     role: str
    ...     content: str
    ...     state: str = "complete"
    ...     stats: AnswerStats | None = None
    >>> print(to_markdown("Trip", "Be brief.", [M("user", "Hi?"),
    ...       M("assistant", "Hel", "stopped", AnswerStats(finish_reason="stopped"))]))
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
    Hel
    <BLANKLINE>
    *stopped before the end · finish: stopped*
    <BLANKLINE>
    """
    lines = [f"# {title}", ""]
    if model:
        lines += [f"**Model:** {model}", ""]
    if system_prompt.strip():
        lines += [f"**System prompt:** {system_prompt.strip()}", ""]
    for message in messages:
        lines += ["### You" if message.role == "user" else "### Assistant", ""]
        lines += [message.content, ""]
        notes = []
        if message.state in NOTES:
            notes.append(NOTES[message.state])
        if message.stats is not None and message.stats.summary():
            notes.append(message.stats.summary())
        if notes:
            lines += [f"*{' · '.join(notes)}*", ""]
    return "\n".join(lines)
