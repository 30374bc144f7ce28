"""The chat client (client_app.py) run by AppTest against the session's real TorchServe.

Questions are typed into the chat input and buttons are clicked as a person would; the page,
the stored conversation and (where it matters) the request that went out are checked.
Answers are kept short (a few tokens, temperature 0 where the text is compared).
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import streamlit.testing.v1.app_test as app_test_module
from streamlit.runtime.memory_media_file_storage import MemoryFile, MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

from tschat.api.inference import InferenceClient
from tschat.api.keys import Keys
from tschat.chat.conversation import Conversation
from tschat.ops import process
from tschat.ops.serving import ServingRegistry
from tschat.settings import REPO_ROOT, Settings

if TYPE_CHECKING:
    from conftest import Helpers, TorchServeServer

pytestmark = pytest.mark.integration

APP = str(REPO_ROOT / "client_app.py")
RUN_TIMEOUT_S = 180  # one run streams a whole (short) answer on a busy 2-core machine
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


def open_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=RUN_TIMEOUT_S)
    at.run()
    assert not at.exception, at.exception
    return at


def configure(at: AppTest, *, seed: int | None = None, stop: str = "", **knobs: float) -> None:
    for name, value in knobs.items():
        at.slider(key=f"w_{name}").set_value(value)
    at.number_input(key="w_seed").set_value(seed)
    at.text_area(key="w_stop_sequences").set_value(stop)


def ask(at: AppTest, question: str) -> None:
    at.chat_input(key="w_question").set_value(question).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def click(at: AppTest, key: str) -> None:
    at.button(key=key).click().run()
    assert not at.exception, at.exception


def conversation(at: AppTest) -> Conversation:
    book = at.session_state["chat_book"]
    current: Conversation = book.current
    return current


def answers(at: AppTest) -> list[str]:
    return [m.content for m in conversation(at).messages if m.role == "assistant"]


def captions(at: AppTest) -> list[str]:
    return [c.value for message in at.chat_message for c in message.caption]


def status_text(at: AppTest) -> str:
    return " ".join(e.value for e in [*at.success, *at.warning, *at.error])


# ---------------------------------------------------------------- conversation


def test_second_answer_depends_on_the_first(chat_env: Settings, sent: list[dict[str, Any]]) -> None:
    at = open_app()
    assert "Connected to TorchServe" in status_text(at)
    configure(at, seed=1, **GREEDY)
    ask(at, "My name is Zork. Please remember it.")
    ask(at, "What is my name?")

    history = conversation(at).messages
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

    # The same question in a fresh conversation does not know the name.
    click(at, "w_new_conversation")
    assert conversation(at).name == "Chat 2" and not conversation(at).messages
    ask(at, "What is my name?")
    assert "Zork" not in answers(at)[0]
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
    stats = conversation(at).messages[-1].stats
    assert stats is not None
    assert (stats.completion_tokens, stats.finish_reason) == (3, "length")

    # The same seed and history give the same answer again.
    first = answers(at)[-1]
    click(at, "w_regenerate")
    assert len(conversation(at).messages) == 2, "regenerate replaces the answer"
    assert answers(at)[-1] == first
    assert sent[1]["seed"] == 4321 and sent[1]["messages"] == sent[0]["messages"]


def test_stop_sequence_ends_the_answer_early(
    chat_env: Settings, sent: list[dict[str, Any]]
) -> None:
    at = open_app()
    configure(at, seed=1, **GREEDY)
    ask(at, "My name is Zork. What is my name?")
    full = answers(at)[-1]
    words = full.split()
    assert len(words) >= 3, full
    cut = words[2]  # a word from the middle of the greedy answer
    at.text_area(key="w_stop_sequences").set_value(f"{cut}\nNEVER-SEEN")
    click(at, "w_regenerate")
    assert sent[1]["stop"] == [cut, "NEVER-SEEN"]
    shorter = answers(at)[-1]
    assert cut not in shorter and full.startswith(shorter.rstrip())
    stats = conversation(at).messages[-1].stats
    assert stats is not None and stats.finish_reason == "stop"


def test_edit_regenerate_and_clear(chat_env: Settings, sent: list[dict[str, Any]]) -> None:
    at = open_app()
    configure(at, seed=7, temperature=0.0, max_tokens=4)
    ask(at, "Name a colour.")
    click(at, "w_edit_start")
    assert at.text_area(key="w_edit").value == "Name a colour."
    at.text_area(key="w_edit").set_value("Name a fruit.")
    click(at, "w_resend")
    history = conversation(at).messages
    assert [(m.role, m.content) for m in history[:1]] == [("user", "Name a fruit.")]
    assert len(history) == 2 and history[1].content
    assert sent[-1]["messages"] == [{"role": "user", "content": "Name a fruit."}]

    click(at, "w_regenerate")
    assert len(sent) == 3 and len(conversation(at).messages) == 2

    click(at, "w_clear")
    assert conversation(at).messages == []
    assert not at.chat_message
    assert "w_regenerate" not in {button.key for button in at.button}


def test_model_output_is_shown_with_html_disabled(chat_env: Settings) -> None:
    at = open_app()
    configure(at, seed=1, temperature=0.0, max_tokens=2)
    question = "Repeat: <img src=x onerror=alert(1)> <script>alert(2)</script>"
    ask(at, question)
    rendered = [md for message in at.chat_message for md in message.markdown]
    assert rendered[0].value == question
    assert rendered and all(not md.proto.allow_html for md in rendered)


# ---------------------------------------------------------------- export and import


def test_export_and_import_round_trip(chat_env: Settings, downloads: dict[str, MemoryFile]) -> None:
    at = open_app()
    configure(at, seed=3, temperature=0.0, max_tokens=5)
    at.text_area(key="w_system").set_value("Answer briefly.")
    ask(at, "What is 2 + 2?")
    at.text_input(key="w_rename").set_value("Maths").run()
    original = conversation(at)
    assert original.name == "Maths"

    exported = downloads["Maths.json"].content
    markdown = downloads["Maths.md"].content.decode()
    assert markdown.startswith("# Maths\n") and "What is 2 + 2?" in markdown
    assert original.messages[1].content in markdown
    data = json.loads(exported)
    assert data["name"] == "Maths" and data["model"] == "smollm2"
    assert data["settings"]["seed"] == 3

    at.file_uploader(key="w_import_0").upload("Maths.json", exported, "application/json").run()
    assert not at.exception and not at.error
    loaded = conversation(at)
    assert loaded.name == "Maths (2)"
    assert loaded.system_prompt == "Answer briefly."
    assert loaded.messages == original.messages
    assert at.text_area(key="w_system").value == "Answer briefly."
    assert at.selectbox(key="w_conversation").value == "Maths (2)"
    assert [m.markdown[0].value for m in at.chat_message] == [m.content for m in original.messages]

    # A file that is not a conversation is refused with a sentence, and nothing changes.
    at.file_uploader(key="w_import_1").upload("bad.json", b'{"messages": 3}', "application/json")
    at.run()
    assert "cannot be loaded as a conversation" in " ".join(e.value for e in at.error)
    assert len(at.session_state["chat_book"].conversations) == 2


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
    assert answers(at) and answers(at)[0]


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
    assert "is not an address like http://host:8080" in " ".join(e.value for e in at.error)


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
    own_server: Settings, sent: list[dict[str, Any]]
) -> None:
    at = open_app()
    configure(at, seed=1, **GREEDY)
    ask(at, "My name is Zork. Please remember it.")
    first_exchange = [(m.role, m.content) for m in conversation(at).messages]
    assert len(first_exchange) == 2 and first_exchange[1][1]

    # TorchServe goes away while the next answer streams: stopped a second after it is asked.
    configure(at, seed=1, temperature=0.0, max_tokens=1500)

    def stop_once_asked() -> None:
        deadline = time.monotonic() + 60
        while len(sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)
        process.stop(own_server)

    stopper = threading.Thread(target=stop_once_asked)
    stopper.start()
    try:
        at.chat_input(key="w_question").set_value(LONG_STORY).run()
    finally:
        stopper.join()
    assert not at.exception, at.exception
    assert not process.status(own_server).running
    # The run that streamed ended by drawing the page again: the notice and the status line.
    shown = " ".join(e.value for e in at.error)
    assert "broke off" in shown or "No answer" in shown, shown
    assert "not reachable" in status_text(at) or "does not seem to run" in status_text(at)
    assert at.chat_input(key="w_question").disabled
    history = conversation(at).messages
    assert [(m.role, m.content) for m in history[:2]] == first_exchange  # nothing lost
    assert history[2].content == LONG_STORY
    if len(history) > 3:  # the part that arrived before the stop is kept, marked as broken off
        assert history[3].role == "assistant" and history[3].content

    # TorchServe is back (new keys): the chat notices on the next run and goes on.
    _serve(own_server)
    at.button(key="w_check").click().run()
    assert "Connected to TorchServe" in status_text(at)
    assert not at.chat_input(key="w_question").disabled
    configure(at, seed=1, **GREEDY)
    ask(at, "What is my name?")
    history = conversation(at).messages
    assert [(m.role, m.content) for m in history[:2]] == first_exchange
    assert history[-1].role == "assistant" and history[-1].content
    # The new question went out with the whole conversation before it.
    assert [m["content"] for m in sent[-1]["messages"]][:2] == [c for _, c in first_exchange]
