"""Conversations: the messages of one named conversation and its system prompt, and the
book of named conversations of one browser session.

:meth:`Conversation.api_messages` is what every turn sends (the whole history)."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tschat.api.inference import ChatMessage

MAX_NAME_LENGTH = 80

Role = Literal["user", "assistant"]


def clean_name(text: str) -> str:
    """A conversation name: spaces collapsed, at most MAX_NAME_LENGTH characters.

    >>> clean_name("  My   trip ")
    'My trip'
    """
    return " ".join(text.split())[:MAX_NAME_LENGTH]


@dataclass(frozen=True)
class AnswerStats:
    """Figures shown under an answer. ``estimated``: counted here, because the server sent none."""

    ttft_ms: float | None = None
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    tokens_per_second: float | None = None
    finish_reason: str | None = None
    model: str | None = None
    estimated: bool = False

    def summary(self) -> str:
        """One line: time to first token, tokens, speed and finish reason.

        >>> AnswerStats(212.4, 48, 30, 20.53, "length").summary()
        'first token 212 ms · 48 tokens · 20.5 tokens/s · finish: length'
        >>> AnswerStats(None, 5, None, None, "stopped", estimated=True).summary()
        '≈5 tokens · finish: stopped'
        """
        approx = "≈" if self.estimated else ""
        parts = []
        if self.ttft_ms is not None:
            parts.append(f"first token {self.ttft_ms:.0f} ms")
        if self.completion_tokens is not None:
            plural = "" if self.completion_tokens == 1 else "s"
            parts.append(f"{approx}{self.completion_tokens} token{plural}")
        if self.tokens_per_second is not None:
            parts.append(f"{approx}{self.tokens_per_second:.1f} tokens/s")
        if self.finish_reason:
            parts.append(f"finish: {self.finish_reason}")
        return " · ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """A JSON object without the unknown figures."""
        return {key: value for key, value in asdict(self).items() if value not in (None, False)}


@dataclass
class Message:
    """One turn: a question, or an answer with its figures (``stopped``: the user stopped it)."""

    role: Role
    content: str
    stats: AnswerStats | None = None
    stopped: bool = False

    def to_json(self) -> dict[str, Any]:
        """The message as saved in a JSON export."""
        data: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.stopped:
            data["stopped"] = True
        if self.stats is not None:
            data["stats"] = self.stats.to_json()
        return data


@dataclass
class Conversation:
    """One named conversation: its system prompt and messages, oldest first."""

    name: str
    system_prompt: str = ""
    messages: list[Message] = field(default_factory=list)

    def api_messages(self) -> list[ChatMessage]:
        """What a turn sends: the system prompt, then the whole history.

        >>> c = Conversation("x", "Be brief.")
        >>> c.add_question("Hi")
        >>> [m["role"] for m in c.api_messages()]
        ['system', 'user']
        """
        messages: list[ChatMessage] = []
        if self.system_prompt.strip():
            messages.append({"role": "system", "content": self.system_prompt})
        messages.extend({"role": m.role, "content": m.content} for m in self.messages)
        return messages

    @property
    def awaiting_answer(self) -> bool:
        """Whether the last message is a question without an answer."""
        return bool(self.messages) and self.messages[-1].role == "user"

    def add_question(self, text: str) -> None:
        """Append a question (blank text is refused)."""
        if not text.strip():
            raise ValueError("a question needs some text")
        self.messages.append(Message("user", text))

    def add_answer(self, answer: Message) -> None:
        """Append the answer to the last question."""
        if answer.role != "assistant":
            raise ValueError("an answer has the assistant role")
        self.messages.append(answer)

    def last_question(self) -> str | None:
        """The text of the last question, if any."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return None

    def can_regenerate(self) -> bool:
        """Whether there is a question whose (last) answer can be asked for again."""
        return self.last_question() is not None

    def drop_last_answer(self) -> None:
        """Remove the answer(s) after the last question, so it can be answered again."""
        if not self.can_regenerate():
            raise ValueError("there is no question to answer again")
        while self.messages and self.messages[-1].role == "assistant":
            self.messages.pop()

    def replace_last_question(self, text: str) -> None:
        """Replace the last question (and drop its answer) with ``text``, ready to send."""
        if not text.strip():
            raise ValueError("a question needs some text")
        self.drop_last_answer()
        self.messages.pop()
        self.messages.append(Message("user", text))

    def clear(self) -> None:
        """Forget every message (the name and system prompt stay)."""
        self.messages.clear()


@dataclass
class ConversationBook:
    """The named conversations of one browser session; ``active`` indexes the shown one."""

    conversations: list[Conversation] = field(default_factory=list)
    active: int = 0

    def __post_init__(self) -> None:
        if not self.conversations:
            self.conversations.append(Conversation(self.unique_name("Chat")))

    @property
    def current(self) -> Conversation:
        """The conversation on screen."""
        return self.conversations[self.active]

    def names(self) -> list[str]:
        """The names, in creation order."""
        return [c.name for c in self.conversations]

    def unique_name(self, base: str) -> str:
        """``base`` if it is free; new chats are numbered ``Chat 1``, ``Chat 2``; others ``(2)``.

        >>> book = ConversationBook()
        >>> book.names(), book.unique_name("Chat"), book.unique_name("Chat 1")
        (['Chat 1'], 'Chat 2', 'Chat 1 (2)')
        """
        base = clean_name(base) or "Chat"
        taken = {c.name for c in self.conversations}
        if base == "Chat":
            return next(f"Chat {n}" for n in itertools.count(1) if f"Chat {n}" not in taken)
        if base not in taken:
            return base
        return next(f"{base} ({n})" for n in itertools.count(2) if f"{base} ({n})" not in taken)

    def add(self, conversation: Conversation | None = None) -> Conversation:
        """Add a conversation (a new empty one by default) under a unique name; make it active."""
        if conversation is None:
            conversation = Conversation(self.unique_name("Chat"))
        else:
            conversation.name = self.unique_name(conversation.name)
        self.conversations.append(conversation)
        self.active = len(self.conversations) - 1
        return conversation

    def select(self, name: str) -> Conversation:
        """Make the conversation called ``name`` the active one."""
        self.active = self.names().index(name)
        return self.current

    def rename(self, new_name: str) -> str:
        """Rename the active conversation; returns the name it got (made unique, never blank)."""
        wanted = clean_name(new_name)
        if not wanted or wanted == self.current.name:
            return self.current.name
        self.current.name = self.unique_name(wanted)
        return self.current.name

    def remove_current(self) -> None:
        """Delete the active conversation; the book always keeps at least one."""
        del self.conversations[self.active]
        if not self.conversations:
            self.conversations.append(Conversation(self.unique_name("Chat")))
        self.active = min(self.active, len(self.conversations) - 1)
