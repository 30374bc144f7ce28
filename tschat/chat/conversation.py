"""Conversations of the chat app: the model, sampling settings, answers in flight, export/import.

Nothing here draws widgets or builds HTTP requests: the chat app keeps these objects in its
session state and hands them the inference client's calls; the tests use them directly.

* :class:`Conversation` - the messages of one named conversation and its system prompt;
  :meth:`Conversation.api_messages` is what every turn sends (the whole history).
* :class:`ConversationBook` - several named conversations, one of them active.
* :class:`SamplingSettings` and :data:`KNOBS` - the sampling parameters, their ranges and defaults.
* :class:`PendingAnswer` - an answer being streamed by its own thread; it outlives a script rerun
  and can be stopped.
* :func:`to_markdown`, :func:`to_json`, :func:`from_json` - save a conversation and load it back.
* :func:`check_server` - what the status line at the top of the chat says.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

from tschat.api.inference import ChatMessage, Timings, Usage
from tschat.api.management import ModelEntry, ModelStatus
from tschat.errors import (
    AuthError,
    KeyFileMissing,
    ModelNotFound,
    ServerNotRunning,
    SettingsError,
    TsChatError,
)

FORMAT = "tschat-conversation"
FORMAT_VERSION = 1
MAX_IMPORT_BYTES = 5_000_000
MAX_MESSAGES = 5_000
MAX_STOP_SEQUENCES = 4  # the handler refuses more
MAX_NAME_LENGTH = 80
STOPPED = "stopped"  # finish reason of an answer the user stopped
BROKEN = "error"  # finish reason of an answer that broke off

Role = Literal["user", "assistant"]


class ConversationFileError(TsChatError):
    """A file given to :func:`from_json` is not a conversation this app can load."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(
            f"This file cannot be loaded as a conversation: {reason} Choose a JSON file saved "
            "with “Download JSON”, or a JSON object with a `messages` list of "
            "{role, content} objects."
        )


# ---------------------------------------------------------------------------- sampling settings


@dataclass(frozen=True)
class Knob:
    """One numeric sampling parameter with its slider range (the server accepts at least this)."""

    name: str
    label: str
    low: float
    high: float
    default: float
    step: float
    help: str

    @property
    def whole(self) -> bool:
        """Whether the parameter takes whole numbers."""
        return all(float(v).is_integer() for v in (self.low, self.high, self.default, self.step))


