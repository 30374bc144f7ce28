"""A chat turn: request options (JSON schema, tools, probabilities), fitting the visible branch
into the context window, starting the saved answer, orphaned answers, and panes side by side."""

from __future__ import annotations

import doctest
import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import tschat.chat.request
import tschat.chat.turns
from tschat.api.inference import ChatMessage, StreamDelta, TokenCount
from tschat.chat.answer import LiveAnswers
from tschat.chat.request import (
    SCHEMA_EXAMPLES,
    TOOL_EXAMPLES,
    AnswerOptions,
    answer_options,
    example_text,
    schema_problem,
)
from tschat.chat.sampling import SamplingSettings
from tschat.chat.store import ConversationStore
from tschat.chat.turns import (
    ORPHAN_AFTER_S,
    Pane,
    TokenCounter,
    answer_question,
    ask_panes,
    settle_orphans,
)
from tschat.errors import BadRequest, ServerError, SettingsError


def test_doctests() -> None:
    assert doctest.testmod(tschat.chat.request).failed == 0
    assert doctest.testmod(tschat.chat.turns).failed == 0


# ---------------------------------------------------------------- request options


@pytest.mark.parametrize("name", SCHEMA_EXAMPLES)
def test_every_example_schema_is_a_valid_request(name: str) -> None:
    options = answer_options(
        SamplingSettings(), mode="json_schema", schema_text=example_text(SCHEMA_EXAMPLES[name])
    )
    assert options.answer_format == "json"
    sent = options.request_params()["response_format"]
    assert sent == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": SCHEMA_EXAMPLES[name]},
    }


def test_tools_and_probabilities_reach_the_request() -> None:
    tools = TOOL_EXAMPLES["Weather and time"]
    options = answer_options(
        SamplingSettings(max_tokens=7),
        mode="tools",
        tools_text=example_text(tools),
        tool_choice="required",
        top_logprobs=4,
    )
    params = options.request_params()
    assert params["tools"] == tools and params["tool_choice"] == "required"
    assert (params["logprobs"], params["top_logprobs"], params["max_tokens"]) == (True, 4, 7)
    assert options.answer_format == "tool_calls"
    assert "logprobs" not in AnswerOptions().request_params()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"mode": "json_schema", "schema_text": ""}, "is empty"),
        ({"mode": "json_schema", "schema_text": "{"}, "not valid JSON"),
        ({"mode": "json_schema", "schema_text": '{"type": "nope"}'}, "not a valid schema"),
        ({"mode": "tools", "tools_text": "[]"}, "must be a JSON list"),
        ({"mode": "tools", "tools_text": '[{"type": "web"}]'}, "'web' tools are not supported"),
        (
            {"mode": "tools", "tools_text": example_text(TOOL_EXAMPLES["Weather and time"] * 2)},
            "Two tools are named",
        ),
        ({"mode": "tools", "tools_text": "[{}]", "tool_choice": "maybe"}, "tool choice"),
        ({"top_logprobs": 21}, "between 0 and 20"),
        ({"mode": "poetry"}, "answer format"),
    ],
)
def test_mistakes_are_sentences_before_anything_is_sent(
    fields: dict[str, Any], reason: str
) -> None:
    with pytest.raises(SettingsError, match=reason):
        answer_options(SamplingSettings(), **fields)


def test_an_answer_is_checked_against_its_schema() -> None:
    schema = SCHEMA_EXAMPLES["A person"]
    assert schema_problem('{"name": "Ada", "age": 36, "city": "London"}', schema) is None
    assert "not complete JSON" in str(schema_problem('{"name": "Ada"', schema))
    assert "'city' is a required property" in str(schema_problem('{"name": "A", "age": 3}', schema))


# ---------------------------------------------------------------- a server that counts and answers


class FakeStream:
    def __init__(self, pieces: Sequence[str], gate: threading.Event | None = None) -> None:
        self.pieces = pieces
        self.gate = gate
        self.finish_reason: str | None = None
        self.usage = None
        self.timings = None

    def deltas(self) -> Iterator[StreamDelta]:
        for piece in self.pieces:
            if self.gate is not None:
                self.gate.wait(5)
            yield StreamDelta(piece)
        self.finish_reason = "stop"

    def close(self) -> None:
        pass


