"""The answer in flight: streamed by a thread of its own, it outlives a script rerun and a page
reload, saves itself as it grows, and can be stopped, keeping the text received so far.

A :class:`PendingAnswer` sends the request and reads the stream in its own thread, whatever the
app's script is doing: a Streamlit rerun (any click) only interrupts the drawing, and the next
run draws the answer again from where it is. With a ``saver`` (the conversation store) the text
is saved every ``save_every_s`` while it streams and saved once more, with its figures, when it
ends: complete, stopped (:meth:`PendingAnswer.stop`) or broken off. :class:`LiveAnswers` lists
the answers streaming in this process, so a reloaded page finds the one it shows and follows it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from tschat.api.inference import StreamDelta, Timings, ToolCall, Usage, merge_tool_calls
from tschat.chat.conversation import (
    BROKEN,
    MAX_SAVED_TOKENS,
    STOPPED,
    AnswerDetails,
    AnswerFormat,
    AnswerStats,
    slim_token,
)
from tschat.chat.speed import SpeedMeter, SpeedReading
from tschat.errors import TsChatError

SAVE_EVERY_S = 1.0  # how often a streaming answer's text is saved

AnswerState = Literal["streaming", "complete", "stopped", "broken"]


class AnswerStream(Protocol):
    """What :class:`PendingAnswer` needs of ``tschat.api.inference.ChatStream``."""

    finish_reason: str | None
    usage: Usage | None
    timings: Timings | None

    def deltas(self) -> Iterator[StreamDelta]: ...

    def close(self) -> None: ...


class AnswerSaver(Protocol):
    """Where an answer is saved (``tschat.chat.store.ConversationStore``)."""

    def update_answer(self, answer_id: int, text: str) -> bool: ...

    def finish_answer(
        self,
        answer_id: int,
        text: str,
        *,
        state: Literal["complete", "stopped", "broken"] = "complete",
        stats: AnswerStats | None = None,
        details: AnswerDetails | None = None,
    ) -> bool: ...


@dataclass(frozen=True)
class AnswerView:
    """The answer at one moment, for drawing: text, state, live speed, error."""

    text: str
    state: AnswerState
    reading: SpeedReading
    error: str | None
    tokens: tuple[dict[str, Any], ...]
    format: AnswerFormat

    @property
    def finished(self) -> bool:
        """Whether nothing more will arrive."""
        return self.state != "streaming"


class PendingAnswer:
    """An answer being streamed, read by a thread of its own (see the module's docstring).

    Args:
        start: sends the request and returns the stream (called in the answer's thread).
        model: the model's name, kept in the figures.
        answer_format: ``tool_calls`` shows the calls the model asks for as the answer's text
            (JSON); ``json`` marks an answer made under a JSON schema.
        saver, answer_id: where to save it (None: not saved, e.g. a side-by-side pane).
        clock: a monotonic clock in seconds (tests pass their own).
    """

    def __init__(
        self,
        start: Callable[[], AnswerStream],
        *,
        model: str,
        answer_format: AnswerFormat = "text",
        saver: AnswerSaver | None = None,
        answer_id: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        save_every_s: float = SAVE_EVERY_S,
    ) -> None:
        if (saver is None) != (answer_id is None):
            raise ValueError("an answer is saved with both a saver and its id, or not at all")
        self.model = model
        self.format: AnswerFormat = answer_format
        self.answer_id = answer_id
        self.text = ""
        self.tokens: list[dict[str, Any]] = []
        self.tool_calls: list[ToolCall] = []
        self.done = False
        self.stopped = False
        self.error: str | None = None
        self.save_error: str | None = None
        self.stream: AnswerStream | None = None
        self._saver = saver
        self._start = start
        self._clock = clock
        self._save_every_s = save_every_s
        self._meter = SpeedMeter(clock())
        self._saved_at = clock()
        self._final: AnswerStats | None = None
        self._closing = False
        self._changed = threading.Condition()
        self._finishing = threading.Lock()
        self._listeners: list[Callable[[PendingAnswer], None]] = []
        self.thread = threading.Thread(target=self._read, name="tschat-answer", daemon=True)
        self.thread.start()

    # ------------------------------------------------------------------ reading

    @property
    def finished(self) -> bool:
        """Whether nothing more will arrive (complete, stopped or broken off)."""
        return self.done or self.stopped or self.error is not None

    @property
    def state(self) -> AnswerState:
        """How the answer stands now."""
        if self.stopped:
            return "stopped"
        if self.error is not None:
            return "broken"
        return "complete" if self.done else "streaming"

    def _read(self) -> None:
        stream: AnswerStream | None = None
        try:
            stream = self._start()
            with self._changed:
                self.stream = stream
                stopped_while_connecting = self.stopped
            if stopped_while_connecting:
                return
            for delta in stream.deltas():
                with self._changed:
                    if self.stopped:  # stop() closed the stream while we waited for this
                        return
                    self._absorb(delta)
                    self._changed.notify_all()
                self._save_progress()
            with self._changed:
                self.done = not self.stopped
        except Exception as error:  # noqa: BLE001 - reported to the user, never raised here
            with self._changed:
                if not self.stopped:
                    self.error = error.message if isinstance(error, TsChatError) else repr(error)
        finally:
            if stream is not None:
                stream.close()
            self._finish()

    def _absorb(self, delta: StreamDelta) -> None:
        # One token per entry when the server sent log-probabilities; else one per piece (the
        # handler sends a piece per token).
        count = len(delta.logprobs) or (1 if delta.text or delta.tool_calls else 0)
        self._meter.add(self._clock(), count)
        self.text += delta.text
        room = MAX_SAVED_TOKENS - len(self.tokens)
        self.tokens.extend(slim_token(entry) for entry in delta.logprobs[: max(room, 0)])
        merge_tool_calls(self.tool_calls, delta.tool_calls)

    def shown_text(self) -> str:
        """The text to show and save: the answer, or the tool calls as JSON."""
        if self.format != "tool_calls" or not self.tool_calls:
            return self.text
        calls = [{"name": c.name, "arguments": _arguments(c.arguments)} for c in self.tool_calls]
        data: dict[str, Any] = {"tool_calls": calls}
        if self.text.strip():
            data["content"] = self.text
        return json.dumps(data, ensure_ascii=False, indent=2)

    def _save_progress(self) -> None:
        if self._saver is None or self.answer_id is None:
            return
        now = self._clock()
        if now - self._saved_at < self._save_every_s:
            return
        self._saved_at = now
        with self._changed:
            text = self.shown_text()
        try:
            self._saver.update_answer(self.answer_id, text)
        except TsChatError as error:  # the final save tries again
            self.save_error = error.message

    # ------------------------------------------------------------------ ending

    def _finish(self) -> None:
        """Work out the figures and save the final answer, once (thread or stop(), first wins).

        The answer counts as finished (:attr:`stats` set, listeners called) only once saved, so
        a page that then loads the conversation finds it as it ended.
        """
        with self._finishing:
            if self._closing:
                return
            self._closing = True
            with self._changed:
                stream = self.stream
                if self.done and stream is not None:
                    stats = self._meter.stats(
                        finish_reason=stream.finish_reason,
                        model=self.model,
                        usage=stream.usage,
                        timings=stream.timings,
                    )
                else:
                    reason = STOPPED if self.stopped else BROKEN
                    stats = self._meter.stats(finish_reason=reason, model=self.model)
                text, state = self.shown_text(), self.state
                details = AnswerDetails(self.format, tuple(self.tokens))
            if self._saver is not None and self.answer_id is not None:
                final: Literal["complete", "stopped", "broken"] = (
                    "broken" if state == "streaming" else state
                )
                try:
                    self._saver.finish_answer(
                        self.answer_id, text, state=final, stats=stats, details=details
                    )
                    self.save_error = None
                except TsChatError as error:
                    self.save_error = error.message
            with self._changed:
                self._final = stats
                self._changed.notify_all()
                listeners = list(self._listeners)
        for listener in listeners:
            listener(self)

    def stop(self) -> None:
        """Stop the answer: keep (and save) the text received so far, close the HTTP stream."""
        with self._changed:
            if not self.finished:
                self.stopped = True
            stream = self.stream
            self._changed.notify_all()
        if stream is not None:
            stream.close()
        self._finish()

    def when_finished(self, listener: Callable[[PendingAnswer], None]) -> None:
        """Call ``listener(answer)`` once it has finished and been saved (now, if it has)."""
        with self._changed:
            if self._final is None:
                self._listeners.append(listener)
                return
        listener(self)

    def wait_saved(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the last save of an answer that has ended; whether
        it was made (:attr:`stats` set). Stop makes it at once; the end of a stream, in the
        answer's thread, just after :attr:`finished` turns true."""
        with self._changed:
            return self._changed.wait_for(lambda: self._final is not None, timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the reading thread to end."""
        self.thread.join(timeout)

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for something new (or the end)."""
        with self._changed:
            self._changed.wait(timeout)

    # ------------------------------------------------------------------ what to draw

    @property
    def stats(self) -> AnswerStats | None:
        """The figures kept under the answer, once it has finished."""
        return self._final

    def view(self, now: float | None = None) -> AnswerView:
        """The answer now: text, state, the live speed line's reading, error."""
        with self._changed:
            # Finished only once saved: a page that reloads the conversation then finds it.
            return AnswerView(
                text=self.shown_text(),
                state=self.state if self._final is not None else "streaming",
                reading=self._meter.reading(self._clock() if now is None else now),
                error=self.error,
                tokens=tuple(self.tokens),
                format=self.format,
            )


def _arguments(text: str) -> Any:
    """A tool call's arguments as JSON when they parse, else as the text the model wrote."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class LiveAnswers:
    """The answers streaming in this process, by the id they are saved under.

    A page that shows a conversation with a streaming answer looks it up here to follow it; an
    answer leaves the list once it has finished and been saved.
    """

    def __init__(self) -> None:
        self._answers: dict[int, PendingAnswer] = {}
        self._lock = threading.Lock()

    def add(self, answer: PendingAnswer) -> PendingAnswer:
        """List ``answer`` until it has finished."""
        if answer.answer_id is None:
            raise ValueError("only saved answers are listed")
        with self._lock:
            self._answers[answer.answer_id] = answer
        answer.when_finished(self._remove)
        return answer

    def _remove(self, answer: PendingAnswer) -> None:
        with self._lock:
            if answer.answer_id is not None and self._answers.get(answer.answer_id) is answer:
                del self._answers[answer.answer_id]

    def get(self, answer_id: int) -> PendingAnswer | None:
        """The answer saved as ``answer_id`` if it is streaming in this process."""
        with self._lock:
            return self._answers.get(answer_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._answers)
