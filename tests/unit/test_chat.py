"""The chat app's conversation logic: settings, history, answers in flight, export and import."""

from __future__ import annotations

import doctest
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tschat.chat.answer
import tschat.chat.conversation
import tschat.chat.export
import tschat.chat.sampling
import tschat.chat.status
from apps.chat_status import status_message
from tschat.api.inference import Timings, Usage
from tschat.api.management import ModelEntry, ModelStatus, WorkerStatus
from tschat.chat.answer import PendingAnswer
from tschat.chat.conversation import AnswerStats, Conversation, ConversationBook, Message
from tschat.chat.export import (
    MAX_IMPORT_BYTES,
    ConversationFileError,
    from_json,
    to_json,
    to_markdown,
)
from tschat.chat.sampling import KNOBS, SamplingSettings, parse_stop_sequences
from tschat.chat.status import check_server
from tschat.errors import (
    AuthError,
    KeyFileMissing,
    ModelNotFound,
    ServerError,
    ServerNotRunning,
    SettingsError,
)


def test_doctests() -> None:
    chat = tschat.chat
    for module in (chat.sampling, chat.conversation, chat.answer, chat.export, chat.status):
        assert doctest.testmod(module).failed == 0


# ---------------------------------------------------------------- sampling settings


@pytest.mark.parametrize("knob", KNOBS, ids=lambda knob: knob.name)
def test_every_default_lies_inside_its_slider_range(knob: Any) -> None:
    assert knob.low <= knob.default <= knob.high
    assert knob.step > 0
    # On the slider's grid, so the widget shows exactly the default.
    assert (
        abs(round((knob.default - knob.low) / knob.step) * knob.step + knob.low - knob.default)
        < 1e-9
    )


def test_default_settings_are_valid_and_sent_in_full() -> None:
    params = SamplingSettings().request_params()
    assert set(params) == {knob.name for knob in KNOBS}
    assert all(params[knob.name] == knob.default for knob in KNOBS)


def test_seed_and_stop_reach_the_request() -> None:
    params = SamplingSettings(max_tokens=3, seed=7, stop=("END", "\n\n")).request_params()
    assert params["max_tokens"] == 3
    assert params["seed"] == 7
    assert params["stop"] == ["END", "\n\n"]


@pytest.mark.parametrize(
    "values",
    [
        {"temperature": 2.5},
        {"top_p": -0.1},
        {"max_tokens": 0},
        {"temperature": float("nan")},
        {"top_k": True},
        {"seed": -1},
        {"stop": ("a", "b", "c", "d", "e")},
    ],
)
def test_settings_out_of_range_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(SettingsError):
        SamplingSettings(**values)


def test_stop_sequences_one_per_line_with_escapes() -> None:
    assert parse_stop_sequences("") == ()
    assert parse_stop_sequences("User:\n\\n\\n\n") == ("User:", "\n\n")
    assert parse_stop_sequences("tab\\there\nback\\\\slash") == ("tab\there", "back\\slash")
    with pytest.raises(SettingsError, match="At most 4"):
        parse_stop_sequences("1\n2\n3\n4\n5")


# ---------------------------------------------------------------- conversations


def sample_conversation() -> Conversation:
    conversation = Conversation("Trip", "You are terse.")
    conversation.add_question("Where is Paris?")
    conversation.add_answer(
        Message("assistant", "In **France**.", AnswerStats(120.5, 3, 20, 15.25, "stop", "smollm2"))
    )
    conversation.add_question("And <script>alert(1)</script>?")
    conversation.add_answer(
        Message(
            "assistant",
            "Partial",
            AnswerStats(None, 1, None, None, "stopped", "smollm2", True),
            stopped=True,
        )
    )
    return conversation


def test_every_turn_sends_the_system_prompt_and_the_whole_history() -> None:
    messages = sample_conversation().api_messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[0]["content"] == "You are terse."
    assert messages[2]["content"] == "In **France**."
    blank = Conversation("x", "  ")
    blank.add_question("hi")
    assert blank.api_messages() == [{"role": "user", "content": "hi"}]


