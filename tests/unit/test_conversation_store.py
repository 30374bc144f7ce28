"""Saved conversations in SQLite: branches, streaming answers, export/import, concurrent writers."""

from __future__ import annotations

import doctest
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tschat.chat.store
from tschat.chat.conversation import AnswerDetails, AnswerStats
from tschat.chat.export import ConversationFileError
from tschat.chat.sampling import SamplingSettings
from tschat.chat.store import (
    EXPORT_VERSION,
    SCHEMA_VERSION,
    ConversationNotFound,
    ConversationStore,
    StoreError,
    parse_conversation_file,
    store_path,
)
from tschat.settings import REPO_ROOT


class Clock:
    """A clock the test moves: every reading is one second after the previous one."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        self.now += 1
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ConversationStore]:
    opened = ConversationStore.in_run_dir(tmp_path / "var", clock=Clock())
    yield opened
    opened.close()


def texts(store: ConversationStore, conversation_id: int) -> list[str]:
    return [m.content for m in store.load(conversation_id).messages]


def answer(store: ConversationStore, question_id: int, text: str, **finish: Any) -> int:
    answer_id = store.start_answer(question_id)
    store.finish_answer(answer_id, text, **finish)
    return answer_id


def test_doctests() -> None:
    assert doctest.testmod(tschat.chat.store).failed == 0


# ---------------------------------------------------------------- the file


def test_file_and_folder_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        opened = ConversationStore.in_run_dir(tmp_path / "var")
        conversation = opened.create()
        opened.append_question(conversation, "Hi")
    finally:
        os.umask(old)
    path = store_path(tmp_path / "var")
    assert opened.path == path
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700  # created here, so private
    files = sorted(path.parent.iterdir())
    assert [f.name for f in files] == [
        "conversations.sqlite3",
        "conversations.sqlite3-shm",
        "conversations.sqlite3-wal",
    ]
    for file in files:
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file.name
    opened.close()


def test_existing_loose_permissions_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "chats" / "c.sqlite3"
    path.parent.mkdir(mode=0o755)
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    ConversationStore(path).close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_journal_is_wal_and_schema_versioned(store: ConversationStore) -> None:
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2


def test_a_file_of_the_first_version_is_brought_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    ConversationStore(path).close()
    with sqlite3.connect(path) as db:  # what the first version wrote: no details column
        db.execute("ALTER TABLE messages DROP COLUMN details")
        db.execute("PRAGMA user_version = 1")
        db.execute("INSERT INTO conversations (title, created_at, updated_at) VALUES ('Old', 1, 1)")
        db.execute(
            "INSERT INTO messages (conversation_id, role, content, state, created_at, "
            "updated_at) VALUES (1, 'user', 'Hi', 'complete', 1, 1)"
        )
        db.execute("UPDATE conversations SET shown_child = 1")
    store = ConversationStore(path)
    assert [m.content for m in store.load(1).messages] == ["Hi"]
    assert store.load(1).messages[0].details == AnswerDetails()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()


def test_a_file_from_a_newer_version_is_refused_with_a_sentence(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    ConversationStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="newer version of this app"):
        ConversationStore(path)


def test_a_file_that_is_not_a_database_is_refused_with_a_sentence(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    path.write_bytes(b"this is not SQLite, just text " * 100)
    with pytest.raises(StoreError, match="move it away"):
        ConversationStore(path)


def test_reopening_keeps_everything(tmp_path: Path) -> None:
    first = ConversationStore.in_run_dir(tmp_path)
    conversation = first.create("Kept", "Be brief.")
    answer(first, first.append_question(conversation, "Hi"), "Hello.")
    first.close()
    second = ConversationStore.in_run_dir(tmp_path)
    loaded = second.load(conversation)
    assert (loaded.title, loaded.system_prompt) == ("Kept", "Be brief.")
    assert [m.content for m in loaded.messages] == ["Hi", "Hello."]
    second.close()


# ---------------------------------------------------------------- conversations


def test_list_is_most_recent_first_and_counts_messages(store: ConversationStore) -> None:
    first, second, third = store.create("one"), store.create("two"), store.create("three")
    store.append_question(first, "a question")  # now the most recent
    listed = store.conversations()
    assert [c.id for c in listed] == [first, third, second]
    assert [c.message_count for c in listed] == [1, 0, 0]
    assert listed[0].updated_at > listed[1].updated_at
    assert [c.id for c in store.conversations(limit=2)] == [first, third]


def test_search_matches_titles_and_any_message_ignoring_case(store: ConversationStore) -> None:
    trip = store.create("Trip to Zürich")
    cache = store.create()
    question = store.append_question(cache, "What is a KV cache?")
    answer(store, question, "It keeps the keys and values of an ÉTÉ prompt.")
    # A hidden branch is searched too.
    store.edit_question(question, "Explain batching")
    assert [c.id for c in store.conversations("zürich")] == [trip]
    assert [c.id for c in store.conversations("ZÜRICH")] == [trip]
    assert [c.id for c in store.conversations("été")] == [cache]
    assert [c.id for c in store.conversations("kv  CACHE")] == [cache]
    assert [c.id for c in store.conversations("batching")] == [cache]
    assert store.conversations("nothing like this") == []
    # LIKE wildcards are plain text here.
    assert store.conversations("%") == []
    assert {c.id for c in store.conversations("")} == {trip, cache}


def test_first_question_names_an_untitled_conversation(store: ConversationStore) -> None:
    conversation = store.create()
    assert store.load(conversation).title == "New chat"
    store.append_question(conversation, "  How do\n I quantize   a model?  ")
    store.append_question(conversation, "And another one")
    assert store.load(conversation).title == "How do I quantize a model?"
    named = store.create("Mine")
    store.append_question(named, "Question")
    assert store.load(named).title == "Mine"


def test_rename(store: ConversationStore) -> None:
    conversation = store.create()
    assert store.rename(conversation, "  New   name ") == "New name"
    assert store.rename(conversation, "   ") == "New name"
    assert store.rename(conversation, "x" * 500) == "x" * 80
    store.append_question(conversation, "does not rename it any more")
    assert store.load(conversation).title == "x" * 80


def test_system_prompt_is_sent_first(store: ConversationStore) -> None:
    conversation = store.create()
    store.set_system_prompt(conversation, "Be brief.")
    question = store.append_question(conversation, "Hi")
    assert store.load(conversation).api_messages() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    answer(store, question, "Hello.")
    store.set_system_prompt(conversation, "  ")
    assert [m["role"] for m in store.load(conversation).api_messages()] == ["user", "assistant"]


def test_delete_removes_every_message_and_ids_are_never_reused(
    store: ConversationStore,
) -> None:
    conversation = store.create()
    question = store.append_question(conversation, "Hi")
    answer(store, question, "Hello.")
    store.delete(conversation)
    store.delete(conversation)  # already gone: nothing happens
    with pytest.raises(ConversationNotFound, match="deleted in another window"):
        store.load(conversation)
    with pytest.raises(ConversationNotFound):
        store.append_question(conversation, "still there?")
    with pytest.raises(ConversationNotFound):
        store.start_answer(question)
    assert store.update_answer(question + 1, "late text") is False
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0
    again = store.create()
    assert again > conversation
    assert store.append_question(again, "new") > question + 1


# ---------------------------------------------------------------- streaming answers


def test_an_answer_is_saved_as_partial_at_once_and_updated_while_it_streams(
    store: ConversationStore, tmp_path: Path
) -> None:
    conversation = store.create()
    question = store.append_question(conversation, "Count to three")
    answer_id = store.start_answer(question)
    # Another process sees it at once: a reload or a crash now keeps a partial answer.
    other = ConversationStore.in_run_dir(tmp_path / "var")
    last = other.load(conversation).last
    assert last is not None
    assert (last.id, last.role, last.content, last.state, last.partial) == (
        answer_id,
        "assistant",
        "",
        "streaming",
        True,
    )
    # Nothing is sent for an answer without text.
    assert other.load(conversation).api_messages() == [
        {"role": "user", "content": "Count to three"}
    ]
    assert store.update_answer(answer_id, "one, two")
    assert other.load(conversation).messages[-1].content == "one, two"
    stats = AnswerStats(ttft_ms=120.0, completion_tokens=5, tokens_per_second=20.0)
    assert store.finish_answer(answer_id, "one, two, three", stats=stats)
    done = other.load(conversation).messages[-1]
    assert (done.content, done.state, done.partial, done.stats) == (
        "one, two, three",
        "complete",
        False,
        stats,
    )
    # The first finish wins; a late update or finish (a thread after Stop) changes nothing.
    assert store.update_answer(answer_id, "one") is False
    assert store.finish_answer(answer_id, "x", state="broken") is False
    assert other.load(conversation).messages[-1].content == "one, two, three"
    other.close()


@pytest.mark.parametrize("state", ["stopped", "broken"])
def test_a_stopped_or_broken_answer_keeps_its_text_marked_partial(
    store: ConversationStore, state: Any
) -> None:
    conversation = store.create()
    answer_id = store.start_answer(store.append_question(conversation, "Tell a story"))
    store.update_answer(answer_id, "Once upon")
    store.finish_answer(answer_id, "Once upon a", state=state)
    last = store.load(conversation).last
    assert last is not None
    assert (last.content, last.state, last.partial) == ("Once upon a", state, True)
    assert store.load(conversation).api_messages()[-1] == {
        "role": "assistant",
        "content": "Once upon a",
    }


def test_an_answer_that_ended_before_any_text_is_removed(store: ConversationStore) -> None:
    conversation = store.create()
    question = store.append_question(conversation, "Hi")
    first = answer(store, question, "Hello.")
    failed = store.regenerate(first)
    assert store.finish_answer(failed, "", state="broken")
    loaded = store.load(conversation)
    assert [m.id for m in loaded.messages] == [question, first]
    assert loaded.messages[-1].position == "1/1"
    # A first answer that fails leaves the question waiting.
    waiting = store.append_question(conversation, "Again?")
    store.finish_answer(store.start_answer(waiting), "", state="stopped")
    assert store.load(conversation).awaiting_answer
    # A complete empty answer is kept: the model said nothing.
    empty = store.start_answer(waiting)
    store.finish_answer(empty, "")
    last = store.load(conversation).last
    assert last is not None
    assert (last.id, last.content, last.state) == (empty, "", "complete")


def test_answers_left_streaming_by_a_crash_are_finished_as_broken(tmp_path: Path) -> None:
    clock = Clock()
    store = ConversationStore(tmp_path / "c.sqlite3", clock=clock)
    partial, empty, live = store.create(), store.create(), store.create()
    stale = store.start_answer(store.append_question(partial, "one"))
    store.update_answer(stale, "partial text")
    store.start_answer(store.append_question(empty, "two"))
    clock.now += 1000
    streaming = store.start_answer(store.append_question(live, "three"))
    store.update_answer(streaming, "still coming")
    assert store.finish_stale_answers(older_than_s=500) == 2
    assert [(m.content, m.state) for m in store.load(partial).messages] == [
        ("one", "complete"),
        ("partial text", "broken"),
    ]
    assert texts(store, empty) == ["two"]  # an answer without text is not kept
    assert [m.state for m in store.load(live).messages] == ["complete", "streaming"]
    assert store.finish_stale_answers(older_than_s=500) == 0
    store.close()


def test_an_empty_answer_someone_already_replied_to_is_kept(
    store: ConversationStore, tmp_path: Path
) -> None:
    conversation = store.create()
    answer_id = store.start_answer(store.append_question(conversation, "one"))
    # Another window asks under the answer while it is still empty.
    other = ConversationStore.in_run_dir(tmp_path / "var")
    other.append_question(conversation, "two")
    assert store.finish_answer(answer_id, "", state="broken")
    assert [(m.content, m.state) for m in store.load(conversation).messages] == [
        ("one", "complete"),
        ("", "broken"),
        ("two", "complete"),
    ]
    other.close()


def test_finish_refuses_an_unknown_state(store: ConversationStore) -> None:
    answer_id = store.start_answer(store.append_question(store.create(), "Hi"))
    with pytest.raises(ValueError, match="an answer ends as one of"):
        store.finish_answer(answer_id, "x", state="streaming")  # type: ignore[arg-type]


def test_model_text_that_cannot_be_displayed_is_replaced_not_refused(
    store: ConversationStore,
) -> None:
    conversation = store.create()
    answer_id = store.start_answer(store.append_question(conversation, "nul\x00 here"))
    store.finish_answer(answer_id, "half \ud83d of an emoji")
    assert texts(store, conversation) == ["nul\ufffd here", "half \ufffd of an emoji"]


def test_questions_need_text(store: ConversationStore) -> None:
    conversation = store.create()
    with pytest.raises(ValueError, match="needs some text"):
        store.append_question(conversation, " \n ")
    question = store.append_question(conversation, "Hi")
    with pytest.raises(ValueError, match="needs some text"):
        store.edit_question(question, "")


def test_answers_and_questions_are_not_mixed_up(store: ConversationStore) -> None:
    question = store.append_question(store.create(), "Hi")
    answer_id = answer(store, question, "Hello.")
    with pytest.raises(ValueError, match="not a question"):
        store.start_answer(answer_id)
    with pytest.raises(ValueError, match="not a question"):
        store.edit_question(answer_id, "x")
    with pytest.raises(ValueError, match="not an answer"):
        store.regenerate(question)


# ---------------------------------------------------------------- branches


def test_editing_a_question_adds_a_sibling_branch(store: ConversationStore) -> None:
    conversation = store.create()
    q1 = store.append_question(conversation, "What is 2+2?")
    a1 = answer(store, q1, "4")
    q2 = store.append_question(conversation, "And 3+3?")
    a2 = answer(store, q2, "6")
    edited = store.edit_question(q2, "And 5+5?")
    loaded = store.load(conversation)
    assert texts(store, conversation) == ["What is 2+2?", "4", "And 5+5?"]
    assert loaded.awaiting_answer
    assert loaded.messages[-1].position == "2/2"
    assert loaded.messages[-1].previous_sibling == q2
    assert loaded.messages[-1].next_sibling is None
    assert loaded.messages[0].position == "1/1"
    a3 = answer(store, edited, "10")
    # The request carries the visible branch only.
    assert [m["content"] for m in store.load(conversation).api_messages()] == [
        "What is 2+2?",
        "4",
        "And 5+5?",
        "10",
    ]
    # ◀: the first version is shown again with its own answer.
    assert store.step(edited, -1) == q2
    assert [m.id for m in store.load(conversation).messages] == [q1, a1, q2, a2]
    assert store.load(conversation).messages[2].position == "1/2"
    assert store.step(q2, -1) == q2  # stops at the first version
    assert store.step(q2, +1) == edited
    assert [m.id for m in store.load(conversation).messages] == [q1, a1, edited, a3]
    assert store.step(edited, +5) == edited


def test_regenerating_adds_a_sibling_answer_and_each_branch_remembers_its_choice(
    store: ConversationStore,
) -> None:
    conversation = store.create()
    q1 = store.append_question(conversation, "Name a colour")
    red = answer(store, q1, "red")
    blue = store.regenerate(red)
    assert store.load(conversation).messages[-1].id == blue  # shown while it streams
    store.finish_answer(blue, "blue")
    green = answer(store, q1, "green")  # Retry on the question is the same thing
    last = store.load(conversation).messages[-1]
    assert (last.content, last.position, last.siblings) == ("green", "3/3", (red, blue, green))
    # Continue under "blue", then look at "red" and come back: the branch under blue is kept.
    store.choose(blue)
    q_blue = store.append_question(conversation, "Why blue?")
    answer(store, q_blue, "The sky.")
    store.choose(red)
    assert texts(store, conversation) == ["Name a colour", "red"]
    store.step(red, +1)
    assert texts(store, conversation) == ["Name a colour", "blue", "Why blue?", "The sky."]


def test_choosing_a_deep_message_shows_the_path_to_it(store: ConversationStore) -> None:
    conversation = store.create()
    q1 = store.append_question(conversation, "first")
    a1 = answer(store, q1, "one")
    q2 = store.append_question(conversation, "second")
    answer(store, q2, "two")
    other_q1 = store.edit_question(q1, "first, edited")
    answer(store, other_q1, "uno")
    assert texts(store, conversation) == ["first, edited", "uno"]
    store.choose(q2)  # e.g. a search hit in a hidden branch
    assert [m.content for m in store.load(conversation).messages][:3] == ["first", "one", "second"]
    assert store.load(conversation).messages[1].id == a1


def test_editing_the_first_question_of_a_conversation(store: ConversationStore) -> None:
    conversation = store.create()
    q1 = store.append_question(conversation, "Hi")
    answer(store, q1, "Hello.")
    q1b = store.edit_question(q1, "Hey")
    loaded = store.load(conversation)
    assert [m.id for m in loaded.messages] == [q1b]
    assert loaded.messages[0].siblings == (q1, q1b)
    store.step(q1b, -1)
    assert texts(store, conversation) == ["Hi", "Hello."]


def test_a_removed_failed_answer_restores_the_one_shown_before(store: ConversationStore) -> None:
    conversation = store.create()
    question = store.append_question(conversation, "Hi")
    first = answer(store, question, "Hello.")
    second = answer(store, question, "Hey.")
    store.choose(first)
    retry = store.regenerate(first)
    store.finish_answer(retry, "", state="broken")
    assert store.load(conversation).messages[-1].id == second  # the newest remaining version
    assert store.load(conversation).messages[-1].siblings == (first, second)


# ---------------------------------------------------------------- export and import


def build_tree(store: ConversationStore) -> int:
    conversation = store.create("Tree", "Be brief.")
    q1 = store.append_question(conversation, "Hi")
    a1 = answer(store, q1, "Hello.", stats=AnswerStats(ttft_ms=10.0, completion_tokens=2))
    answer(store, q1, "Hey", state="stopped")
    store.choose(a1)
    q2 = store.append_question(conversation, "Tell me more")
    answer(store, q2, "More…", state="broken")
    store.edit_question(q2, "Tell me less")
    store.start_answer(store.load(conversation).messages[-1].id)  # still streaming: ""
    return conversation


def test_export_holds_the_whole_tree_and_imports_back_identically(
    store: ConversationStore,
) -> None:
    conversation = build_tree(store)
    exported = store.export_json(conversation, model="smollm2", settings=SamplingSettings())
    data = json.loads(exported)
    assert (data["format"], data["version"], data["name"]) == (
        "tschat-conversation",
        EXPORT_VERSION,
        "Tree",
    )
    assert data["model"] == "smollm2"
    assert data["settings"]["temperature"] == SamplingSettings().temperature
    assert [(m["id"], m["parent"], m["role"]) for m in data["messages"]] == [
        (1, None, "user"),
        (2, 1, "assistant"),
        (3, 1, "assistant"),
        (4, 2, "user"),
        (5, 4, "assistant"),
        (6, 2, "user"),
        (7, 6, "assistant"),
    ]
    assert [m.get("shown", False) for m in data["messages"]] == [
        True,
        True,
        False,
        False,
        True,
        True,
        True,
    ]
    assert data["messages"][1]["stats"] == {"ttft_ms": 10.0, "completion_tokens": 2}
    assert data["messages"][2]["state"] == "stopped"
    # The answer that was streaming is saved as broken off, with its text so far.
    assert data["messages"][6]["state"] == "broken"
    copy = store.import_json(exported)
    again = json.loads(store.export_json(copy))
    assert again["messages"][:6] == data["messages"][:6]
    # Imported, the empty broken answer is kept as it was written.
    assert again["messages"][6] == data["messages"][6]
    assert [m.content for m in store.load(copy).messages] == ["Hi", "Hello.", "Tell me less", ""]


def test_markdown_export_is_the_visible_branch(store: ConversationStore) -> None:
    conversation = build_tree(store)
    assert store.export_markdown(conversation, model="m") == (
        "# Tree\n\n**Model:** m\n\n**System prompt:** Be brief.\n\n"
        "### You\n\nHi\n\n### Assistant\n\nHello.\n\n*first token 10 ms · 2 tokens*\n\n"
        "### You\n\nTell me less\n\n### Assistant\n\n\n\n*still coming*\n"
    )


def test_the_linear_json_of_the_first_version_still_imports(store: ConversationStore) -> None:
    def reply(text: str, **stats: Any) -> dict[str, Any]:
        return {"role": "assistant", "content": text, "stats": stats}

    old = {
        "format": "tschat-conversation",
        "version": 1,
        "name": "Old chat",
        "system_prompt": "Be nice.",
        "model": "m",
        "settings": {"temperature": 0.8, "stop": []},
        "messages": [
            {"role": "user", "content": "Hi"},
            reply("Hel", finish_reason="stopped", estimated=True) | {"stopped": True},
            {"role": "user", "content": "Again"},
            reply("Bro", finish_reason="error"),
            {"role": "user", "content": "Once more"},
            reply(
                "Done.",
                ttft_ms=12.0,
                completion_tokens=3,
                prompt_tokens=9,
                tokens_per_second=30.0,
                finish_reason="stop",
                model="m",
            ),
        ],
    }
    conversation = store.import_json(json.dumps(old))
    loaded = store.load(conversation)
    assert (loaded.title, loaded.system_prompt) == ("Old chat", "Be nice.")
    assert [(m.content, m.state) for m in loaded.messages] == [
        ("Hi", "complete"),
        ("Hel", "stopped"),
        ("Again", "complete"),
        ("Bro", "broken"),
        ("Once more", "complete"),
        ("Done.", "complete"),
    ]
    assert loaded.messages[-1].stats == AnswerStats(12.0, 3, 9, 30.0, "stop", "m")


def test_how_an_answer_is_shown_is_saved_and_its_format_exported(
    store: ConversationStore,
) -> None:
    conversation = store.create()
    question = store.append_question(conversation, "A person as JSON")
    tokens = ({"token": "{", "logprob": -0.1, "top_logprobs": [{"token": "{", "logprob": -0.1}]},)
    answer_id = store.start_answer(question)
    store.finish_answer(answer_id, '{"name": "Ada"}', details=AnswerDetails("json", tokens))
    shown = store.load(conversation).messages[-1]
    assert shown.details == AnswerDetails("json", tokens)
    exported = json.loads(store.export_json(conversation))
    assert exported["messages"][1]["format"] == "json"
    assert "tokens" not in exported["messages"][1]  # token probabilities stay here
    copy = store.load(store.import_json(json.dumps(exported)))
    assert copy.messages[-1].details == AnswerDetails("json")
    exported["messages"][0]["format"] = "json"
    with pytest.raises(ConversationFileError, match="only answers have a format"):
        store.import_json(json.dumps(exported))
    exported["messages"][0]["format"] = "<b>html</b>"
    with pytest.raises(ConversationFileError, match="format must be one of"):
        store.import_json(json.dumps(exported))


def test_an_openai_messages_list_imports(store: ConversationStore) -> None:
    content = json.dumps(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ]
    ).encode("utf-8-sig")
    conversation = store.import_json(content, default_title="chat-export")
    loaded = store.load(conversation)
    assert (loaded.title, loaded.system_prompt) == ("chat-export", "Be brief.")
    assert texts(store, conversation) == ["Hi", "Hello."]


def tree_file(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "format": "tschat-conversation",
        "version": 2,
        "name": "x",
        "system_prompt": "",
        "messages": [
            {"id": 1, "parent": None, "role": "user", "content": "Hi"},
            {"id": 2, "parent": 1, "role": "assistant", "content": "Hello.", "stats": {}},
        ],
    }
    data.update(changes)
    return data


def with_message(index: int, **fields: Any) -> dict[str, Any]:
    data = tree_file()
    data["messages"][index].update(fields)
    return data


REFUSED: list[tuple[Any, str]] = [
    (tree_file(name="bad \ud800 name"), "name contains a lone surrogate (U+D800 at character 4)"),
    (tree_file(system_prompt="a\x00b"), "system_prompt contains a NUL character"),
    (with_message(0, content="\udfff"), "messages[0].content contains a lone surrogate"),
    (with_message(0, content=7), "messages[0].content must be text."),
    (
        with_message(1, stats={"completion_tokens": 10**30}),
        "messages[1].stats.completion_tokens must be between 0 and 10,000,000; got "
        "1000000000000000000000000000000.",
    ),
    (
        with_message(1, stats={"ttft_ms": -1}),
        "messages[1].stats.ttft_ms must be between 0 and 86,400,000; got -1.",
    ),
    (
        with_message(1, stats={"tokens_per_second": 1e999}),
        "messages[1].stats.tokens_per_second must be between 0 and 1,000,000; got inf.",
    ),
    (with_message(1, stats={"prompt_tokens": 2.5}), "prompt_tokens must be a whole number"),
    (with_message(1, stats={"prompt_tokens": "5"}), "prompt_tokens must be a number; got '5'."),
    (with_message(1, stats={"prompt_tokens": True}), "prompt_tokens must be a number; got true."),
    (with_message(1, stats={"model": "m" * 201}), "stats.model is longer than 200 characters."),
    (with_message(1, stats={"model": "\x00"}), "messages[1].stats.model contains a NUL"),
    (with_message(1, stats={"estimated": 1}), "stats.estimated must be true or false."),
    (with_message(1, stats=[1]), "messages[1].stats must be an object."),
    (with_message(0, stats={}), "messages[0] is a question; only answers have stats."),
    (with_message(0, role="system"), 'messages[0].role must be "user" or "assistant"'),
    (with_message(1, role=None), 'messages[1].role must be "user" or "assistant", not null.'),
    (with_message(1, parent=5), "messages[1].parent must be the id of an earlier message; got 5."),
    (with_message(1, parent=2), "messages[1].parent must be the id of an earlier message; got 2."),
    (with_message(1, id=1), "messages[1].id is 1, already used by messages[0]."),
    (with_message(1, id=-1), "messages[1].id must be between 0 and"),
    (with_message(1, id="2"), "messages[1].id must be a number; got '2'."),
    (with_message(1, state="streaming"), "messages[1].state must be one of complete, stopped"),
    (with_message(0, state="stopped"), "messages[0] is a question; only answers have a state."),
    (with_message(1, shown="yes"), "messages[1].shown must be true or false."),
    (with_message(1, content="x" * 11), "messages[1].content is longer than 10 characters."),
    (tree_file(version=3), "it was saved as version 3; this app reads versions 1 and 2."),
    (tree_file(version=True), "it was saved as version true"),
    (tree_file(format="other"), "its format is 'other', not 'tschat-conversation'."),
    (tree_file(messages={}), "it has no `messages` list."),
    ({"messages": ["x"]}, "messages[0] must be an object with role and content."),
    ({"messages": [{"role": "user", "content": "a", "stopped": "no"}]}, "stopped must be true"),
    ("[" * 100_000 + "]" * 100_000, "it is not valid JSON"),
    ('{"messages": [], "version": ' + "9" * 5000 + "}", "it is not valid JSON"),
    (b"\xff\xfe not utf-8", "it is not UTF-8 text."),
    ("null", "it holds no JSON object."),
]


@pytest.mark.parametrize(("content", "reason"), REFUSED, ids=[r for _, r in REFUSED])
def test_a_bad_import_is_refused_naming_the_field_and_saves_nothing(
    store: ConversationStore, monkeypatch: pytest.MonkeyPatch, content: Any, reason: str
) -> None:
    monkeypatch.setattr(tschat.chat.store, "MAX_TEXT_CHARS", 10)
    raw = content if isinstance(content, (str, bytes)) else json.dumps(content)
    with pytest.raises(ConversationFileError) as refused:
        store.import_json(raw)
    assert reason in refused.value.reason
    assert refused.value.message.startswith("This file cannot be loaded as a conversation:")
    # The reason is displayable text itself.
    refused.value.message.encode("utf-8")
    assert store.conversations() == []


def test_two_shown_versions_at_one_place_are_refused() -> None:
    data = tree_file()
    data["messages"] += [
        {"id": 3, "parent": 1, "role": "assistant", "content": "a", "shown": True},
        {"id": 4, "parent": 1, "role": "assistant", "content": "b", "shown": True},
    ]
    with pytest.raises(ConversationFileError, match=r"messages\[3\]\.shown is true, but messages"):
        parse_conversation_file(json.dumps(data))


def test_without_shown_marks_the_newest_version_is_shown(store: ConversationStore) -> None:
    data = tree_file()
    data["messages"].append({"id": 3, "parent": 1, "role": "assistant", "content": "newer"})
    conversation = store.import_json(json.dumps(data))
    assert texts(store, conversation) == ["Hi", "newer"]
    assert store.load(conversation).messages[-1].position == "2/2"


def test_a_file_too_large_is_refused_before_parsing() -> None:
    with pytest.raises(ConversationFileError, match="larger than 5 MB"):
        parse_conversation_file(b" " * 5_000_001)


def test_a_blank_or_missing_name_takes_the_default(store: ConversationStore) -> None:
    conversation = store.import_json(json.dumps(tree_file(name=" \n ")), default_title="file")
    assert store.load(conversation).title == "file"


def test_an_import_interrupted_half_way_saves_nothing(
    store: ConversationStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = tschat.chat.store._Db.add_message
    calls = []

    def failing(self: Any, *args: Any, **kwargs: Any) -> int:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk went away")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tschat.chat.store._Db, "add_message", failing)
    with pytest.raises(OSError):
        store.import_json(json.dumps(tree_file()))
    monkeypatch.undo()
    assert store.conversations() == []
    with sqlite3.connect(store.path) as db:
        assert db.execute("SELECT count(*) FROM messages").fetchone()[0] == 0


def test_damaged_stats_in_the_file_are_dropped_not_shown(store: ConversationStore) -> None:
    conversation = store.create()
    answer_id = answer(store, store.append_question(conversation, "Hi"), "Hello.")
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE messages SET stats = ? WHERE id = ?", ('{"ttft_ms": 1e999}', answer_id))
    assert store.load(conversation).messages[-1].stats is None


# ---------------------------------------------------------------- random operations


OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["ask", "answer", "stop", "edit", "regenerate", "back", "forward"]),
        st.text(min_size=1, max_size=12),
    ),
    max_size=25,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=OPERATIONS)
def test_any_sequence_of_operations_keeps_a_well_formed_branch_that_round_trips(
    tmp_path: Path, operations: list[tuple[str, str]]
) -> None:
    store = ConversationStore(tmp_path / f"{os.urandom(6).hex()}.sqlite3")
    conversation = store.create("Random")
    for operation, text in operations:
        last = store.load(conversation).last
        if operation == "ask" or last is None:
            if text.strip():
                store.append_question(conversation, text)
        elif operation in ("answer", "stop") and last.role == "user":
            state = "complete" if operation == "answer" else "stopped"
            store.finish_answer(store.start_answer(last.id), text, state=state)
        elif operation == "edit" and last.role == "user" and text.strip():
            store.edit_question(last.id, text)
        elif operation == "regenerate" and last.role == "assistant":
            store.finish_answer(store.regenerate(last.id), text)
        elif operation in ("back", "forward"):
            store.step(last.id, -1 if operation == "back" else 1)
    loaded = store.load(conversation)
    # The visible branch is a chain from the top, each message among its own siblings.
    parent = None
    for message in loaded.messages:
        assert message.parent_id == parent
        assert message.id in message.siblings
        assert list(message.siblings) == sorted(message.siblings)
        parent = message.id
    exported = store.export_json(conversation)
    copy = store.import_json(exported)
    assert [(m.role, m.content, m.state, m.position) for m in store.load(copy).messages] == [
        (m.role, m.content, m.state, m.position) for m in loaded.messages
    ]
    assert json.loads(store.export_json(copy))["messages"] == json.loads(exported)["messages"]
    store.close()


# ---------------------------------------------------------------- concurrent writers


def test_threads_write_at_once_without_losing_anything(tmp_path: Path) -> None:
    store = ConversationStore(tmp_path / "c.sqlite3", timeout_s=30)
    shared = store.create("shared")
    errors: list[BaseException] = []

    def chat(worker: int) -> None:
        try:
            own = store.create(f"worker {worker}")
            for turn in range(5):
                question = store.append_question(own, f"w{worker} q{turn}")
                answer_id = store.start_answer(question)
                for size in range(1, 6):
                    store.update_answer(answer_id, "x" * size)
                store.finish_answer(answer_id, f"w{worker} a{turn}")
                store.append_question(shared, f"w{worker} shared {turn}")
                store.load(shared)
                store.conversations("w")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            store.close()

    threads = [threading.Thread(target=chat, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for summary in store.conversations():
        if summary.id == shared:
            continue
        worker = summary.title.split()[-1]
        assert texts(store, summary.id) == [
            text for turn in range(5) for text in (f"w{worker} q{turn}", f"w{worker} a{turn}")
        ]
    # Questions appended at once to one conversation form one branch, none lost.
    shared_texts = texts(store, shared)
    assert sorted(shared_texts) == sorted(
        f"w{worker} shared {turn}" for worker in range(8) for turn in range(5)
    )
    store.close()


WRITER = """
import sys
from tschat.chat.store import ConversationStore
store = ConversationStore(sys.argv[1], timeout_s=60)
name = sys.argv[2]
for n in range(int(sys.argv[3])):
    conversation = store.create(f"{name} {n}")
    question = store.append_question(conversation, f"{name} question {n}")
    answer = store.start_answer(question)
    for size in range(1, 11):
        store.update_answer(answer, "y" * size)
    store.finish_answer(answer, f"{name} answer {n}")
    store.conversations(name)