class FakeServer:
    """Counts a token per word (and 3 per message for the template); answers "fine"."""

    def __init__(self, n_ctx: int = 100, *, counts: bool = True) -> None:
        self.n_ctx = n_ctx
        self.counts = counts
        self.max_chars = 10_000
        self.tokenized: list[Any] = []
        self.sent: list[tuple[str, list[ChatMessage], dict[str, Any]]] = []
        self.gate: threading.Event | None = None

    def tokenize(
        self,
        model: str,
        *,
        messages: Sequence[ChatMessage] | None = None,
        content: str | None = None,
    ) -> TokenCount:
        if not self.counts:
            raise ServerError("no tokenize route here")
        if messages is not None and sum(len(m["content"]) for m in messages) > self.max_chars:
            raise BadRequest("The request holds more characters of text than fit.")
        self.tokenized.append(messages if messages is not None else content)
        if messages is not None:
            count = sum(len(m["content"].split()) + 3 for m in messages)
        else:
            count = len((content or "").split())
        return TokenCount(count, self.n_ctx)

    def chat_stream(self, model: str, messages: Sequence[ChatMessage], **params: Any) -> Any:
        self.sent.append((model, list(messages), params))
        return FakeStream(["fi", "ne"], self.gate)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ConversationStore]:
    opened = ConversationStore(tmp_path / "chats.sqlite3")
    yield opened
    opened.close()


def words(n: int) -> str:
    return " ".join(["word"] * n)


def test_counts_are_asked_once_per_text_and_add_up_to_the_whole() -> None:
    server = FakeServer()
    counter = TokenCounter("m")
    messages: list[ChatMessage] = [
        {"role": "system", "content": words(4)},
        {"role": "user", "content": words(10)},
    ]
    plan = counter.plan(server, messages, reserved=20, trim=True)
    assert plan.used_tokens == 4 + 10 + 3 * 2 and plan.window == 100
    assert len(server.tokenized) == 3  # the whole chat, then each text
    counter.plan(server, messages, reserved=20, trim=True)
    assert len(server.tokenized) == 3  # nothing asked again
    messages.append({"role": "assistant", "content": words(4)})  # same text as the system's
    counter.plan(server, messages, reserved=20, trim=True)
    assert len(server.tokenized) == 4  # only the new whole chat


def test_a_chat_too_long_to_count_at_once_is_counted_by_parts() -> None:
    server = FakeServer(n_ctx=100)
    server.max_chars = 50
    messages: list[ChatMessage] = [
        {"role": "user", "content": words(20)},
        {"role": "assistant", "content": words(20)},
        {"role": "user", "content": "last"},
    ]
    plan = TokenCounter("m").plan(server, messages, reserved=20, trim=True)
    # 3 tokens of template per message, as the whole count would have said.
    assert plan.used_tokens == 20 + 20 + 1 + 3 * 3


def long_conversation(store: ConversationStore, turns: int) -> int:
    conversation = store.create("Long", "Be brief.")
    for turn in range(turns):
        question = store.append_question(conversation, f"question {turn} " + words(10))
        answer = store.start_answer(question)
        store.finish_answer(answer, f"answer {turn} " + words(10))
    return conversation


def test_the_oldest_turns_are_left_out_with_a_note(store: ConversationStore) -> None:
    conversation = long_conversation(store, 5)
    question = store.append_question(conversation, "last question")
    server, live = FakeServer(n_ctx=100), LiveAnswers()
    turn = answer_question(
        store,
        live,
        server,
        TokenCounter("m"),
        store.load(conversation),
        question,
        AnswerOptions(SamplingSettings(max_tokens=20)),
    )
    assert turn.plan is not None and turn.answer is not None
    assert turn.plan.note == "3 earlier turns left out to fit the 100-token window."
    _, sent, params = server.sent[0]
    assert [m["content"].split(" ")[:2] for m in sent] == [
        ["Be", "brief."],
        ["question", "3"],
        ["answer", "3"],
        ["question", "4"],
        ["answer", "4"],
        ["last", "question"],
    ]
    assert params["max_tokens"] == 20
    turn.answer.join(5)
    assert store.load(conversation).messages[-1].content == "fine"


def test_without_trimming_a_conversation_too_long_is_refused_with_a_sentence(
    store: ConversationStore,
) -> None:
    conversation = long_conversation(store, 5)
    question = store.append_question(conversation, "last question")
    server = FakeServer(n_ctx=100)
    turn = answer_question(
        store,
        LiveAnswers(),
        server,
        TokenCounter("m"),
        store.load(conversation),
        question,
        AnswerOptions(SamplingSettings(max_tokens=20)),
        trim=False,
    )
    assert turn.answer is None and turn.plan is not None
    assert "Start a new conversation" in str(turn.plan.error)
    assert server.sent == []
    assert store.load(conversation).awaiting_answer  # nothing saved in its place


