"""The chat's logic: sampling settings, answers in flight (saved as they stream, stopped, broken
off), and the server status; the store has its own tests (test_conversation_store.py)."""

from __future__ import annotations

import doctest
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import apps.chat_view
import tschat.chat.answer
import tschat.chat.conversation
import tschat.chat.export
import tschat.chat.sampling
import tschat.chat.status
from apps.chat_status import status_message
from tschat.api.inference import StreamDelta, Timings, Usage
from tschat.api.management import ModelEntry, ModelStatus, WorkerStatus
from tschat.chat.answer import LiveAnswers, PendingAnswer
from tschat.chat.conversation import AnswerDetails, AnswerStats
from tschat.chat.sampling import KNOBS, SamplingSettings, parse_stop_sequences
from tschat.chat.status import NOT_TORCHSERVE, check_server, server_address
from tschat.chat.store import ConversationStore
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
    assert doctest.testmod(apps.chat_view).failed == 0


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


# ---------------------------------------------------------------- answers in flight


class FakeStream:
    """A ChatStream stand-in: yields deltas, each after its gate opens (if gated)."""

    def __init__(
        self,
        pieces: list[str | StreamDelta],
        *,
        gated: bool = False,
        fail_after: int | None = None,
        usage: Usage | None = None,
    ) -> None:
        self.pieces = [p if isinstance(p, StreamDelta) else StreamDelta(p) for p in pieces]
        self.gates = [threading.Event() for _ in pieces]
        if not gated:
            for gate in self.gates:
                gate.set()
        self.fail_after = fail_after
        self.final_usage = usage
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.timings: Timings | None = None
        self.closed = threading.Event()

    def deltas(self) -> Iterator[StreamDelta]:
        for index, piece in enumerate(self.pieces):
            if index == self.fail_after:
                raise ServerError("The answer broke off before it was complete.")
            while not self.gates[index].wait(0.01):
                if self.closed.is_set():
                    raise ServerError("closed")
            yield piece
        self.finish_reason = "length"
        self.usage = self.final_usage
        self.timings = Timings(ttft_ms=42.0, tokens_per_second=12.5)

    def close(self) -> None:
        self.closed.set()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ConversationStore]:
    opened = ConversationStore(tmp_path / "chats.sqlite3")
    yield opened
    opened.close()


def streaming_answer(store: ConversationStore) -> tuple[int, int]:
    """A conversation with a question and an answer just started: (conversation, answer) ids."""
    conversation = store.create()
    question = store.append_question(conversation, "Hi?")
    return conversation, store.start_answer(question)


def finished(answer: PendingAnswer) -> PendingAnswer:
    answer.join(5)
    assert answer.view().finished
    return answer


def test_complete_answer_is_saved_with_the_server_figures(store: ConversationStore) -> None:
    conversation, answer_id = streaming_answer(store)
    stream = FakeStream(["Hel", "lo", "!"], usage=Usage(9, 3, 12))
    answer = finished(
        PendingAnswer(lambda: stream, model="smollm2", saver=store, answer_id=answer_id)
    )
    assert answer.done and not answer.stopped and answer.error is None
    assert stream.closed.is_set()
    saved = store.load(conversation).messages[-1]
    assert (saved.content, saved.state) == ("Hello!", "complete")
    assert saved.stats == AnswerStats(42.0, 3, 9, 12.5, "length", "smollm2")
    assert answer.stats == saved.stats


def test_the_text_is_saved_while_it_streams(store: ConversationStore) -> None:
    conversation, answer_id = streaming_answer(store)
    stream = FakeStream(["one ", "two ", "three"], gated=True)
    now = [0.0]
    answer = PendingAnswer(
        lambda: stream,
        model="m",
        saver=store,
        answer_id=answer_id,
        clock=lambda: now[0],
        save_every_s=1.0,
    )
    stream.gates[0].set()
    while answer.view().text != "one ":
        answer.wait(0.01)
    assert store.load(conversation).messages[-1].content == ""  # saved at most once a second
    now[0] = 2.0
    stream.gates[1].set()
    while store.load(conversation).messages[-1].content != "one two ":
        answer.wait(0.01)
    assert store.load(conversation).messages[-1].state == "streaming"
    stream.gates[2].set()
    finished(answer)
    assert store.load(conversation).messages[-1].content == "one two three"