def test_regenerate_drops_the_last_answer_only() -> None:
    conversation = sample_conversation()
    conversation.drop_last_answer()
    assert conversation.awaiting_answer
    assert conversation.messages[-1].content.startswith("And ")
    assert len(conversation.messages) == 3
    conversation.drop_last_answer()  # nothing more to drop: still awaiting the same question
    assert len(conversation.messages) == 3


def test_edit_replaces_the_last_question_and_its_answer() -> None:
    conversation = sample_conversation()
    conversation.replace_last_question("And Rome?")
    assert [m.content for m in conversation.messages] == [
        "Where is Paris?",
        "In **France**.",
        "And Rome?",
    ]
    assert conversation.awaiting_answer


def test_clear_keeps_name_and_system_prompt() -> None:
    conversation = sample_conversation()
    conversation.clear()
    assert conversation.messages == []
    assert (conversation.name, conversation.system_prompt) == ("Trip", "You are terse.")
    assert not conversation.can_regenerate()
    with pytest.raises(ValueError):
        conversation.drop_last_answer()
    with pytest.raises(ValueError):
        conversation.add_question("   ")


def test_book_names_are_unique_and_one_conversation_always_remains() -> None:
    book = ConversationBook()
    assert book.names() == ["Chat 1"]
    second = book.add()
    assert second.name == "Chat 2" and book.current is second
    imported = book.add(Conversation("Chat 1"))
    assert imported.name == "Chat 1 (2)"
    assert book.rename("  Holiday   plans ") == "Holiday plans"
    assert book.rename("Chat 2") == "Chat 2 (2)"  # taken: made unique
    assert book.rename("   ") == "Chat 2 (2)"  # blank: unchanged
    book.select("Chat 1")
    assert book.current.name == "Chat 1"
    for _ in range(4):
        book.remove_current()
    assert len(book.conversations) == 1
    assert book.current.messages == []


# ---------------------------------------------------------------- export and import


def test_markdown_export_reads_like_the_conversation() -> None:
    text = to_markdown(sample_conversation(), model="smollm2")
    assert text.startswith("# Trip\n")
    assert "**Model:** smollm2" in text
    assert "**System prompt:** You are terse." in text
    assert text.count("### You") == 2 and text.count("### Assistant") == 2
    assert "first token 120 ms · 3 tokens · 15.2 tokens/s · finish: stop" in text
    assert "*stopped before the end · ≈1 token · finish: stopped*" in text


def test_json_round_trip_keeps_everything() -> None:
    original = sample_conversation()
    now = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    text = to_json(
        original, model="smollm2", settings=SamplingSettings(seed=3, stop=("X",)), now=now
    )
    data = json.loads(text)
    assert data["format"] == "tschat-conversation" and data["version"] == 1
    assert data["exported_at"] == "2025-01-02T03:04:05+00:00"
    assert data["settings"]["seed"] == 3 and data["settings"]["stop"] == ["X"]
    loaded = from_json(text)
    assert loaded == original
    assert from_json(text.encode("utf-8")) == original


@settings(max_examples=60, deadline=None)
@given(
    name=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=30),
    system=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
    turns=st.lists(
        st.tuples(
            st.text(
                st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1
            ),
            st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
            st.booleans(),
        ),
        max_size=5,
    ),
)
def test_json_round_trip_of_any_text(name: str, system: str, turns: list[Any]) -> None:
    conversation = Conversation(" ".join(name.split()) or "Imported", system)
    for question, answer, stopped in turns:
        if not question.strip():
            continue
        conversation.add_question(question)
        conversation.add_answer(
            Message("assistant", answer, AnswerStats(finish_reason="stop"), stopped)
        )
    assert from_json(to_json(conversation)) == conversation


