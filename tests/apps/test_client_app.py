"""The chat client (client_app.py) run by AppTest against the session's real TorchServe.

Questions are typed into the chat input and buttons are clicked as a person would; the page,
the saved conversation and (where it matters) the request that went out are checked. An answer
streams in a thread of its own while the page redraws it, so a test runs the page again until the
answer has ended (``settle``). Answers are kept short (a few tokens, temperature 0 where the text
is compared).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import pytest
import streamlit.testing.v1.app_test as app_test_module
from streamlit.runtime.memory_media_file_storage import MemoryFile, MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from tschat.api.inference import InferenceClient
from tschat.api.keys import Keys
from tschat.chat.answer import LiveAnswers, PendingAnswer
from tschat.chat.request import SCHEMA_EXAMPLES
from tschat.chat.store import ConversationStore, SavedConversation
from tschat.ops import process
from tschat.ops.serving import ServingRegistry
from tschat.settings import REPO_ROOT, Settings

if TYPE_CHECKING:
    from conftest import Helpers, LocalServer, TorchServeServer

pytestmark = pytest.mark.integration

APP = str(REPO_ROOT / "client_app.py")
RUN_TIMEOUT_S = 180  # one run of the page on a busy 2-core machine
ANSWER_TIMEOUT_S = 300  # a whole (short) answer
GREEDY = {"temperature": 0.0, "max_tokens": 12}
LONG_STORY = "Write a long story about a dragon and a knight."


# ---------------------------------------------------------------- helpers


@pytest.fixture
def chat_env(monkeypatch: pytest.MonkeyPatch, torchserve_server: TorchServeServer) -> Settings:
    for name, value in torchserve_server.settings.as_env().items():
        monkeypatch.setenv(name, value)
    return torchserve_server.settings


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every chat request the app sends: {"model", "messages", **params}."""
    requests: list[dict[str, Any]] = []
    original = InferenceClient.chat_stream

    def spy(self: InferenceClient, model: str, messages: Any, **params: Any) -> Any:
        requests.append({"model": model, "messages": list(messages), **params})
        return original(self, model, messages, **params)

    monkeypatch.setattr(InferenceClient, "chat_stream", spy)
    return requests


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, MemoryFile]:
    """The files behind the app's download buttons, by file name."""
    files: dict[str, MemoryFile] = {}

    class RecordingStorage(MemoryMediaFileStorage):
        def load_and_get_id(
            self, path_or_data: Any, mimetype: str, kind: Any, filename: str | None = None
        ) -> str:
            file_id = super().load_and_get_id(path_or_data, mimetype, kind, filename)
            if filename:
                files[filename] = self._files_by_id[file_id]
            return file_id

    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", RecordingStorage)
    return files


def open_app(conversation: int | None = None) -> AppTest:
    """A new session of the app (as a new tab or a reload), at ``?c=conversation`` if given."""
    at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
    if conversation is not None:
        at.query_params["c"] = str(conversation)
    at.run()
    assert not at.exception, at.exception
    return at


def configure(at: AppTest, *, seed: int | None = None, stop: str = "", **knobs: float) -> None:
    for name, value in knobs.items():
        at.slider(key=f"w_{name}").set_value(value)
    at.number_input(key="w_seed").set_value(seed)
    at.text_area(key="w_stop_sequences").set_value(stop)


def streaming(at: AppTest) -> bool:
    return any(button.key in ("w_stop", "w_stop_panes") for button in at.button)