KNOBS: tuple[Knob, ...] = (
    Knob(
        "temperature",
        "Temperature",
        0.0,
        2.0,
        0.7,
        0.05,
        "Randomness of the answer: 0 always picks the likeliest token, higher values vary more.",
    ),
    Knob(
        "top_p",
        "Top-p",
        0.0,
        1.0,
        0.95,
        0.01,
        "Sample only from the likeliest tokens whose probabilities add up to this.",
    ),
    Knob(
        "top_k",
        "Top-k",
        0,
        200,
        40,
        1,
        "Sample only from this many likeliest tokens (0 = no limit).",
    ),
    Knob(
        "min_p",
        "Min-p",
        0.0,
        1.0,
        0.05,
        0.01,
        "Drop tokens less likely than this fraction of the likeliest one.",
    ),
    Knob(
        "max_tokens",
        "Max tokens",
        1,
        2048,
        512,
        1,
        "Longest answer, in tokens; the answer ends with finish reason “length” when reached.",
    ),
    Knob(
        "repeat_penalty",
        "Repeat penalty",
        1.0,
        2.0,
        1.1,
        0.01,
        "Penalty on tokens already used; 1 = none. Raise it if answers loop.",
    ),
)
KNOB = {knob.name: knob for knob in KNOBS}
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}
_ESCAPE = re.compile(r"\\([nt\\])")
SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class SamplingSettings:
    """The sampling parameters of a request; ``seed`` None draws a new seed on the server."""

    temperature: float = KNOB["temperature"].default
    top_p: float = KNOB["top_p"].default
    top_k: int = int(KNOB["top_k"].default)
    min_p: float = KNOB["min_p"].default
    max_tokens: int = int(KNOB["max_tokens"].default)
    repeat_penalty: float = KNOB["repeat_penalty"].default
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for knob in KNOBS:
            value = getattr(self, knob.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SettingsError(f"{knob.label} must be a number.")
            if not (math.isfinite(value) and knob.low <= value <= knob.high):
                raise SettingsError(
                    f"{knob.label} must be between {knob.low:g} and {knob.high:g}; got {value}."
                )
        if self.seed is not None and not 0 <= self.seed <= SEED_MAX:
            raise SettingsError(f"The seed must be between 0 and {SEED_MAX}.")
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise SettingsError(f"At most {MAX_STOP_SEQUENCES} stop sequences are allowed.")

    def request_params(self) -> dict[str, Any]:
        """The keyword arguments for ``InferenceClient.chat_stream``.

        >>> SamplingSettings(max_tokens=3, seed=7, stop=("END",)).request_params()["stop"]
        ['END']
        >>> "seed" in SamplingSettings().request_params()
        False
        """
        params: dict[str, Any] = {knob.name: getattr(self, knob.name) for knob in KNOBS}
        if self.seed is not None:
            params["seed"] = self.seed
        if self.stop:
            params["stop"] = list(self.stop)
        return params


def parse_stop_sequences(text: str) -> tuple[str, ...]:
    r"""Stop sequences from a text box: one per line, where ``\n``, ``\t`` and ``\\`` are escapes.

    >>> parse_stop_sequences("END\n\n###\\n\nC:\\\\x")
    ('END', '###\n', 'C:\\x')
    >>> parse_stop_sequences("a\nb\nc\nd\ne")
    Traceback (most recent call last):
    ...
    tschat.errors.SettingsError: At most 4 stop sequences are allowed; 5 were given.
    """
    sequences = [
        _ESCAPE.sub(lambda match: _ESCAPES[match.group(1)], line)
        for line in text.splitlines()
        if line
    ]
    if len(sequences) > MAX_STOP_SEQUENCES:
        raise SettingsError(
            f"At most {MAX_STOP_SEQUENCES} stop sequences are allowed; {len(sequences)} were given."
        )
    return tuple(sequences)


# ---------------------------------------------------------------------------- messages


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

    @classmethod
    def from_json(cls, data: object, where: str) -> AnswerStats:
        """Parse and check the ``stats`` object of a saved answer."""
        if not isinstance(data, Mapping):
            raise ConversationFileError(f"{where} must be an object.")
        known = {spec.name for spec in fields(cls)}
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
        return cls(**values)


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
        base = " ".join(base.split())[:MAX_NAME_LENGTH] or "Chat"
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
        wanted = " ".join(new_name.split())[:MAX_NAME_LENGTH]
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


# ---------------------------------------------------------------------------- answers in flight


class TextStream(Protocol):
    """What :class:`PendingAnswer` needs of ``tschat.api.inference.ChatStream``."""

    finish_reason: str | None
    usage: Usage | None
    timings: Timings | None
    client_ttft_ms: float | None

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None: ...


class PendingAnswer:
    """An answer being streamed into a conversation, read by a thread of its own.

    The thread sends the request and reads the HTTP stream into :attr:`text`, whatever the app's
    script is doing: a Streamlit rerun (any click) interrupts only the drawing, and the next run
    calls :meth:`deltas` again, which repeats the text so far and goes on with the new pieces.
    :meth:`stop` freezes the text and closes the stream.
    """

    def __init__(
        self,
        start: Callable[[], TextStream],
        conversation: Conversation,
        model: str,
        *,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.conversation = conversation
        self.model = model
        self.text = ""
        self.pieces = 0
        self.done = False
        self.stopped = False
        self.error: str | None = None
        self.stream: TextStream | None = None
        self._start = start
        self._clock = clock
        self._started = clock()
        self._first_at: float | None = None
        self._changed = threading.Condition()
        self.thread = threading.Thread(target=self._read, name="tschat-answer", daemon=True)
        self.thread.start()

    @property
    def finished(self) -> bool:
        """Whether nothing more will arrive (complete, stopped or broken off)."""
        return self.done or self.stopped or self.error is not None

    @property
    def waited_s(self) -> float:
        """Seconds since the request was sent."""
        return self._clock() - self._started

    def _read(self) -> None:
        stream: TextStream | None = None
        try:
            stream = self._start()
            with self._changed:
                self.stream = stream
                stopped_while_connecting = self.stopped
            if stopped_while_connecting:
                return
            for piece in stream:
                with self._changed:
                    if self.stopped:  # stop() closed the stream while we waited for this
                        return
                    if self._first_at is None:
                        self._first_at = self._clock()
                    self.text += piece
                    self.pieces += 1
                    self._changed.notify_all()
            with self._changed:
                self.done = not self.stopped
        except Exception as error:  # noqa: BLE001 - reported to the user, never raised here
            with self._changed:
                if not self.stopped:
                    self.error = error.message if isinstance(error, TsChatError) else repr(error)
        finally:
            if stream is not None:
                stream.close()
            with self._changed:
                self._changed.notify_all()

    def wait(self, shown: int, timeout: float) -> str:
        """The text after the first ``shown`` characters, waiting up to ``timeout`` for some."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.text) > shown or self.finished, timeout)
            return self.text[shown:]

    def deltas(
        self, on_wait: Callable[[PendingAnswer], None] | None = None, poll_s: float = 0.25
    ) -> Iterator[str]:
        """The text so far as one piece, then each new piece until the answer ends.

        ``on_wait`` is called every ``poll_s`` seconds while nothing arrives (the app draws a
        "waiting" line there, which also lets Streamlit handle a click). Abandoning this
        generator loses nothing; errors are left in :attr:`error`, not raised.
        """
        shown = 0
        while True:
            new = self.wait(shown, poll_s)
            if new:
                shown += len(new)
                yield new
            elif self.finished:
                return
            elif on_wait is not None:
                on_wait(self)

    def stop(self) -> None:
        """Stop the answer: keep the text received so far and close the HTTP stream."""
        with self._changed:
            if not self.finished:
                self.stopped = True
            stream = self.stream
            self._changed.notify_all()
        if stream is not None:
            stream.close()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the reading thread to end (tests)."""
        self.thread.join(timeout)

    def message(self) -> Message | None:
        """The answer to store, with its figures; None when no text arrived at all."""
        with self._changed:
            if not self.text:
                return None
            stream = self.stream
            if self.done and stream is not None and stream.finish_reason is not None:
                usage, timings = stream.usage, stream.timings
                ttft = timings.ttft_ms if timings is not None else None
                stats = AnswerStats(
                    ttft_ms=ttft if ttft is not None else stream.client_ttft_ms,
                    completion_tokens=usage.completion_tokens if usage else self.pieces,
                    prompt_tokens=usage.prompt_tokens if usage else None,
                    tokens_per_second=timings.tokens_per_second if timings else None,
                    finish_reason=stream.finish_reason,
                    model=self.model,
                    estimated=usage is None,
                )
                return Message("assistant", self.text, stats)
            # Stopped or broken off: the server sent no figures, so count what arrived here
            # (the handler sends one piece per token).
            now = self._clock()
            speed = None
            if self._first_at is not None and self.pieces > 1 and now > self._first_at:
                speed = (self.pieces - 1) / (now - self._first_at)
            stats = AnswerStats(
                ttft_ms=None if self._first_at is None else (self._first_at - self._started) * 1000,
                completion_tokens=self.pieces,
                tokens_per_second=speed,
                finish_reason=STOPPED if self.stopped else BROKEN,
                model=self.model,
                estimated=True,
            )
            return Message("assistant", self.text, stats, stopped=self.stopped)


# ---------------------------------------------------------------------------- export and import


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
            stats = AnswerStats.from_json(raw["stats"], f"{where}.stats")
        stopped = raw.get("stopped", False)
        if not isinstance(stopped, bool):
            raise ConversationFileError(f"{where}.stopped must be true or false.")
        messages.append(Message(role, text, stats, stopped))
    _check_text(system_prompt, "system_prompt")
    clean_name = " ".join(name.split())[:MAX_NAME_LENGTH] or default_name
    return Conversation(clean_name, system_prompt, messages)


def _check_text(text: str, where: str) -> None:
    if "\x00" in text:
        raise ConversationFileError(f"{where} contains a NUL character.")


# ---------------------------------------------------------------------------- server status


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


@dataclass(frozen=True)
class ServerCheck:
    """The status line: ``level`` is "ok", "warning" or "error"; ``message`` says what to do.

    ``models`` come from TorchServe's model list when ``listed`` (else: just the asked model).
    """

    level: Literal["ok", "warning", "error"]
    message: str
    reachable: bool
    models: tuple[ModelChoice, ...] = ()
    listed: bool = False

    @property
    def can_chat(self) -> bool:
        """Whether sending a question makes sense (a warning may still let it through)."""
        return self.level != "error"


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

    Every failure becomes a sentence for the status line; nothing is raised for API errors.
    """
    try:
        inference.ping()
    except ServerNotRunning:
        return ServerCheck(
            "error",
            f"TorchServe is not reachable at {inference.base_url}. Start it from the server "
            "console or with `make run` (or fix the remote server address in the sidebar), "
            "then press Check again.",
            reachable=False,
        )
    except KeyFileMissing as error:
        return ServerCheck(
            "error", f"TorchServe does not seem to run here. {error.message}", reachable=False
        )
    except AuthError as error:
        return ServerCheck("error", f"TorchServe answers, but {error.message}", True)
    except TsChatError as error:
        return ServerCheck("error", f"TorchServe did not answer properly: {error.message}", True)

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
        return ServerCheck(
            "warning",
            f"TorchServe answers, but its model list could not be read: {error.message}",
            True,
        )
    found = tuple(choices.values())
    choice = choices.get(model)
    if choice is None:
        others = ", ".join(choices) or "none"
        return ServerCheck(
            "error",
            f"Model {model!r} is not registered with TorchServe (registered: {others}). "
            "Register it in the server console, or pick another model in the sidebar.",
            True,
            found + (ModelChoice(model, "not registered"),),
            listed=True,
        )
    if choice.state == "ready":
        return ServerCheck(
            "ok",
            f"Connected to TorchServe at {inference.base_url}: {choice.label}.",
            True,
            found,
            listed=True,
        )
    if choice.state == "loading":
        message = (
            f"Model {model!r} is loading ({choice.workers}). Wait until its worker is READY "
            "(usually a few seconds), then press Check."
        )
    else:
        message = (
            f"Model {model!r} has no worker. Scale it to at least one worker in the server "
            "console, then press Check."
        )
    return ServerCheck("warning", message, True, found, listed=True)


def _check_without_management(inference: InferenceApi, model: str) -> ServerCheck:
    try:
        inference.models(model)
    except ModelNotFound:
        return ServerCheck(
            "error",
            f"Model {model!r} is not registered on {inference.base_url}. Type the name of a "
            "registered model in the sidebar.",
            True,
            (ModelChoice(model, "not registered"),),
        )
    except TsChatError as error:
        return ServerCheck(
            "warning",
            f"Model {model!r} is not ready: {error.message}",
            True,
            (ModelChoice(model, "unknown"),),
        )
    return ServerCheck(
        "ok",
        f"Connected to {inference.base_url}: model {model} answers.",
        True,
        (ModelChoice(model, "ready"),),
    )