def test_openai_style_messages_are_accepted() -> None:
    listed = json.dumps(
        [
            {"role": "system", "content": "Be kind."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
    )
    conversation = from_json(listed, default_name="chat-export")
    assert conversation.name == "chat-export"
    assert conversation.system_prompt == "Be kind."
    assert [m.role for m in conversation.messages] == ["user", "assistant"]
    assert from_json(b"\xef\xbb\xbf" + listed.encode()).system_prompt == "Be kind."


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("42", "no JSON object"),
        ('{"name": "x"}', "no `messages` list"),
        ('{"format": "other", "messages": []}', "its format is 'other'"),
        ('{"version": 99, "messages": []}', "version 99"),
        ('{"name": 5, "messages": []}', "name must be text"),
        ('{"messages": ["hi"]}', "messages[0] must be an object"),
        ('{"messages": [{"role": "user", "content": 5}]}', "messages[0].content must be text"),
        ('{"messages": [{"role": "user", "content": "a\\u0000b"}]}', "NUL"),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}',
            'messages[1].role must be "user" or "assistant"',
        ),
        (
            '{"messages": [{"role": "user", "content": "a", "stats": {}}]}',
            "only answers have stats",
        ),
        (
            '{"messages": [{"role": "assistant", "content": "a", "stats": {"ttft_ms": "x"}}]}',
            "stats.ttft_ms must be a number",
        ),
        (
            '{"messages": [{"role": "assistant", "content": "a", "stopped": "yes"}]}',
            "stopped must be true or false",
        ),
    ],
)
def test_bad_files_are_refused_with_the_reason(content: str, reason: str) -> None:
    with pytest.raises(ConversationFileError) as caught:
        from_json(content)
    assert reason in caught.value.reason
    assert "Download JSON" in str(caught.value)  # the message says what would work


def test_bad_bytes_and_huge_files_are_refused() -> None:
    with pytest.raises(ConversationFileError, match="not UTF-8"):
        from_json(b"\xff\xfe{")
    with pytest.raises(ConversationFileError, match="larger than"):
        from_json(" " * (MAX_IMPORT_BYTES + 1))


# ---------------------------------------------------------------- answers in flight


class FakeStream:
    """A ChatStream stand-in: yields pieces, each after its gate opens (if gated)."""

    def __init__(
        self,
        pieces: list[str],
        *,
        gated: bool = False,
        fail_after: int | None = None,
        usage: Usage | None = None,
    ) -> None:
        self.pieces = pieces
        self.gates = [threading.Event() for _ in pieces]
        if not gated:
            for gate in self.gates:
                gate.set()
        self.fail_after = fail_after
        self.final_usage = usage
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.timings: Timings | None = None
        self.client_ttft_ms: float | None = None
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[str]:
        for index, piece in enumerate(self.pieces):
            if index == self.fail_after:
                raise ServerError("The answer broke off before it was complete.")
            while not self.gates[index].wait(0.01):
                if self.closed.is_set():
                    raise ServerError("closed")
            if self.client_ttft_ms is None:
                self.client_ttft_ms = 5.0
            yield piece
        self.finish_reason = "length"
        self.usage = self.final_usage
        self.timings = Timings(ttft_ms=42.0, tokens_per_second=12.5)

    def close(self) -> None:
        self.closed.set()


def collect(answer: PendingAnswer) -> str:
    return "".join(answer.deltas(poll_s=0.01))


def test_complete_answer_carries_the_server_figures() -> None:
    stream = FakeStream(["Hel", "lo", "!"], usage=Usage(9, 3, 12))
    conversation = Conversation("c")
    answer = PendingAnswer(lambda: stream, conversation, "smollm2")
    assert collect(answer) == "Hello!"
    answer.join(5)
    assert answer.done and not answer.stopped and answer.error is None
    assert stream.closed.is_set()
    message = answer.message()
    assert message is not None and message.content == "Hello!" and not message.stopped
    assert message.stats == AnswerStats(42.0, 3, 9, 12.5, "length", "smollm2")