def settle(at: AppTest, timeout: float = ANSWER_TIMEOUT_S) -> list[str]:
    """Run the page again until no answer streams (as its redraws do); the live lines seen."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while streaming(at):
        lines += [c.value for c in at.caption if c.value.startswith(("reading", "generating"))]
        assert time.monotonic() < deadline, f"the answer did not end; last lines {lines[-3:]}"
        time.sleep(0.2)
        at.run()
        assert not at.exception, at.exception
    return lines


def ask(at: AppTest, question: str) -> None:
    at.chat_input(key="w_question").set_value(question).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    settle(at)
    assert not at.error, [e.value for e in at.error]


def click(at: AppTest, key: str) -> None:
    at.button(key=key).click().run()
    assert not at.exception, at.exception
    settle(at)


def store(settings: Settings) -> ConversationStore:
    return ConversationStore.in_run_dir(settings.run_dir)


def shown(at: AppTest, settings: Settings) -> SavedConversation:
    """The conversation on the page, as saved."""
    conversation = at.session_state["chat_shown"]
    assert conversation is not None, "no conversation is shown"
    return store(settings).load(conversation)


def answers(at: AppTest, settings: Settings) -> list[str]:
    return [m.content for m in shown(at, settings).messages if m.role == "assistant"]


def captions(at: AppTest) -> list[str]:
    return [c.value for message in at.chat_message for c in message.caption]


def errors(at: AppTest) -> str:
    return " ".join(e.value for e in at.error)


def status_text(at: AppTest) -> str:
    return " ".join(e.value for e in [*at.success, *at.warning, *at.error])


def last_answer_id(at: AppTest, settings: Settings) -> int:
    return [m.id for m in shown(at, settings).messages if m.role == "assistant"][-1]


# ---------------------------------------------------------------- conversation


def test_second_answer_depends_on_the_first(chat_env: Settings, sent: list[dict[str, Any]]) -> None:
    at = open_app()
    assert "Connected to TorchServe" in status_text(at)
    configure(at, seed=1, **GREEDY)
    ask(at, "My name is Zork. Please remember it.")
    ask(at, "What is my name?")

    history = shown(at, chat_env).messages
    assert [m.role for m in history] == ["user", "assistant", "user", "assistant"]
    assert "Zork" in history[3].content
    # The second request carried the whole first exchange, and the server counted it.
    assert [m["content"] for m in sent[1]["messages"]] == [m.content for m in history[:3]]
    first, second = history[1].stats, history[3].stats
    assert first is not None and second is not None
    assert second.prompt_tokens is not None and first.prompt_tokens is not None
    assert second.prompt_tokens > first.prompt_tokens + (first.completion_tokens or 0)

    # Under each answer: time to first token, tokens, speed and finish reason.
    figures = [c for c in captions(at) if "tokens/s" in c]
    assert len(figures) == 2
    assert all("first token" in c and "12 tokens" in c and "finish: length" in c for c in figures)

    # The same question in a new chat does not know the name.
    click(at, "w_new_conversation")
    assert at.session_state["chat_shown"] is None and not at.chat_message
    ask(at, "What is my name?")
    assert "Zork" not in answers(at, chat_env)[0]
    assert len(sent[2]["messages"]) == 1


def test_sampling_settings_reach_the_request(
    chat_env: Settings, sent: list[dict[str, Any]]
) -> None:
    at = open_app()
    configure(at, seed=4321, temperature=1.3, top_p=0.9, top_k=20, min_p=0.1, max_tokens=3)
    at.slider(key="w_repeat_penalty").set_value(1.3)
    at.text_area(key="w_system").set_value("You are a pirate.")
    ask(at, "Tell me a fun fact.")

    request = sent[0]
    assert request["model"] == "smollm2"
    assert request["messages"][0] == {"role": "system", "content": "You are a pirate."}
    for name, value in {
        "temperature": 1.3,
        "top_p": 0.9,
        "top_k": 20,
        "min_p": 0.1,
        "max_tokens": 3,
        "repeat_penalty": 1.3,
        "seed": 4321,
    }.items():
        assert request[name] == pytest.approx(value), name
    # max_tokens=3 gives exactly three tokens.
    stats = shown(at, chat_env).messages[-1].stats
    assert stats is not None
    assert (stats.completion_tokens, stats.finish_reason) == (3, "length")

    # The same seed and history give the same answer again, as a second version beside it.
    first = answers(at, chat_env)[-1]
    click(at, f"w_regenerate_{last_answer_id(at, chat_env)}")
    again = shown(at, chat_env).messages
    assert len(again) == 2 and again[1].position == "2/2"
    assert again[1].content == first
    assert sent[1]["seed"] == 4321 and sent[1]["messages"] == sent[0]["messages"]


def test_stop_sequence_ends_the_answer_early(
    chat_env: Settings, sent: list[dict[str, Any]]
) -> None:
    at = open_app()
    configure(at, seed=1, **GREEDY)
    ask(at, "My name is Zork. What is my name?")
    full = answers(at, chat_env)[-1]
    words = full.split()
    assert len(words) >= 3, full
    cut = words[2]  # a word from the middle of the greedy answer
    at.text_area(key="w_stop_sequences").set_value(f"{cut}\nNEVER-SEEN")
    click(at, f"w_regenerate_{last_answer_id(at, chat_env)}")
    assert sent[1]["stop"] == [cut, "NEVER-SEEN"]
    shorter = answers(at, chat_env)[-1]
    assert cut not in shorter and full.startswith(shorter.rstrip())
    stats = shown(at, chat_env).messages[-1].stats
    assert stats is not None and stats.finish_reason == "stop"


def test_editing_and_regenerating_make_branches_that_can_be_read(
    chat_env: Settings, sent: list[dict[str, Any]]
) -> None:
    at = open_app()
    configure(at, seed=7, temperature=0.0, max_tokens=4)
    ask(at, "Name a colour.")
    ask(at, "And another one?")
    colour = shown(at, chat_env)
    first_question = colour.messages[0]

    # Editing the first question: a second version, answered on its own branch.
    click(at, f"w_edit_{first_question.id}")
    assert at.text_area(key="w_edit").value == "Name a colour."
    at.text_area(key="w_edit").set_value("Name a fruit.")
    click(at, "w_resend")
    fruit = shown(at, chat_env)
    assert [m.content for m in fruit.messages][:1] == ["Name a fruit."]
    assert len(fruit.messages) == 2 and fruit.messages[1].content
    assert fruit.messages[0].position == "2/2"
    assert sent[-1]["messages"] == [{"role": "user", "content": "Name a fruit."}]
    assert at.button(key=f"w_prev_{fruit.messages[0].id}").label == "◀"
    assert "2/2" in [md.value for m in at.chat_message for md in m.markdown]

    # ◀ shows the first version again, with everything that followed it.
    click(at, f"w_prev_{fruit.messages[0].id}")
    back = shown(at, chat_env)
    assert [m.content for m in back.messages] == [m.content for m in colour.messages]
    assert back.messages[0].position == "1/2"
    rendered = [md.value for m in at.chat_message for md in m.markdown]
    assert "Name a colour." in rendered and "1/2" in rendered and "Name a fruit." not in rendered

    # Regenerating the first answer: a sibling; the request carried only the branch above it.
    click(at, f"w_regenerate_{back.messages[1].id}")
    assert sent[-1]["messages"] == [{"role": "user", "content": "Name a colour."}]
    regenerated = shown(at, chat_env)
    assert len(regenerated.messages) == 2 and regenerated.messages[1].position == "2/2"
    click(at, f"w_prev_{regenerated.messages[1].id}")
    assert [m.content for m in shown(at, chat_env).messages] == [m.content for m in colour.messages]


@pytest.mark.parametrize("looks", [1, 2])
def test_an_answer_that_ends_while_the_page_is_drawn_leaves_it_usable(
    chat_env: Settings, monkeypatch: pytest.MonkeyPatch, looks: int
) -> None:
    """The page looks up the streaming answer ``looks`` times, then it ends mid-run.

    Whenever it ends, the page must not stay locked for an answer that no longer streams: no
    Stop button to press, the chat input disabled and nothing left to redraw it.
    """
    original = LiveAnswers.get
    seen: dict[int, int] = {}

    def ends_after_looks(self: LiveAnswers, answer_id: int) -> PendingAnswer | None:
        answer = original(self, answer_id)
        if answer is not None:
            seen[answer_id] = seen.get(answer_id, 0) + 1
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while seen.get(answer_id) == looks and original(self, answer_id) is not None:
            assert time.monotonic() < deadline, "the answer did not end"
            time.sleep(0.05)
        return answer

    monkeypatch.setattr(LiveAnswers, "get", ends_after_looks)
    at = open_app()
    configure(at, temperature=0.0, max_tokens=4)
    ask(at, "Name a colour.")
    answer = shown(at, chat_env).messages[-1]
    assert answer.role == "assistant" and answer.state != "streaming"
    assert at.chat_input(key="w_question").placeholder == "Ask something"
    assert not at.button(key=f"w_regenerate_{answer.id}").disabled


def test_model_output_is_shown_with_html_disabled(chat_env: Settings) -> None:
    at = open_app()
    configure(at, seed=1, temperature=0.0, max_tokens=2)
    question = "Repeat: <img src=x onerror=alert(1)> <script>alert(2)</script>"
    ask(at, question)
    rendered = [md for message in at.chat_message for md in message.markdown]
    assert rendered[0].value == question
    assert rendered and all(not md.proto.allow_html for md in rendered)


def test_live_speed_then_the_figures_stay(chat_env: Settings) -> None:
    at = open_app()
    configure(at, seed=3, temperature=0.0, max_tokens=60)
    at.chat_input(key="w_question").set_value(LONG_STORY).run()
    assert streaming(at)
    lines = settle(at)
    # First the prompt is read, then tokens/s updates as tokens arrive.
    assert lines and lines[0].startswith("reading the prompt…"), lines[:3]
    generating = [line for line in lines if line.startswith("generating")]
    assert any("tokens/s" in line for line in generating), lines
    counts = [int(line.split(" · ")[1].split()[0]) for line in generating]
    assert counts == sorted(counts) and counts[-1] > counts[0], counts
    # After the answer: its figures, kept under it (and saved with it).
    stats = shown(at, chat_env).messages[-1].stats
    assert stats is not None and stats.tokens_per_second and stats.ttft_ms
    assert stats.summary() in captions(at)[-1]
    reloaded = open_app(at.session_state["chat_shown"])
    assert stats.summary() in captions(reloaded)[-1]


# ---------------------------------------------------------------- saved conversations


def test_conversations_are_saved_listed_searched_renamed_and_deleted(chat_env: Settings) -> None:
    at = open_app()
    configure(at, seed=5, **GREEDY)
    ask(at, "Which planet is the reddest?")
    conversation = at.session_state["chat_shown"]
    assert at.query_params["c"] == str(conversation)
    saved = shown(at, chat_env)
    assert saved.title == "Which planet is the reddest?"  # named after its first question

    # A reload (a new session at the same address) shows it again, answer and figures included.
    again = open_app(conversation)
    assert [md.value for m in again.chat_message for md in m.markdown][:2] == [
        m.content for m in saved.messages
    ]
    assert again.button(key=f"w_open_{conversation}").label == saved.title

    # Listed in the sidebar; the search looks at every message.
    again.text_input(key="w_search").set_value("REDDEST").run()
    assert f"w_open_{conversation}" in {b.key for b in again.sidebar.button}
    again.text_input(key="w_search").set_value("no such words anywhere").run()
    assert f"w_open_{conversation}" not in {b.key for b in again.sidebar.button}
    assert "No conversation matches." in [c.value for c in again.sidebar.caption]
    again.text_input(key="w_search").set_value("").run()

    again.text_input(key="w_rename").set_value("  Mars   question ").run()
    assert store(chat_env).load(conversation).title == "Mars question"
    assert again.button(key=f"w_open_{conversation}").label == "Mars question"

    # Another conversation, then back to the first from the list.
    click(again, "w_new_conversation")
    ask(again, "Hello")
    other = again.session_state["chat_shown"]
    assert other != conversation
    click(again, f"w_open_{conversation}")
    assert again.session_state["chat_shown"] == conversation
    assert again.query_params["c"] == str(conversation)

    click(again, "w_delete_conversation")
    assert again.session_state["chat_shown"] is None and not again.chat_message
    assert all(s.id != conversation for s in store(chat_env).conversations())
    gone = open_app(conversation)  # an old link to it
    assert "no longer exists" in errors(gone)


def test_export_and_import_round_trip(chat_env: Settings, downloads: dict[str, MemoryFile]) -> None:
    at = open_app()
    configure(at, seed=3, temperature=0.0, max_tokens=5)
    at.text_area(key="w_system").set_value("Answer briefly.")
    ask(at, "What is 2 + 2?")
    click(at, f"w_regenerate_{last_answer_id(at, chat_env)}")  # a branch, exported too
    at.text_input(key="w_rename").set_value("Maths").run()
    original = shown(at, chat_env)
    assert original.title == "Maths"

    exported = downloads["Maths.json"].content
    markdown = downloads["Maths.md"].content.decode()
    assert markdown.startswith("# Maths\n") and "What is 2 + 2?" in markdown
    assert original.messages[1].content in markdown
    data = json.loads(exported)
    assert data["name"] == "Maths" and data["model"] == "smollm2" and data["version"] == 2
    assert data["settings"]["seed"] == 3
    assert len(data["messages"]) == 3  # the question and both versions of the answer

    at.file_uploader(key="w_import_0").upload("Maths.json", exported, "application/json").run()
    assert not at.exception and not at.error
    loaded = shown(at, chat_env)
    assert loaded.id != original.id and loaded.title == "Maths"
    assert loaded.system_prompt == "Answer briefly."
    assert [(m.content, m.position, m.stats) for m in loaded.messages] == [
        (m.content, m.position, m.stats) for m in original.messages
    ]
    assert at.text_area(key="w_system").value == "Answer briefly."
    assert [md.value for m in at.chat_message for md in m.markdown][:2] == [
        m.content for m in original.messages
    ]

    # A file that is not a conversation is refused with a sentence, and nothing changes.
    at.file_uploader(key="w_import_1").upload("bad.json", b'{"messages": 3}', "application/json")
    at.run()
    assert "cannot be loaded as a conversation" in errors(at)
    assert at.session_state["chat_shown"] == loaded.id


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (
            '{"messages": [{"role": "user", "content": "bad \\udc80 text"}]}',
            "messages[0].content contains a lone surrogate (U+DC80 at character 4)",
        ),
        (
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
            '"content": "a", "stats": {"completion_tokens": 1e308}}]}',
            "messages[1].stats.completion_tokens must be between 0 and 10,000,000; got 1e+308.",
        ),
        (
            '{"name": "\\ud83d", "messages": []}',
            "name contains a lone surrogate",
        ),
    ],
)
def test_an_import_with_text_that_cannot_be_shown_or_numbers_out_of_range_is_refused(
    chat_env: Settings, content: str, reason: str
) -> None:
    before = len(store(chat_env).conversations(limit=10_000))
    at = open_app()
    at.file_uploader(key="w_import_0").upload("odd.json", content.encode(), "application/json")
    at.run()
    assert not at.exception, at.exception
    assert reason in errors(at)
    assert at.session_state["chat_shown"] is None
    assert len(store(chat_env).conversations(limit=10_000)) == before


# ---------------------------------------------------------------- context window


def long_conversation(settings: Settings, turns: int = 12) -> int:
    """A saved conversation of about 300 tokens a turn: longer than the 2,048-token window."""
    saved = store(settings)
    conversation = saved.create("Long one")
    for turn in range(turns):
        question = saved.append_question(conversation, f"Tell me fact number {turn}.")
        answer = saved.start_answer(question)
        saved.finish_answer(answer, f"Fact {turn}: " + "the quick brown fox jumps. " * 50)
    return conversation


def test_a_long_conversation_is_trimmed_with_a_note_and_still_answered(
    chat_env: Settings, sent: list[dict[str, Any]]
) -> None:
    conversation = long_conversation(chat_env)
    at = open_app(conversation)
    meter = [c.value for c in at.caption if c.value.startswith("Context:")]
    assert len(meter) == 1 and "of 2,048 tokens" in meter[0], meter
    used = int(meter[0].split()[1].replace(",", ""))
    assert used > 2048 and "the next request leaves out the" in meter[0]
    configure(at, seed=1, temperature=0.0, max_tokens=16)
    ask(at, "What was fact number 11 about?")

    request = sent[0]["messages"]
    assert request[-1]["content"] == "What was fact number 11 about?"
    assert 2 < len(request) < 2 * 12 + 1
    left_out = (2 * 12 + 1 - len(request)) // 2
    note = f"{left_out} earlier turns left out to fit the 2,048-token window."
    assert any(note in c for c in captions(at)), captions(at)
    answer = shown(at, chat_env).messages[-1]
    assert answer.state == "complete" and answer.content
    assert answer.stats is not None and answer.stats.prompt_tokens is not None
    assert answer.stats.prompt_tokens + 16 <= 2048


def test_without_trimming_a_long_conversation_gets_a_clear_message(
    chat_env: Settings, sent: list[dict[str, Any]]
) -> None:
    conversation = long_conversation(chat_env)
    at = open_app(conversation)
    at.toggle(key="w_trim").set_value(False).run()
    at.chat_input(key="w_question").set_value("And then?").run()
    assert not at.exception, at.exception
    assert "This conversation takes" in errors(at) and "Start a new conversation" in errors(at)
    assert sent == []  # no request the server would refuse
    assert shown(at, chat_env).awaiting_answer and at.button(key="w_retry")


# ---------------------------------------------------------------- structured answers


def test_json_schema_mode_answers_json_valid_against_the_schema(
    chat_env: Settings, sent: list[dict[str, Any]]
) -> None:
    at = open_app()
    configure(at, seed=2, temperature=0.0, max_tokens=120)
    at.radio(key="w_mode").set_value("json_schema").run()
    at.selectbox(key="w_schema_example").set_value("A person").run()
    schema = json.loads(at.text_area(key="w_schema").value)
    assert schema == SCHEMA_EXAMPLES["A person"]
    ask(at, "Describe a person who lives in Paris.")
    assert sent[0]["response_format"]["json_schema"]["schema"] == schema
    shown_json = [element.value for message in at.chat_message for element in message.json]
    assert len(shown_json) == 1, "the answer is shown as JSON"
    jsonschema.validate(json.loads(shown_json[0]), schema)
    saved = shown(at, chat_env).messages[-1]
    assert saved.details.format == "json"
    jsonschema.validate(json.loads(saved.content), schema)

    # A schema that is not one is refused with a sentence, and plain text is asked for.
    at.text_area(key="w_schema").set_value('{"type": 12}').run()
    assert "The JSON schema is not a valid schema" in errors(at)


def test_tool_definitions_can_be_tried(chat_env: Settings, sent: list[dict[str, Any]]) -> None:
    at = open_app()
    configure(at, seed=2, temperature=0.0, max_tokens=80)
    at.radio(key="w_mode").set_value("tools").run()
    at.selectbox(key="w_tool_choice").set_value("required").run()
    ask(at, "What is the weather in Oslo?")
    assert sent[0]["tool_choice"] == "required" and len(sent[0]["tools"]) == 2
    shown_json = [element.value for message in at.chat_message for element in message.json]
    calls = json.loads(shown_json[0])["tool_calls"]
    assert calls and calls[0]["name"] in ("get_weather", "get_time")
    assert isinstance(calls[0]["arguments"], dict) and "city" in calls[0]["arguments"]
    assert any("tool calls" in c for c in captions(at))


def test_token_probabilities_are_shown_with_their_alternatives(
    chat_env: Settings, sent: list[dict[str, Any]]
) -> None:
    at = open_app()
    configure(at, seed=2, temperature=0.0, max_tokens=8)
    at.toggle(key="w_probabilities").set_value(True).run()
    at.slider(key="w_top_logprobs").set_value(3).run()
    ask(at, "Name a colour.")
    assert sent[0]["logprobs"] is True and sent[0]["top_logprobs"] == 3
    strips = [h.proto.body for h in at.get("html")]
    assert len(strips) == 1 and strips[0].count('class="tschat-token"') == 8
    assert strips[0].count("alternatives: ") == 8
    saved = shown(at, chat_env).messages[-1]
    assert len(saved.details.tokens) == 8
    assert all(len(token["top_logprobs"]) == 3 for token in saved.details.tokens)
    # Turned off, the view goes away; the probabilities stay saved with the answer.
    at.toggle(key="w_probabilities").set_value(False).run()
    assert not at.get("html")


# ---------------------------------------------------------------- side by side


def test_side_by_side_sends_one_question_to_each_pane_with_its_settings(
    chat_env: Settings, sent: list[dict[str, Any]]
) -> None:
    at = open_app()
    at.segmented_control(key="w_view").set_value("Side by side").run()
    at.selectbox(key="w_pane_count").set_value(3).run()
    for pane, temperature in enumerate((0.0, 0.5, 1.0)):
        at.slider(key=f"w_pane{pane}_temperature").set_value(temperature)
        at.slider(key=f"w_pane{pane}_max_tokens").set_value(6)
    at.chat_input(key="w_pane_question").set_value("Name an animal.").run()
    assert not at.exception, at.exception
    settle(at)
    assert sorted(request["temperature"] for request in sent) == [0.0, 0.5, 1.0]
    assert all(r["messages"] == [{"role": "user", "content": "Name an animal."}] for r in sent)
    figures = [c.value for c in at.caption if "first token" in c.value]
    assert len(figures) == 3 and all("tokens/s" in f for f in figures), figures
    assert at.session_state["chat_shown"] is None  # side by side saves nothing


# ---------------------------------------------------------------- status


def test_status_when_torchserve_is_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, helpers: Helpers
) -> None:
    ports = helpers.free_ports(5)
    down = Settings(
        run_dir=tmp_path,
        inference_port=ports[0],
        management_port=ports[1],
        metrics_port=ports[2],
        grpc_inference_port=ports[3],
        grpc_management_port=ports[4],
    )
    for name, value in down.as_env().items():
        monkeypatch.setenv(name, value)

    # Never started here: no key file.
    at = open_app()
    assert "No key file at" in status_text(at) and "make run" in status_text(at)
    assert at.chat_input(key="w_question").disabled

    # A key file left behind, but nothing listens on the port.
    down.key_file.write_text(
        json.dumps({"inference": {"key": "k"}, "management": {"key": "m"}, "API": {"key": "a"}})
    )
    at.run()
    text = status_text(at)
    assert f"not reachable at http://127.0.0.1:{ports[0]}" in text
    assert "Start it from the server console or with `make run`" in text
    assert at.chat_input(key="w_question").disabled


def test_status_when_the_model_is_missing(
    monkeypatch: pytest.MonkeyPatch, chat_env: Settings
) -> None:
    monkeypatch.setenv("TSCHAT_MODEL_NAME", "no-such-model")
    at = open_app()
    text = status_text(at)
    assert "'no-such-model' is not registered" in text and "registered: smollm2" in text
    assert "Register it in the server console" in text
    picker = at.selectbox(key="w_model")
    assert picker.value == "no-such-model"
    assert set(picker.options) == {
        "smollm2 · ready (1/1 worker)",
        "no-such-model · not registered",
    }
    # Picking the registered model makes the chat ready.
    picker.set_value("smollm2").run()
    at.run()  # the status line is drawn before the picker: the next run shows the new model
    assert "Connected to TorchServe" in status_text(at)
    assert not at.chat_input(key="w_question").disabled


def test_expired_key_is_refreshed_without_the_user(
    chat_env: Settings, torchserve_server: TorchServeServer
) -> None:
    key_file = torchserve_server.settings.key_file
    data = json.loads(key_file.read_text())
    old_key = data["inference"]["key"]
    data["inference"]["expiration time"] = "2000-01-01T00:00:00Z"
    key_file.write_text(json.dumps(data))

    at = open_app()
    assert "Connected to TorchServe" in status_text(at)
    refreshed = Keys.from_file(key_file)
    assert refreshed.inference and refreshed.inference != old_key
    assert refreshed.inference_expires and refreshed.inference_expires.year > 2000
    configure(at, max_tokens=2)
    ask(at, "Hello")
    assert answers(at, chat_env) and answers(at, chat_env)[0]


def test_remote_server_with_typed_keys(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    torchserve_server: TorchServeServer,
) -> None:
    # Local settings point nowhere: only the typed address and keys can work.
    monkeypatch.setenv("TSCHAT_RUN_DIR", str(tmp_path))
    keys = torchserve_server.keys.current()
    served = torchserve_server.settings
    at = open_app()
    at.text_input(key="w_remote_url").set_value(served.inference_url)
    at.text_input(key="w_remote_key").set_value(keys.inference or "")
    at.run()
    assert f"Connected to {served.inference_url}: model smollm2 answers." in status_text(at)

    at.text_input(key="w_remote_management_url").set_value(served.management_url)
    at.text_input(key="w_remote_management_key").set_value(keys.management or "")
    at.run()
    assert "smollm2 · ready" in status_text(at)

    at.text_input(key="w_remote_key").set_value("wrong-key").run()
    assert "refused the API key" in status_text(at)

    at.text_input(key="w_remote_url").set_value("ftp://nowhere").run()
    assert "is not an address like http://host:8080" in errors(at)


def test_a_remote_address_with_a_path_is_refused_and_the_sidebar_stays(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TSCHAT_RUN_DIR", str(tmp_path))
    at = open_app()
    at.text_input(key="w_remote_url").set_value("http://127.0.0.1:8080/predictions/x").run()
    assert not at.exception, at.exception
    assert "has a path: give only the scheme, host and port" in errors(at)
    assert "Fix the remote server address in the sidebar" in errors(at)
    assert at.text_input(key="w_remote_url").value  # still there to be fixed
    assert at.chat_input(key="w_question").disabled


class HtmlEverywhere(BaseHTTPRequestHandler):
    """A web server where TorchServe was expected: 200 and a page, whatever is asked."""

    PAGE = b"<html><body><h1>Welcome</h1><img src='http://127.0.0.1:1/leak'></body></html>"

    def log_message(self, *args: Any) -> None:
        pass

    def _page(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.PAGE)))
        self.end_headers()
        self.wfile.write(self.PAGE)

    do_GET = do_POST = _page  # noqa: N815 - http.server's names


def test_a_server_answering_html_gets_a_sentence_and_the_sidebar_is_drawn(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    http_server: Callable[[type[BaseHTTPRequestHandler]], LocalServer],
) -> None:
    monkeypatch.setenv("TSCHAT_RUN_DIR", str(tmp_path))
    page = http_server(HtmlEverywhere)
    at = open_app()
    at.text_input(key="w_remote_url").set_value(page.url).run()
    assert not at.exception, at.exception
    text = status_text(at)
    assert f"The server at {page.url}/ping answered with something that is not JSON" in text
    assert "points at another server" in text
    assert "Welcome" not in text and "<" not in text and "leak" not in text
    assert at.sidebar.text_input(key="w_remote_url").value == page.url
    assert at.sidebar.slider(key="w_temperature")
    assert at.chat_input(key="w_question").disabled
    # Management answers HTML too: still a sentence.
    at.text_input(key="w_remote_url").set_value("").run()
    at.text_input(key="w_remote_management_url").set_value(page.url).run()
    assert not at.exception, at.exception


# ---------------------------------------------------------------- faults


@pytest.fixture
def own_server(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    helpers: Helpers,
    torchserve_server: TorchServeServer,
) -> Iterator[Settings]:
    """A TorchServe of this test only (it gets stopped), serving a copy of smollm2.mar."""
    settings = helpers.make_settings(tmp_path)
    settings.model_store.mkdir(parents=True)
    shutil.copy(torchserve_server.settings.model_store / "smollm2.mar", settings.model_store)
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    _serve(settings)
    yield settings
    process.stop(settings)


def _serve(settings: Settings) -> None:
    process.start(settings)
    registry = ServingRegistry.for_settings(settings)
    registry.register("smollm2.mar", batch_size=1, initial_workers=1)
    registry.wait_until_ready("smollm2", timeout=180)


def test_chat_survives_torchserve_stopping_mid_answer(
    own_server: Settings, sent: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    at = open_app()
    configure(at, seed=1, **GREEDY)
    ask(at, "My name is Zork. Please remember it.")
    first_exchange = [(m.role, m.content) for m in shown(at, own_server).messages]
    assert len(first_exchange) == 2 and first_exchange[1][1]

    # TorchServe goes away while the next answer streams: stopped a second after the answer
    # began (its response arrived), not after it was asked, which on a busy machine can be
    # before TorchServe took the request at all.
    configure(at, seed=1, temperature=0.0, max_tokens=1500)
    answering = threading.Event()
    asked = InferenceClient.chat_stream

    def answer_begun(self: InferenceClient, model: str, messages: Any, **params: Any) -> Any:
        stream = asked(self, model, messages, **params)
        answering.set()
        return stream

    monkeypatch.setattr(InferenceClient, "chat_stream", answer_begun)
    # The broken answer's last save takes a while to count as done: a page drawn in between
    # loads the answer as broken off, and must still say why (it once drew it silently).
    saved_as_ended = ConversationStore.finish_answer

    def slow_to_finish(self: ConversationStore, *args: Any, **kwargs: Any) -> bool:
        done = saved_as_ended(self, *args, **kwargs)
        time.sleep(1.0)
        return done

    monkeypatch.setattr(ConversationStore, "finish_answer", slow_to_finish)

    def stop_once_asked() -> None:
        answering.wait(timeout=60)
        time.sleep(1.0)
        process.stop(own_server)

    stopper = threading.Thread(target=stop_once_asked)
    stopper.start()
    try:
        at.chat_input(key="w_question").set_value(LONG_STORY).run()
        settle(at)
    finally:
        stopper.join()
    assert not at.exception, at.exception
    assert not process.status(own_server).running
    said = errors(at)  # the page drawn once the answer ended: the notice and the status line
    assert "broke off" in said or "No answer" in said, said
    assert "not reachable" in status_text(at) or "does not seem to run" in status_text(at)
    assert at.chat_input(key="w_question").disabled
    history = shown(at, own_server).messages
    assert [(m.role, m.content) for m in history[:2]] == first_exchange  # nothing lost
    assert history[2].content == LONG_STORY
    if len(history) > 3:  # the part that arrived before the stop is kept, marked as broken off
        assert history[3].role == "assistant" and history[3].content
        assert history[3].state == "broken"

    # TorchServe is back (new keys): a new page (the app restarted, say) finds it all saved,
    # and the chat goes on.
    _serve(own_server)
    at = open_app(at.session_state["chat_shown"])
    assert "Connected to TorchServe" in status_text(at)
    assert not at.chat_input(key="w_question").disabled
    reopened = shown(at, own_server).messages
    assert [(m.role, m.content, m.state) for m in reopened] == [
        (m.role, m.content, m.state) for m in history
    ]
    configure(at, seed=1, **GREEDY)
    if reopened[-1].role == "user":  # nothing arrived before the stop: answer it now
        click(at, "w_retry")
    ask(at, "What is my name?")
    history = shown(at, own_server).messages
    assert [(m.role, m.content) for m in history[:2]] == first_exchange
    assert history[-1].role == "assistant" and history[-1].content
    # The new question went out with the whole conversation before it.
    assert [m["content"] for m in sent[-1]["messages"]][:2] == [c for _, c in first_exchange]