"""


def test_two_processes_write_at_once_without_losing_anything(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    ConversationStore(path).close()
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path), name, "25"],
            cwd=REPO_ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("first", "second")
    ]
    for writer in writers:
        _, stderr = writer.communicate(timeout=240)
        assert writer.returncode == 0, stderr
    store = ConversationStore(path)
    summaries = store.conversations(limit=1000)
    assert sorted(s.title for s in summaries) == sorted(
        f"{name} {n}" for name in ("first", "second") for n in range(25)
    )
    for summary in summaries:
        name, n = summary.title.split()
        assert texts(store, summary.id) == [f"{name} question {n}", f"{name} answer {n}"]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    store.close()


IMPORTER = """
import sys
from tschat.chat.store import ConversationStore
store = ConversationStore(sys.argv[1], timeout_s=60)
content = open(sys.argv[2], encoding="utf-8").read()
print("ready", flush=True)
while True:
    store.import_json(content)
"""


def test_a_process_killed_while_writing_leaves_no_half_written_conversation(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.sqlite3"
    ConversationStore(path).close()
    big = {
        "messages": [
            {"role": "user" if n % 2 == 0 else "assistant", "content": f"message {n} " * 50}
            for n in range(2000)
        ]
    }
    source = tmp_path / "big.json"
    source.write_text(json.dumps(big), encoding="utf-8")
    importer = subprocess.Popen(
        [sys.executable, "-c", IMPORTER, str(path), str(source)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert importer.stdout is not None
        assert importer.stdout.readline().strip() == "ready"
        # Wait until at least one import is saved, so the kill lands during a later one.
        store = ConversationStore(path)
        while not store.conversations():
            threading.Event().wait(0.05)
    finally:
        importer.send_signal(signal.SIGKILL)
        importer.wait(timeout=30)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    summaries = store.conversations(limit=1000)
    assert summaries
    assert {s.message_count for s in summaries} == {2000}
    assert len(store.load(summaries[0].id).messages) == 2000
    store.close()