def test_a_rerun_abandoning_the_drawing_loses_nothing() -> None:
    stream = FakeStream(["a", "b", "c", "d"], gated=True)
    answer = PendingAnswer(lambda: stream, Conversation("c"), "m")
    first_run = answer.deltas(poll_s=0.01)
    stream.gates[0].set()
    stream.gates[1].set()
    seen = next(first_run)
    while len(seen) < 2:
        seen += next(first_run)
    first_run.close()  # what Streamlit's rerun does to the generator it was drawing
    assert not stream.closed.is_set(), "the HTTP stream must stay open across a rerun"
    stream.gates[2].set()
    stream.gates[3].set()
    second_run = answer.deltas(poll_s=0.01)
    assert "".join(second_run) == "abcd"  # the text so far first, then the rest
    assert answer.done


def test_stop_keeps_the_partial_text_and_closes_the_stream() -> None:
    stream = FakeStream(["one ", "two ", "three"], gated=True)
    answer = PendingAnswer(lambda: stream, Conversation("c"), "m")
    stream.gates[0].set()
    assert answer.wait(0, 5) == "one "
    answer.stop()
    stream.gates[1].set()  # arrives after Stop: not kept
    answer.join(5)
    assert stream.closed.is_set()
    assert answer.stopped and not answer.done and answer.finished
    assert collect(answer) == "one "
    message = answer.message()
    assert message is not None and message.stopped and message.content == "one "
    assert message.stats is not None
    assert message.stats.finish_reason == "stopped" and message.stats.estimated
    assert message.stats.completion_tokens == 1


def test_stop_while_connecting_closes_the_stream_once_it_opens() -> None:
    opened = threading.Event()
    stream = FakeStream(["x"], gated=True)

    def start() -> FakeStream:
        opened.wait(5)
        return stream

    answer = PendingAnswer(start, Conversation("c"), "m")
    waits: list[float] = []
    drawing = answer.deltas(on_wait=lambda pending: waits.append(pending.waited_s), poll_s=0.01)
    answer.stop()
    opened.set()
    answer.join(5)
    assert stream.closed.is_set()
    assert list(drawing) == []
    assert answer.message() is None  # no text: nothing to store, the question can be retried


def test_waiting_calls_back_so_the_page_can_show_it() -> None:
    stream = FakeStream(["late"], gated=True)
    answer = PendingAnswer(lambda: stream, Conversation("c"), "m")
    waits: list[float] = []
    drawing = answer.deltas(on_wait=lambda pending: waits.append(pending.waited_s), poll_s=0.01)
    threading.Timer(0.1, stream.gates[0].set).start()
    assert "".join(drawing) == "late"
    assert len(waits) >= 3 and waits == sorted(waits)


def test_error_before_any_text_leaves_no_answer() -> None:
    def start() -> FakeStream:
        raise ModelNotFound("nope")

    answer = PendingAnswer(start, Conversation("c"), "nope")
    assert collect(answer) == ""
    assert answer.error is not None and "not registered" in answer.error
    assert answer.message() is None


def test_error_mid_stream_keeps_the_partial_text() -> None:
    stream = FakeStream(["par", "tial", "never"], fail_after=2)
    answer = PendingAnswer(lambda: stream, Conversation("c"), "m")
    assert collect(answer) == "partial"
    assert answer.error is not None and "broke off" in answer.error
    message = answer.message()
    assert message is not None and not message.stopped
    assert message.stats is not None and message.stats.finish_reason == "error"


def test_speed_of_a_stopped_answer_is_measured_here() -> None:
    # Clock readings: the request is sent at 0, the first piece arrives at 1, Stop comes at 5.
    clock = iter([0.0, 1.0, 5.0]).__next__
    stream = FakeStream(["a", "b", "c", "d"], gated=True)
    answer = PendingAnswer(lambda: stream, Conversation("c"), "m", clock=clock)
    for gate in stream.gates[:3]:
        gate.set()
    assert answer.wait(2, 5)
    while answer.pieces < 3:
        answer.wait(answer.pieces, 0.01)
    answer.stop()
    message = answer.message()
    assert message is not None and message.stats is not None
    assert message.stats.ttft_ms == 1000.0
    assert message.stats.tokens_per_second == pytest.approx(2 / 4)  # 2 pieces after the first


