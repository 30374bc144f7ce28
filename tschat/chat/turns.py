"""A turn of the chat: fit the visible branch into the context window, start the answer, save it.

* :class:`TokenCounter` asks the server's tokenize route what a conversation costs, once per
  text (its answers are kept), and plans the request with :func:`tschat.chat.context.plan_context`.
* :func:`answer_question` starts the answer to a question of a saved conversation: the request
  carries the visible branch up to that question (the oldest turns left out when they do not fit),
  the answer is saved as it streams and listed in :class:`tschat.chat.answer.LiveAnswers`.
* :func:`settle_orphans` marks as broken off the answers left streaming by a process that is gone.
* :func:`ask_panes` sends one question to several models or settings at once (side by side).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tschat.api.inference import ChatMessage, ChatStream, TokenCount
from tschat.chat.answer import LiveAnswers, PendingAnswer
from tschat.chat.context import ContextPlan, plan_context
from tschat.chat.request import AnswerOptions
from tschat.chat.store import ConversationStore, SavedConversation
from tschat.errors import BadRequest, TsChatError

MAX_CACHED_COUNTS = 4096  # texts whose token counts a counter keeps
ORPHAN_AFTER_S = 10.0  # an answer streaming with no writer in this process, unchanged this long


class ChatApi(Protocol):
    """The part of ``tschat.api.inference.InferenceClient`` a turn uses."""

    def tokenize(
        self,
        model: str,
        *,
        messages: Sequence[ChatMessage] | None = None,
        content: str | None = None,
    ) -> TokenCount: ...

    def chat_stream(
        self, model: str, messages: Sequence[ChatMessage], **params: Any
    ) -> ChatStream: ...


class TokenCounter:
    """Token counts of one model's conversations, from its tokenize route, kept per text.

    A plan needs each message's share: the text's own tokens are counted once per text, and the
    tokens the chat template adds (one count of the whole conversation) are spread over the
    messages, so that leaving a turn out also leaves out its share of them. Safe to share between
    threads (the app keeps one per server and model).
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self._counts: OrderedDict[str, TokenCount] = OrderedDict()
        self._lock = threading.Lock()

    def _count(self, key: str, ask: Callable[[], TokenCount]) -> TokenCount:
        with self._lock:
            if key in self._counts:
                self._counts.move_to_end(key)
                return self._counts[key]
        count = ask()
        with self._lock:
            self._counts[key] = count
            while len(self._counts) > MAX_CACHED_COUNTS:
                self._counts.popitem(last=False)
        return count

    def plan(
        self, api: ChatApi, messages: Sequence[ChatMessage], *, reserved: int, trim: bool
    ) -> ContextPlan:
        """What to send of ``messages`` so that they and ``reserved`` tokens fit the window.

        Raises the client's errors (e.g. a server without the tokenize route).
        """
        own = [self._text(api, m["content"]).count for m in messages]
        try:
            whole = self._count(
                "chat:" + _digest(json.dumps(list(messages))),
                lambda: api.tokenize(self.model, messages=list(messages)),
            )
            framing, window = whole.count - sum(own), whole.n_ctx
        except BadRequest:  # longer than the server counts in one go: measure the template
            framing, window = self._framing(api, len(messages))
        framing = max(framing, 0)
        share = framing // len(messages) if messages else 0
        return plan_context(
            messages,
            [n + share for n in own],
            window=window,
            reserved=reserved,
            trim=trim,
            overhead=framing - share * len(messages),
        )

    def _text(self, api: ChatApi, text: str) -> TokenCount:
        return self._count("text:" + _digest(text), lambda: api.tokenize(self.model, content=text))

    def _framing(self, api: ChatApi, messages: int) -> tuple[int, int]:
        """The template's tokens around ``messages`` messages, from two small chats: what it
        adds once (a default system prompt, the answer's header) and what it adds per message."""
        x = self._text(api, "x").count
        chats: list[list[ChatMessage]] = [
            [{"role": "user", "content": "x"}],
            [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "x"},
                {"role": "user", "content": "x"},
            ],
        ]
        one, three = (
            self._count(
                "chat:" + _digest(json.dumps(chat)),
                lambda chat=chat: api.tokenize(self.model, messages=chat),  # type: ignore[misc]
            )
            for chat in chats
        )
        per_message = (three.count - one.count - 2 * x) // 2
        once = one.count - x - per_message
        return once + per_message * messages, one.n_ctx


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Turn:
    """A question's turn: its plan (what was sent, what was left out) and the answer started.

    ``answer`` is None when nothing could be sent (``plan.error`` says why). ``plan`` is None when
    the server could not count tokens: then everything was sent, and ``count_error`` says why.
    """

    plan: ContextPlan | None
    answer: PendingAnswer | None
    count_error: str | None = None


def answer_question(
    store: ConversationStore,
    live: LiveAnswers,
    api: ChatApi,
    counter: TokenCounter,
    conversation: SavedConversation,
    question_id: int,
    options: AnswerOptions,
    *,
    trim: bool = True,
) -> Turn:
    """Start the answer to ``question_id`` (a question of the visible branch of ``conversation``).

    The request carries the visible branch up to the question, fitted to the context window; the
    answer is saved under the question (a sibling of any earlier answer) as it streams.
    """
    messages = conversation.api_messages(until=question_id)
    plan: ContextPlan | None = None
    count_error = None
    try:
        plan = counter.plan(api, messages, reserved=options.sampling.max_tokens, trim=trim)
    except TsChatError as error:  # the server cannot count: send all, it refuses what is too long
        count_error = error.message
    if plan is not None and not plan.fits:
        return Turn(plan, None)
    sent = list(plan.messages) if plan is not None else messages
    answer_id = store.start_answer(question_id)
    answer = PendingAnswer(
        _request(api, counter.model, sent, options.request_params()),
        model=counter.model,
        answer_format=options.answer_format,
        saver=store,
        answer_id=answer_id,
    )
    live.add(answer)
    return Turn(plan, answer, count_error)


def settle_orphans(
    store: ConversationStore, live: LiveAnswers, conversation: SavedConversation, now: float
) -> bool:
    """Finish, as broken off, the answers of the visible branch that are saved as streaming but
    streamed by no one in this process (it restarted, or the thread died); True if any was.

    An answer younger than ORPHAN_AFTER_S is left alone: it may be one that was just started.
    """
    settled = False
    for message in conversation.messages:
        if (
            message.state == "streaming"
            and live.get(message.id) is None
            and now - message.updated_at > ORPHAN_AFTER_S
        ):
            store.finish_answer(message.id, message.content, state="broken")
            settled = True
    return settled


@dataclass(frozen=True)
class Pane:
    """One side-by-side pane: the model it asks and its request options."""

    model: str
    options: AnswerOptions


def ask_panes(
    api: ChatApi, question: str, system_prompt: str, panes: Sequence[Pane]
) -> list[PendingAnswer]:
    """Send ``question`` to every pane at once; the answers stream concurrently, unsaved."""
    messages: list[ChatMessage] = []
    if system_prompt.strip():
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": question})
    return [
        PendingAnswer(
            _request(api, pane.model, messages, pane.options.request_params()),
            model=pane.model,
            answer_format=pane.options.answer_format,
        )
        for pane in panes
    ]


def _request(
    api: ChatApi, model: str, messages: Sequence[ChatMessage], params: dict[str, Any]
) -> Callable[[], ChatStream]:
    """What an answer's thread calls to send its request."""
    return lambda: api.chat_stream(model, messages, **params)