def test_stop_keeps_and_saves_the_partial_text(store: ConversationStore) -> None:
    conversation, answer_id = streaming_answer(store)
    stream = FakeStream(["one ", "two ", "three"], gated=True)
    answer = PendingAnswer(lambda: stream, model="m", saver=store, answer_id=answer_id)
    stream.gates[0].set()
    while answer.view().text != "one ":
        answer.wait(0.01)
    answer.stop()
    # Saved by the time stop() returns, so the rerun that the click causes shows it.
    saved = store.load(conversation).messages[-1]
    assert (saved.content, saved.state) == ("one ", "stopped")
    assert saved.stats is not None
    assert saved.stats.finish_reason == "stopped" and saved.stats.estimated
    assert saved.stats.completion_tokens == 1
    stream.gates[1].set()  # arrives after Stop: not kept
    answer.join(5)
    assert stream.closed.is_set()
    assert answer.stopped and not answer.done and answer.view().state == "stopped"
    assert store.load(conversation).messages[-1].content == "one "


def test_stop_while_connecting_saves_nothing(store: ConversationStore) -> None:
    conversation, answer_id = streaming_answer(store)
    opened = threading.Event()
    stream = FakeStream(["x"], gated=True)

    def start() -> FakeStream:
        opened.wait(5)
        return stream

    answer = PendingAnswer(start, model="m", saver=store, answer_id=answer_id)
    answer.stop()
    opened.set()
    answer.join(5)
    assert stream.closed.is_set()
    # No text: the empty answer is gone and the question can be answered again.
    assert store.load(conversation).awaiting_answer


def test_an_error_before_any_text_leaves_no_answer(store: ConversationStore) -> None:
    conversation, answer_id = streaming_answer(store)

    def start() -> FakeStream:
        raise ModelNotFound("nope")

    answer = finished(PendingAnswer(start, model="nope", saver=store, answer_id=answer_id))
    assert answer.error is not None and "not registered" in answer.error
    assert answer.view().state == "broken"
    assert store.load(conversation).awaiting_answer


def test_an_error_mid_stream_keeps_the_partial_text_marked_broken(
    store: ConversationStore,
) -> None:
    conversation, answer_id = streaming_answer(store)
    stream = FakeStream(["par", "tial", "never"], fail_after=2)
    answer = finished(PendingAnswer(lambda: stream, model="m", saver=store, answer_id=answer_id))
    assert answer.error is not None and "broke off" in answer.error
    saved = store.load(conversation).messages[-1]
    assert (saved.content, saved.state) == ("partial", "broken")
    assert saved.stats is not None and saved.stats.finish_reason == "error"


class SlowSaver:
    """A store whose final save waits until ``release`` is set."""

    def __init__(self, store: ConversationStore) -> None:
        self.store = store
        self.release = threading.Event()

    def update_answer(self, answer_id: int, text: str) -> None:
        self.store.update_answer(answer_id, text)

    def finish_answer(self, answer_id: int, text: str, **kwargs: Any) -> bool:
        self.release.wait(5)
        return self.store.finish_answer(answer_id, text, **kwargs)


def test_an_ended_answer_is_waited_for_until_its_last_save(store: ConversationStore) -> None:
    _, answer_id = streaming_answer(store)
    saver = SlowSaver(store)
    stream = FakeStream(["par", "tial"], fail_after=1)
    answer = PendingAnswer(lambda: stream, model="m", saver=saver, answer_id=answer_id)
    deadline = time.monotonic() + 5
    while not answer.finished and time.monotonic() < deadline:
        time.sleep(0.01)
    assert answer.finished and answer.error is not None
    assert not answer.wait_saved(0.05) and answer.stats is None  # still saving
    saver.release.set()
    assert answer.wait_saved(5) and answer.stats is not None


class StuckStream(FakeStream):
    """A stream whose read goes on waiting after close (as a socket read may)."""

    def deltas(self) -> Iterator[StreamDelta]:
        yield StreamDelta("par")
        threading.Event().wait(1)
        raise ServerError("closed")


def test_stop_saves_at_once_though_the_read_has_not_returned(store: ConversationStore) -> None:
    _, answer_id = streaming_answer(store)
    stream = StuckStream([])
    answer = PendingAnswer(lambda: stream, model="m", saver=store, answer_id=answer_id)
    deadline = time.monotonic() + 5
    while not answer.text and time.monotonic() < deadline:
        time.sleep(0.01)
    answer.stop()
    assert answer.thread.is_alive()  # the read has not returned
    assert answer.wait_saved(0) and answer.stats is not None
    answer.join(5)


def test_live_speed_reads_the_prompt_then_counts_tokens() -> None:
    now = [0.0]
    stream = FakeStream(["a", "b", "c", "d"], gated=True)
    answer = PendingAnswer(lambda: stream, model="m", clock=lambda: now[0])
    now[0] = 0.5
    assert answer.view().reading.label() == "reading the prompt… 0.5 s"
    for second, gate in enumerate(stream.gates[:3], start=1):
        now[0] = float(second)
        gate.set()
        while answer.view().reading.tokens < second:
            answer.wait(0.01)
    reading = answer.view().reading
    assert (reading.phase, reading.tokens, reading.ttft_ms) == ("generating", 3, 1000.0)
    assert reading.tokens_per_second == pytest.approx(1.0)  # 2 tokens in the 2 s after the first
    answer.stop()
    assert answer.stats is not None and answer.stats.tokens_per_second == pytest.approx(1.0)