# ---------------------------------------------------------------- status line


class FakeInference:
    base_url = "http://127.0.0.1:1"

    def __init__(self, ping_error: Exception | None = None, models_error: Exception | None = None):
        self.ping_error = ping_error
        self.models_error = models_error

    def ping(self) -> str:
        if self.ping_error:
            raise self.ping_error
        return "Healthy"

    def models(self, model: str) -> dict[str, Any]:
        if self.models_error:
            raise self.models_error
        return {"data": [{"id": model}]}


def model_status(name: str, *states: str) -> ModelStatus:
    workers = tuple(WorkerStatus(str(i), i, s, 0, False, "") for i, s in enumerate(states))
    return ModelStatus(name, "1.0", f"{name}.mar", 4, 50, 1, 1, 300, 120, False, workers)


class FakeManagement:
    def __init__(self, *statuses: ModelStatus, error: Exception | None = None) -> None:
        self.statuses = {s.name: s for s in statuses}
        self.error = error

    def list_models(self) -> list[ModelEntry]:
        if self.error:
            raise self.error
        return [ModelEntry(name, f"{name}.mar") for name in self.statuses]

    def describe_model(self, name: str, version: str | None = None) -> ModelStatus:
        return self.statuses[name]


def test_status_when_torchserve_is_down() -> None:
    check = check_server(FakeInference(ServerNotRunning("http://127.0.0.1:1")), None, "m")
    assert check.level == "error" and not check.reachable and not check.can_chat
    assert "not reachable at http://127.0.0.1:1" in status_message(check)
    assert "make run" in status_message(check)


def test_status_when_there_is_no_key_file() -> None:
    check = check_server(FakeInference(KeyFileMissing("/x/key_file.json")), None, "m")
    assert check.level == "error" and not check.reachable
    assert "No key file at /x/key_file.json" in status_message(check)


def test_status_when_the_key_is_refused() -> None:
    check = check_server(FakeInference(AuthError()), FakeManagement(), "m")
    assert check.level == "error" and check.reachable
    assert "refused the API key" in status_message(check)


def test_status_of_a_ready_model_lists_every_model_with_its_state() -> None:
    management = FakeManagement(
        model_status("smollm2", "READY"), model_status("other", "LOADING"), model_status("idle")
    )
    check = check_server(FakeInference(), management, "smollm2")
    assert check.level == "ok" and check.can_chat and check.listed
    assert [c.label for c in check.models] == [
        "smollm2 · ready (1/1 worker)",
        "other · loading (0/1 worker: loading)",
        "idle · no worker",
    ]


def test_status_of_a_loading_model_says_to_wait() -> None:
    management = FakeManagement(model_status("smollm2", "LOADING", "LOADING"))
    check = check_server(FakeInference(), management, "smollm2")
    assert check.level == "warning"
    assert "is loading" in status_message(check) and "Wait" in status_message(check)


def test_status_of_a_model_without_worker_says_to_scale() -> None:
    check = check_server(FakeInference(), FakeManagement(model_status("smollm2")), "smollm2")
    assert check.level == "warning" and "Scale it" in status_message(check)


def test_status_of_a_missing_model_names_the_registered_ones() -> None:
    check = check_server(FakeInference(), FakeManagement(model_status("a", "READY")), "smollm2")
    assert check.level == "error" and check.reachable
    assert "'smollm2' is not registered" in status_message(
        check
    ) and "registered: a" in status_message(check)
    assert [c.name for c in check.models] == ["a", "smollm2"]


def test_status_when_the_model_list_cannot_be_read() -> None:
    check = check_server(FakeInference(), FakeManagement(error=AuthError()), "m")
    assert check.level == "warning" and check.can_chat  # questions may still work


def test_status_of_a_remote_server_without_management_access() -> None:
    remote = check_server(FakeInference(), None, "m")
    assert remote.level == "ok" and not remote.listed
    missing = check_server(FakeInference(models_error=ModelNotFound("m")), None, "m")
    assert missing.level == "error" and "not registered" in status_message(missing)