def test_the_request_carries_the_visible_branch(store: ConversationStore) -> None:
    conversation = store.create()
    first = store.append_question(conversation, "Name a colour.")
    store.finish_answer(store.start_answer(first), "Red.")
    second = store.append_question(conversation, "Another?")
    store.finish_answer(store.start_answer(second), "Blue.")
    edited = store.edit_question(first, "Name a fruit.")  # a sibling: the branch starts anew
    server, live = FakeServer(n_ctx=1000), LiveAnswers()
    turn = answer_question(
        store, live, server, TokenCounter("m"), store.load(conversation), edited, AnswerOptions()
    )
    assert turn.answer is not None
    assert server.sent[0][1] == [{"role": "user", "content": "Name a fruit."}]
    turn.answer.join(5)
    # Regenerating the first version's answer sends that version's branch, and adds a sibling.
    store.step(edited, -1)
    red = store.load(conversation).messages[1]
    turn = answer_question(
        store, live, server, TokenCounter("m"), store.load(conversation), first, AnswerOptions()
    )
    assert turn.answer is not None
    turn.answer.join(5)
    assert server.sent[1][1] == [{"role": "user", "content": "Name a colour."}]
    shown = store.load(conversation).messages
    assert [m.content for m in shown] == ["Name a colour.", "fine"]
    assert shown[1].siblings == (red.id, shown[1].id) and shown[0].position == "1/2"


def test_a_server_that_cannot_count_gets_everything(store: ConversationStore) -> None:
    conversation = store.create()
    question = store.append_question(conversation, "Hi")
    server = FakeServer(counts=False)
    turn = answer_question(
        store,
        LiveAnswers(),
        server,
        TokenCounter("m"),
        store.load(conversation),
        question,
        AnswerOptions(),
    )
    assert turn.plan is None and turn.answer is not None
    assert turn.count_error == "no tokenize route here"
    assert server.sent[0][1] == [{"role": "user", "content": "Hi"}]
    turn.answer.join(5)


def test_answers_streamed_by_no_one_are_finished_as_broken(store: ConversationStore) -> None:
    conversation = store.create()
    question = store.append_question(conversation, "Hi")
    answer = store.start_answer(question)
    store.update_answer(answer, "Hel")
    live = LiveAnswers()
    saved = store.load(conversation)
    written = saved.messages[-1].updated_at
    # Just started (a page may be between saving it and listing it): left alone.
    assert not settle_orphans(store, live, saved, written + 1)
    assert settle_orphans(store, live, saved, written + ORPHAN_AFTER_S + 1)
    shown = store.load(conversation).messages[-1]
    assert (shown.content, shown.state) == ("Hel", "broken")


def test_an_answer_streaming_here_is_not_an_orphan(store: ConversationStore) -> None:
    conversation = store.create()
    question = store.append_question(conversation, "Hi")
    server, live = FakeServer(n_ctx=1000), LiveAnswers()
    server.gate = threading.Event()
    turn = answer_question(
        store, live, server, TokenCounter("m"), store.load(conversation), question, AnswerOptions()
    )
    assert turn.answer is not None
    saved = store.load(conversation)
    assert not settle_orphans(store, live, saved, saved.messages[-1].updated_at + 3600)
    server.gate.set()
    turn.answer.join(5)
    assert store.load(conversation).messages[-1].state == "complete"


def test_panes_ask_at_once_each_with_its_own_settings() -> None:
    server = FakeServer()
    server.gate = threading.Event()
    panes = [
        Pane("a", AnswerOptions(SamplingSettings(temperature=0.0))),
        Pane("b", AnswerOptions(SamplingSettings(temperature=1.5))),
    ]
    answers = ask_panes(server, "Hi?", "Be brief.", panes)
    for answer in answers:
        while not answer.stream:
            answer.wait(0.01)
    # Both requests are out before either answer has a token.
    assert sorted((model, params["temperature"]) for model, _, params in server.sent) == [
        ("a", 0.0),
        ("b", 1.5),
    ]
    assert all(sent == server.sent[0][1] for _, sent, _ in server.sent)
    assert json.dumps(server.sent[0][1]) == json.dumps(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    )
    server.gate.set()
    for answer in answers:
        answer.join(5)
        assert answer.view().text == "fine" and answer.stats is not None