def test_token_probabilities_and_tool_calls_are_kept(store: ConversationStore) -> None:
    conversation, answer_id = streaming_answer(store)
    entry = {"token": "{", "logprob": -0.5, "bytes": [123], "top_logprobs": []}
    call = {"index": 0, "id": "c1", "function": {"name": "get_time", "arguments": '{"city": '}}
    more = {"index": 0, "function": {"arguments": '"Oslo"}'}}
    stream = FakeStream(
        [StreamDelta("", (entry,), (call,)), StreamDelta("", (entry, entry), (more,))]
    )
    answer = finished(
        PendingAnswer(
            lambda: stream,
            model="m",
            answer_format="tool_calls",
            saver=store,
            answer_id=answer_id,
        )
    )
    saved = store.load(conversation).messages[-1]
    assert saved.content == (
        '{\n  "tool_calls": [\n    {\n      "name": "get_time",\n      "arguments": {\n'
        '        "city": "Oslo"\n      }\n    }\n  ]\n}'
    )
    assert saved.details.format == "tool_calls"
    assert saved.details.tokens == ({"token": "{", "logprob": -0.5, "top_logprobs": []},) * 3
    assert answer.view().reading.tokens == 3  # one per log-probability entry


def test_live_answers_list_an_answer_until_it_is_saved(store: ConversationStore) -> None:
    _, answer_id = streaming_answer(store)
    stream = FakeStream(["x"], gated=True)
    live = LiveAnswers()
    answer = live.add(PendingAnswer(lambda: stream, model="m", saver=store, answer_id=answer_id))
    assert live.get(answer_id) is answer and len(live) == 1
    stream.gates[0].set()
    finished(answer)
    assert live.get(answer_id) is None and len(live) == 0
    with pytest.raises(ValueError, match="only saved answers"):
        live.add(PendingAnswer(lambda: FakeStream([]), model="m"))


def test_details_of_an_answer_survive_only_when_well_formed() -> None:
    assert AnswerDetails.from_json(None) == AnswerDetails()
    assert AnswerDetails("json").to_json() == {"format": "json"}
    assert AnswerDetails().to_json() is None


# ---------------------------------------------------------------- remote address


@pytest.mark.parametrize(
    ("typed", "address"),
    [
        ("http://host:8080", "http://host:8080"),
        ("https://gpu.example.org", "https://gpu.example.org"),
        ("  http://10.0.0.2:8080/  ", "http://10.0.0.2:8080"),
        ("http://[fe80::1]:8080", "http://[fe80::1]:8080"),
    ],
)
def test_a_remote_address_is_a_scheme_host_and_port(typed: str, address: str) -> None:
    assert server_address(typed) == address


@pytest.mark.parametrize(
    ("typed", "reason"),
    [
        ("http://host:8080/predictions/smollm2", "has a path"),
        ("http://host:8080/?x=1", "has a query or fragment"),
        ("http://host:8080#top", "has a query or fragment"),
        ("http://user:pw@host:8080", "user name or password"),
        ("ftp://host", "is not an address"),
        ("host:8080", "is not an address"),
        ("http://host:99999", "is not an address"),
        ("http://ho st:80", "is not an address"),
        ("http://host\udc80:80", "is not an address"),
    ],
)
def test_anything_more_than_an_address_is_refused_with_the_reason(typed: str, reason: str) -> None:
    with pytest.raises(SettingsError, match=reason) as caught:
        server_address(typed)
    assert caught.value.message.isascii()  # quoted as plain text, whatever was typed


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


def test_answers_that_are_not_torchserves_become_a_sentence() -> None:
    class Strange(FakeInference):
        def ping(self) -> str:
            raise TypeError("'str' object has no attribute 'get'")

    check = check_server(Strange(), None, "m")
    assert check.state == "bad_answer" and check.detail == NOT_TORCHSERVE
    broken_list = FakeManagement(model_status("m", "READY"))
    broken_list.list_models = lambda: [ModelEntry(1, 2)] + None  # type: ignore[method-assign,operator]
    check = check_server(FakeInference(), broken_list, "m")
    assert check.state == "list_unreadable" and check.detail == NOT_TORCHSERVE
    assert check.can_chat


def test_status_of_a_remote_server_without_management_access() -> None:
    remote = check_server(FakeInference(), None, "m")
    assert remote.level == "ok" and not remote.listed
    missing = check_server(FakeInference(models_error=ModelNotFound("m")), None, "m")
    assert missing.level == "error" and "not registered" in status_message(missing)
