"""The answer in flight: streamed by a thread of its own, it outlives a script rerun and can
be stopped, keeping the text received so far."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from tschat.api.inference import Timings, Usage
from tschat.chat.conversation import AnswerStats, Conversation, Message
from tschat.errors import (
    TsChatError,
)

STOPPED = "stopped"  # finish reason of an answer the user stopped
BROKEN = "error"  # finish reason of an answer that broke off


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
