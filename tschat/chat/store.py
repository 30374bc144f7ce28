"""Saved conversations: one SQLite file under the run folder, a tree of messages per conversation.

Editing a question or regenerating an answer adds a *sibling* instead of replacing the message,
so every version stays readable. Each message (and the conversation itself, for the first
messages) remembers which of its replies is shown; following those choices from the top gives
the *visible branch*: what the chat draws and what the next request sends.

Several browser sessions (threads) and processes may use the same file at once. Every call opens
its own connection, so nothing is shared between threads; writes run in ``BEGIN IMMEDIATE``
transactions (WAL journal, busy timeout), so a write is either saved whole or not at all, and two
writers wait for each other instead of failing. The file and its folder are owner-only.

* :class:`ConversationStore` - create, list and search, rename, delete, load the visible branch;
  append a question, stream an answer into it (started as partial, updated, finished, or
  found stale after a crash), edit a question or regenerate an answer as a sibling, switch
  between siblings; export and import.
* :class:`SavedConversation`, :class:`StoredMessage`, :class:`ConversationSummary` - what loading
  and listing return.
* :func:`parse_conversation_file` - check an export file field by field (both today's tree
  format, version 2, and the linear version 1 written by earlier versions of the app).
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, cast, get_args

from tschat.api.inference import ChatMessage
from tschat.chat.conversation import (
    ANSWER_FORMATS,
    BROKEN,
    MAX_NAME_LENGTH,
    AnswerDetails,
    AnswerFormat,
    AnswerStats,
    Role,
)
from tschat.chat.export import (
    FORMAT,
    MAX_IMPORT_BYTES,
    MAX_MESSAGES,
    ConversationFileError,
    to_markdown,
)
from tschat.chat.sampling import SamplingSettings
from tschat.errors import TsChatError

SCHEMA_VERSION = 2  # PRAGMA user_version of the file
EXPORT_VERSION = 2  # "version" of an exported tree; version 1 files (linear) still import
FOLDER_NAME = "chats"
FILE_NAME = "conversations.sqlite3"
NEW_TITLE = "New chat"
MAX_TEXT_CHARS = 1_000_000  # one message or system prompt in an imported file
MAX_LABEL_CHARS = 200  # finish reason and model name of an imported answer

MessageState = Literal["complete", "streaming", "stopped", "broken"]
FinalState = Literal["complete", "stopped", "broken"]
FINAL_STATES: tuple[str, ...] = get_args(FinalState)

# Bounds of the figures an imported answer may carry: (low, high, whole number).
STATS_LIMITS: dict[str, tuple[float, float, bool]] = {
    "ttft_ms": (0, 86_400_000, False),  # a day
    "completion_tokens": (0, 10_000_000, True),
    "prompt_tokens": (0, 10_000_000, True),
    "tokens_per_second": (0, 1_000_000, False),
}
_UNDISPLAYABLE = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates

_SCHEMA = """
CREATE TABLE conversations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    title TEXT NOT NULL,
    auto_title INTEGER NOT NULL DEFAULT 0,
    system_prompt TEXT NOT NULL DEFAULT '',
    shown_child INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    parent_id INTEGER REFERENCES messages(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('complete', 'streaming', 'stopped', 'broken')),
    stats TEXT,
    details TEXT,
    shown_child INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX messages_by_parent ON messages (conversation_id, parent_id);
CREATE INDEX conversations_by_update ON conversations (updated_at);
"""
# What turns a file of an older version into the next one: version 1 -> 2 adds the details
# (JSON format, token probabilities) of an answer.
_MIGRATIONS = {1: "ALTER TABLE messages ADD COLUMN details TEXT"}


# ---------------------------------------------------------------------------- errors


class StoreError(TsChatError):
    """The conversation file cannot be used (locked too long, damaged, or from a newer version)."""


class ConversationNotFound(StoreError):
    """The conversation (or message) is gone, usually deleted from another window."""

    def __init__(self, what: str = "This conversation") -> None:
        super().__init__(
            f"{what} no longer exists: it was probably deleted in another window. "
            "Pick another conversation in the sidebar."
        )


# ---------------------------------------------------------------------------- values


@dataclass(frozen=True)
class StoredMessage:
    """One message of the visible branch, with its place among its siblings.

    ``siblings`` holds the ids of the message and of the other versions of it (same parent),
    oldest first, so a view can draw ``◀ 2/3 ▶`` and switch with :meth:`ConversationStore.choose`.
    """

    id: int
    conversation_id: int
    parent_id: int | None
    role: Role
    content: str
    state: MessageState
    stats: AnswerStats | None
    siblings: tuple[int, ...]
    created_at: float
    updated_at: float
    details: AnswerDetails = AnswerDetails()

    @property
    def partial(self) -> bool:
        """Whether the answer did not end normally (streaming, stopped or broken off)."""
        return self.state != "complete"

    @property
    def sibling_index(self) -> int:
        """Position among the versions, from 0."""
        return self.siblings.index(self.id)

    @property
    def sibling_count(self) -> int:
        """How many versions there are (1 when it was never edited or regenerated)."""
        return len(self.siblings)

    @property
    def position(self) -> str:
        """``"2/3"``: which version this is, out of how many."""
        return f"{self.sibling_index + 1}/{self.sibling_count}"

    @property
    def previous_sibling(self) -> int | None:
        """The id of the version before this one, if any."""
        index = self.sibling_index
        return self.siblings[index - 1] if index > 0 else None

    @property
    def next_sibling(self) -> int | None:
        """The id of the version after this one, if any."""
        index = self.sibling_index
        return self.siblings[index + 1] if index + 1 < len(self.siblings) else None


@dataclass(frozen=True)
class SavedConversation:
    """A conversation as loaded: its system prompt and visible branch, oldest message first."""

    id: int
    title: str
    system_prompt: str
    messages: tuple[StoredMessage, ...]
    created_at: float
    updated_at: float

    @property
    def last(self) -> StoredMessage | None:
        """The last message of the visible branch."""
        return self.messages[-1] if self.messages else None

    @property
    def awaiting_answer(self) -> bool:
        """Whether the branch ends with a question that has no answer."""
        return self.last is not None and self.last.role == "user"

    def last_question(self) -> StoredMessage | None:
        """The last question of the visible branch."""
        return next((m for m in reversed(self.messages) if m.role == "user"), None)

    def api_messages(self, until: int | None = None) -> list[ChatMessage]:
        """What the next request sends: the system prompt, then the visible branch (up to and
        including the message ``until``, when given).

        Answers without any text (one that has just started) are left out.
        """
        shown = self.messages
        if until is not None:
            ids = [m.id for m in shown]
            if until not in ids:
                raise ConversationNotFound("This message")
            shown = shown[: ids.index(until) + 1]
        sent: list[ChatMessage] = []
        if self.system_prompt.strip():
            sent.append({"role": "system", "content": self.system_prompt})
        sent.extend(
            {"role": m.role, "content": m.content} for m in shown if m.content or m.role == "user"
        )
        return sent


@dataclass(frozen=True)
class ConversationSummary:
    """A line of the conversation list."""

    id: int
    title: str
    created_at: float
    updated_at: float
    message_count: int


@dataclass(frozen=True)
class ImportedMessage:
    """One checked message of an import file; ``parent`` indexes an earlier one (None: first)."""

    parent: int | None
    role: Role
    content: str
    state: FinalState = "complete"
    stats: AnswerStats | None = None
    shown: bool = False
    format: AnswerFormat = "text"


@dataclass(frozen=True)
class ImportedConversation:
    """A checked import file, ready to be saved."""

    title: str
    system_prompt: str
    messages: tuple[ImportedMessage, ...]


# ---------------------------------------------------------------------------- the store


def store_path(run_dir: Path) -> Path:
    """Where the conversations of a run folder are kept."""
    return Path(run_dir) / FOLDER_NAME / FILE_NAME


class ConversationStore:
    """Saved conversations in one SQLite file; safe to share between threads and processes.

    Args:
        path: the database file; its folder is created owner-only (0700) and the file 0600.
        timeout_s: how long a write waits for another writer before giving up.
        clock: seconds since the epoch, for the timestamps (tests pass their own).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path).absolute()
        self.timeout_s = timeout_s
        self._clock = clock
        self._local = threading.local()
        _create_private(self.path)
        try:
            mode = self._connection().execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.DatabaseError as error:
            self.close()
            raise self._unusable(error) from None
        if str(mode).lower() != "wal":
            raise StoreError(f"Cannot use {self.path}: SQLite refused the WAL journal ({mode}).")
        with self._transaction() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                db.executescript_in_transaction(_SCHEMA)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version < SCHEMA_VERSION:
                for step in range(version, SCHEMA_VERSION):
                    db.execute(_MIGRATIONS[step])
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif version > SCHEMA_VERSION:
                raise StoreError(
                    f"The saved conversations in {self.path} were written by a newer version "
                    f"of this app (format {version}; this one reads {SCHEMA_VERSION}). Update "
                    "the app, or set TSCHAT_RUN_DIR to another folder."
                )

    @classmethod
    def in_run_dir(cls, run_dir: Path, **options: Any) -> ConversationStore:
        """The store of a run folder (``Settings.run_dir``)."""
        return cls(store_path(run_dir), **options)

    def close(self) -> None:
        """Close the calling thread's connection (the others close when their thread ends)."""
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            self._local.connection = None
            connection.close()

    # ------------------------------------------------------------------ connections

    def _unusable(self, error: sqlite3.Error) -> StoreError:
        return StoreError(
            f"Cannot use the saved conversations in {self.path}: {error}. If the file is damaged, "
            "move it away (the app starts a new one) and import your exported conversations."
        )

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened once and never shared with another thread.

        It stays open: closing the last connection checkpoints the WAL, which on every write
        would cost a sync to disk.
        """
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        try:
            connection = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
            connection.execute("PRAGMA foreign_keys = ON")
            # NORMAL in WAL mode: a commit is atomic; only a power cut may undo the last ones.
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.create_function("tschat_contains", 2, _contains, deterministic=True)
        except sqlite3.Error as error:
            raise self._unusable(error) from None
        self._local.connection = connection
        return connection

    @contextmanager
    def _transaction(self, write: bool = True) -> Iterator[_Db]:
        """One transaction: committed when the block ends, rolled back when it raises.

        Writes take the write lock at once (``BEGIN IMMEDIATE``), so two writers queue up on
        the busy timeout instead of failing half-way.
        """
        connection = self._connection()
        try:
            connection.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        except sqlite3.OperationalError as error:
            raise self._busy(error) from None
        except sqlite3.DatabaseError as error:
            raise self._unusable(error) from None
        try:
            yield _Db(connection, self._clock())
            connection.execute("COMMIT")
        except sqlite3.OperationalError as error:
            connection.rollback()
            raise self._busy(error) from None
        except BaseException:
            connection.rollback()
            raise

    def _busy(self, error: sqlite3.OperationalError) -> StoreError:
        if "locked" in str(error) or "busy" in str(error):
            return StoreError(
                f"The saved conversations are busy: another window kept them locked for more "
                f"than {self.timeout_s:g} s. Try again in a moment."
            )
        return self._unusable(error)

    # ------------------------------------------------------------------ conversations

    def create(self, title: str | None = None, system_prompt: str = "") -> int:
        """Start an empty conversation; without a title it is named after its first question."""
        clean = _clean_title(title or "")
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO conversations (title, auto_title, system_prompt, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?)",
                (clean or NEW_TITLE, not clean, _displayable(system_prompt), db.now, db.now),
            )
            return _rowid(cursor)

    def conversations(self, search: str = "", *, limit: int = 200) -> list[ConversationSummary]:
        """The conversations, most recently changed first; ``search`` matches titles and text.

        The search ignores case and looks at every message, also those of hidden branches.
        """
        query = (
            "SELECT c.id, c.title, c.created_at, c.updated_at, "
            "(SELECT count(*) FROM messages m WHERE m.conversation_id = c.id) "
            "FROM conversations c"
        )
        params: list[Any] = []
        needle = " ".join(search.split())
        if needle:
            query += (
                " WHERE tschat_contains(c.title, ?) OR tschat_contains(c.system_prompt, ?)"
                " OR EXISTS (SELECT 1 FROM messages m WHERE m.conversation_id = c.id"
                " AND tschat_contains(m.content, ?))"
            )
            params += [needle] * 3
        query += " ORDER BY c.updated_at DESC, c.id DESC LIMIT ?"
        params.append(limit)
        with self._transaction(write=False) as db:
            rows = db.execute(query, params).fetchall()
        return [ConversationSummary(*row) for row in rows]

    def rename(self, conversation_id: int, title: str) -> str:
        """Rename a conversation; returns the name it got (blank keeps the old one)."""
        clean = _clean_title(title)
        with self._transaction() as db:
            current = db.conversation(conversation_id)
            if not clean:
                return str(current["title"])
            db.execute(
                "UPDATE conversations SET title = ?, auto_title = 0 WHERE id = ?",
                (clean, conversation_id),
            )
        return clean

    def set_system_prompt(self, conversation_id: int, text: str) -> None:
        """Change the system prompt sent first in every turn of the conversation."""
        with self._transaction() as db:
            db.conversation(conversation_id)
            db.execute(
                "UPDATE conversations SET system_prompt = ?, updated_at = ? WHERE id = ?",
                (_displayable(text), db.now, conversation_id),
            )

    def delete(self, conversation_id: int) -> None:
        """Delete a conversation and all its messages (nothing happens if it is already gone)."""
        with self._transaction() as db:
            db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def load(self, conversation_id: int) -> SavedConversation:
        """The conversation with its visible branch.

        Raises :class:`ConversationNotFound` when it was deleted.
        """
        with self._transaction(write=False) as db:
            row = db.conversation(conversation_id)
            branch = db.execute(
                """
                WITH RECURSIVE branch(id, depth) AS (
                    SELECT shown_child, 0 FROM conversations
                    WHERE id = ? AND shown_child IS NOT NULL
                    UNION ALL
                    SELECT m.shown_child, b.depth + 1 FROM messages m JOIN branch b ON m.id = b.id
                    WHERE m.shown_child IS NOT NULL
                )
                SELECT m.id, m.parent_id, m.role, m.content, m.state, m.stats, m.created_at,
                       m.updated_at, m.details
                FROM branch b JOIN messages m ON m.id = b.id ORDER BY b.depth
                """,
                (conversation_id,),
            ).fetchall()
            family: dict[int | None, list[int]] = {}
            for message_id, parent_id in db.execute(
                "SELECT id, parent_id FROM messages WHERE conversation_id = ? ORDER BY id",
                (conversation_id,),
            ):
                family.setdefault(parent_id, []).append(message_id)
        messages = tuple(
            StoredMessage(
                id=message_id,
                conversation_id=conversation_id,
                parent_id=parent_id,
                role=role,
                content=content,
                state=state,
                stats=_stats_from_db(stats),
                siblings=tuple(family.get(parent_id, [message_id])),
                created_at=created_at,
                updated_at=updated_at,
                details=_details_from_db(details),
            )
            for (
                message_id,
                parent_id,
                role,
                content,
                state,
                stats,
                created_at,
                updated_at,
                details,
            ) in branch
        )
        return SavedConversation(
            id=conversation_id,
            title=row["title"],
            system_prompt=row["system_prompt"],
            messages=messages,
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    # ------------------------------------------------------------------ messages

    def append_question(self, conversation_id: int, text: str) -> int:
        """Add a question at the end of the visible branch; returns its id.

        The first question of a conversation created without a title also names it.
        """
        text = _question_text(text)
        with self._transaction() as db:
            row = db.conversation(conversation_id)
            leaf = db.visible_leaf(conversation_id)
            message_id = db.add_message(conversation_id, leaf, "user", text, "complete")
            if row["auto_title"]:
                db.execute(
                    "UPDATE conversations SET title = ?, auto_title = 0 WHERE id = ?",
                    (_clean_title(text), conversation_id),
                )
            return message_id

    def start_answer(self, question_id: int) -> int:
        """Add an empty answer to a question, saved at once as streaming; returns its id.

        When the question already has answers the new one is their sibling, and is shown.
        """
        with self._transaction() as db:
            question = db.message(question_id)
            if question["role"] != "user":
                raise ValueError(f"message {question_id} is an answer, not a question")
            return db.add_message(
                question["conversation_id"], question_id, "assistant", "", "streaming"
            )

    def update_answer(self, answer_id: int, text: str) -> bool:
        """Save the text streamed so far (callers throttle this); False once it has finished."""
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE messages SET content = ?, updated_at = ? WHERE id = ? AND state = ?",
                (_displayable(text), db.now, answer_id, "streaming"),
            )
            return cursor.rowcount == 1

    def finish_answer(
        self,
        answer_id: int,
        text: str,
        *,
        state: FinalState = "complete",
        stats: AnswerStats | None = None,
        details: AnswerDetails | None = None,
    ) -> bool:
        """Save an answer's final text, how it ended, its figures and how it is shown (JSON,
        token probabilities); the first call wins.

        An answer that was stopped or broke off before any text arrived holds nothing worth
        keeping: it is removed, and the version shown before it is shown again (unless another
        window already asked a question under it). Returns whether the answer was still
        streaming (False: already finished, or deleted meanwhile).
        """
        if state not in FINAL_STATES:
            raise ValueError(f"an answer ends as one of {FINAL_STATES}, not {state!r}")
        with self._transaction() as db:
            row = db.execute(
                "SELECT conversation_id, parent_id FROM messages WHERE id = ? AND state = ?",
                (answer_id, "streaming"),
            ).fetchone()
            if row is None:
                return False
            conversation_id, parent_id = row
            replied = db.execute(
                "SELECT 1 FROM messages WHERE parent_id = ? LIMIT 1", (answer_id,)
            ).fetchone()
            if not text and state != "complete" and replied is None:
                db.remove_message(conversation_id, answer_id, parent_id)
            else:
                db.execute(
                    "UPDATE messages SET content = ?, state = ?, stats = ?, details = ?, "
                    "updated_at = ? WHERE id = ?",
                    (
                        _displayable(text),
                        state,
                        _stats_to_db(stats),
                        _details_to_db(details),
                        db.now,
                        answer_id,
                    ),
                )
            db.touch(conversation_id)
            return True

    def finish_stale_answers(self, older_than_s: float) -> int:
        """Mark as broken off the answers still streaming with no update for ``older_than_s``.

        Their writer is gone (the app stopped, or the page's process crashed): without this
        they would look as if they were still coming. Answers without text are removed, as by
        :meth:`finish_answer`. Returns how many answers were finished.
        """
        with self._transaction(write=False) as db:
            stale = db.execute(
                "SELECT id, content FROM messages WHERE state = ? AND updated_at < ?",
                ("streaming", self._clock() - older_than_s),
            ).fetchall()
        return sum(
            self.finish_answer(answer_id, content, state="broken") for answer_id, content in stale
        )

    def edit_question(self, question_id: int, text: str) -> int:
        """Save an edited question as a new sibling of ``question_id``, shown; returns its id."""
        text = _question_text(text)
        with self._transaction() as db:
            question = db.message(question_id)
            if question["role"] != "user":
                raise ValueError(f"message {question_id} is an answer, not a question")
            return db.add_message(
                question["conversation_id"], question["parent_id"], "user", text, "complete"
            )

    def regenerate(self, answer_id: int) -> int:
        """Start another answer to the question of ``answer_id``, as its sibling; returns its id."""
        with self._transaction(write=False) as db:
            answer = db.message(answer_id)
        if answer["role"] != "assistant" or answer["parent_id"] is None:
            raise ValueError(f"message {answer_id} is not an answer to a question")
        return self.start_answer(answer["parent_id"])

    def choose(self, message_id: int) -> None:
        """Show ``message_id``: it and the messages above it become the visible branch.

        Below it, the branch follows the versions that were shown there before.
        """
        with self._transaction() as db:
            conversation_id = db.message(message_id)["conversation_id"]
            child: int = message_id
            while True:
                parent = db.execute(
                    "SELECT parent_id FROM messages WHERE id = ?", (child,)
                ).fetchone()[0]
                db.set_shown(conversation_id, parent, child)
                if parent is None:
                    return
                child = parent

    def step(self, message_id: int, offset: int) -> int:
        """Show the version ``offset`` places after ``message_id`` (-1: the one before).

        Stops at the first and the last version; returns the id now shown.
        """
        with self._transaction(write=False) as db:
            row = db.message(message_id)
            siblings: list[int] = [
                int(sibling)
                for (sibling,) in db.execute(
                    "SELECT id FROM messages WHERE conversation_id = ? AND parent_id IS ? "
                    "ORDER BY id",
                    (row["conversation_id"], row["parent_id"]),
                )
            ]
        index = min(max(siblings.index(message_id) + offset, 0), len(siblings) - 1)
        self.choose(siblings[index])
        return siblings[index]

    # ------------------------------------------------------------------ export and import

    def export_json(
        self,
        conversation_id: int,
        *,
        model: str | None = None,
        settings: SamplingSettings | None = None,
        now: datetime | None = None,
    ) -> str:
        """The whole tree as JSON (version 2) that :meth:`import_json` loads back.

        Messages are listed parents first; ``"shown": true`` marks the version shown under its
        parent. An answer still streaming is written as broken off, with its text so far.
        """
        with self._transaction(write=False) as db:
            row = db.conversation(conversation_id)
            rows = db.execute(
                "SELECT id, parent_id, role, content, state, stats, shown_child, details "
                "FROM messages WHERE conversation_id = ? ORDER BY id",
                (conversation_id,),
            ).fetchall()
        shown_children = {row["shown_child"]} | {r[6] for r in rows}
        numbers: dict[int, int] = {}
        messages: list[dict[str, Any]] = []
        for message_id, parent_id, role, content, state, stats, _, details in rows:
            numbers[message_id] = len(numbers) + 1
            item: dict[str, Any] = {
                "id": numbers[message_id],
                "parent": None if parent_id is None else numbers[parent_id],
                "role": role,
                "content": content,
            }
            if state != "complete":
                item["state"] = "broken" if state == "streaming" else state
            parsed = _stats_from_db(stats)
            if parsed is not None:
                item["stats"] = parsed.to_json()
            shown_as = _details_from_db(details).format
            if shown_as != "text":
                item["format"] = shown_as
            if message_id in shown_children:
                item["shown"] = True
            messages.append(item)
        data: dict[str, Any] = {
            "format": FORMAT,
            "version": EXPORT_VERSION,
            "name": row["title"],
            "exported_at": (now or datetime.now(timezone.utc)).isoformat(timespec="seconds"),
            "system_prompt": row["system_prompt"],
            "messages": messages,
        }
        if model:
            data["model"] = model
        if settings is not None:
            data["settings"] = asdict(settings) | {"stop": list(settings.stop)}
        return json.dumps(data, ensure_ascii=False, indent=2) + "\n"

    def export_markdown(self, conversation_id: int, model: str | None = None) -> str:
        """The visible branch as a Markdown document."""
        saved = self.load(conversation_id)
        return to_markdown(saved.title, saved.system_prompt, saved.messages, model=model)

    def import_json(self, content: str | bytes, default_title: str = "Imported") -> int:
        """Save an exported conversation (version 1 or 2) as a new one; returns its id.

        Raises :class:`tschat.chat.ConversationFileError` naming the field that is wrong;
        nothing is saved then.
        """
        imported = parse_conversation_file(content, default_title)
        return self.save_imported(imported)

    def save_imported(self, imported: ImportedConversation) -> int:
        """Save a checked import as a new conversation, in one transaction; returns its id."""
        with self._transaction() as db:
            conversation_id = _rowid(
                db.execute(
                    "INSERT INTO conversations (title, system_prompt, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?)",
                    (imported.title, imported.system_prompt, db.now, db.now),
                )
            )
            ids: list[int] = []
            for message in imported.messages:
                parent = None if message.parent is None else ids[message.parent]
                ids.append(
                    db.add_message(
                        conversation_id,
                        parent,
                        message.role,
                        message.content,
                        message.state,
                        stats=message.stats,
                        show=message.shown,
                        details=AnswerDetails(message.format),
                    )
                )
            return conversation_id


class _Db:
    """A connection inside one transaction, with the queries the store repeats."""

    def __init__(self, connection: sqlite3.Connection, now: float) -> None:
        self.connection = connection
        self.now = now

    def execute(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> sqlite3.Cursor:
        return self.connection.execute(sql, params)

    def executescript_in_transaction(self, script: str) -> None:
        # executescript() would COMMIT first; run the statements one by one instead.
        for statement in script.split(";"):
            if statement.strip():
                self.connection.execute(statement)

    def conversation(self, conversation_id: int) -> dict[str, Any]:
        row = self.execute(
            "SELECT title, auto_title, system_prompt, shown_child, created_at, updated_at "
            "FROM conversations WHERE id = ?",
            (conversation_id,),
        ).fetchone()
        if row is None:
            raise ConversationNotFound()
        keys = ("title", "auto_title", "system_prompt", "shown_child", "created_at", "updated_at")
        return dict(zip(keys, row, strict=True))

    def message(self, message_id: int) -> dict[str, Any]:
        row = self.execute(
            "SELECT conversation_id, parent_id, role FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
        if row is None:
            raise ConversationNotFound("This message")
        return dict(zip(("conversation_id", "parent_id", "role"), row, strict=True))

    def visible_leaf(self, conversation_id: int) -> int | None:
        row = self.execute(
            """
            WITH RECURSIVE branch(id) AS (
                SELECT shown_child FROM conversations WHERE id = ? AND shown_child IS NOT NULL
                UNION ALL
                SELECT m.shown_child FROM messages m JOIN branch b ON m.id = b.id
                WHERE m.shown_child IS NOT NULL
            )
            SELECT m.id FROM branch b JOIN messages m ON m.id = b.id
            WHERE m.shown_child IS NULL
            """,
            (conversation_id,),
        ).fetchone()
        return None if row is None else int(row[0])

    def set_shown(self, conversation_id: int, parent_id: int | None, child_id: int | None) -> None:
        if parent_id is None:
            self.execute(
                "UPDATE conversations SET shown_child = ? WHERE id = ?", (child_id, conversation_id)
            )
        else:
            self.execute("UPDATE messages SET shown_child = ? WHERE id = ?", (child_id, parent_id))

    def touch(self, conversation_id: int) -> None:
        self.execute(
            "UPDATE conversations SET updated_at = ? WHERE id = ?", (self.now, conversation_id)
        )

    def add_message(
        self,
        conversation_id: int,
        parent_id: int | None,
        role: Role,
        content: str,
        state: MessageState,
        *,
        stats: AnswerStats | None = None,
        show: bool = True,
        details: AnswerDetails | None = None,
    ) -> int:
        message_id = _rowid(
            self.execute(
                "INSERT INTO messages (conversation_id, parent_id, role, content, state, stats, "
                "details, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    parent_id,
                    role,
                    content,
                    state,
                    _stats_to_db(stats),
                    _details_to_db(details),
                    self.now,
                    self.now,
                ),
            )
        )
        if show:
            self.set_shown(conversation_id, parent_id, message_id)
        self.touch(conversation_id)
        return message_id

    def _shown(self, conversation_id: int, parent_id: int | None) -> int | None:
        if parent_id is None:
            sql, key = "SELECT shown_child FROM conversations WHERE id = ?", conversation_id
        else:
            sql, key = "SELECT shown_child FROM messages WHERE id = ?", parent_id
        row = self.execute(sql, (key,)).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def remove_message(self, conversation_id: int, message_id: int, parent_id: int | None) -> None:
        self.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        if self._shown(conversation_id, parent_id) == message_id:
            row = self.execute(
                "SELECT max(id) FROM messages WHERE conversation_id = ? AND parent_id IS ?",
                (conversation_id, parent_id),
            ).fetchone()
            self.set_shown(conversation_id, parent_id, row[0])


# ---------------------------------------------------------------------------- import checks


def parse_conversation_file(
    content: str | bytes, default_title: str = "Imported"
) -> ImportedConversation:
    """Check an exported conversation field by field.

    Reads the tree format (version 2), the linear format of :func:`tschat.chat.to_json`
    (version 1) and a bare OpenAI-style ``messages`` list. Text must be displayable (no NUL,
    no lone surrogate), numbers in range, sizes bounded.

    Raises :class:`tschat.chat.ConversationFileError` whose reason names the field.

    >>> parse_conversation_file('[{"role": "user", "content": "Hi"}]').messages[0].content
    'Hi'
    >>> try:
    ...     parse_conversation_file('{"messages": [{"role": "assistant", "content": "x",'
    ...                             ' "stats": {"completion_tokens": 1e300}}]}')
    ... except ConversationFileError as error:
    ...     print(error.reason)
    messages[0].stats.completion_tokens must be between 0 and 10,000,000; got 1e+300.
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
        raise ConversationFileError(f"its format is {_show(data['format'])}, not {FORMAT!r}.")
    version = data.get("version", 1)
    if isinstance(version, bool) or version not in (1, EXPORT_VERSION):
        raise ConversationFileError(
            f"it was saved as version {_show(version)}; this app reads versions 1 and "
            f"{EXPORT_VERSION}."
        )
    name = data.get("name", default_title)
    title = _clean_title(_checked_text(name, "name", MAX_TEXT_CHARS)) or _clean_title(default_title)
    system_prompt = _checked_text(data.get("system_prompt", ""), "system_prompt", MAX_TEXT_CHARS)
    raw_messages = data.get("messages")
    if not isinstance(raw_messages, list):
        raise ConversationFileError("it has no `messages` list.")
    if len(raw_messages) > MAX_MESSAGES:
        raise ConversationFileError(f"it has more than {MAX_MESSAGES:,} messages.")
    if version == 1:
        system_prompt, messages = _linear_messages(raw_messages, system_prompt)
    else:
        messages = _tree_messages(raw_messages)
    return ImportedConversation(title or NEW_TITLE, system_prompt, tuple(messages))


def _linear_messages(raw: list[Any], system_prompt: str) -> tuple[str, list[ImportedMessage]]:
    """Version 1: each message answers the one before it."""
    messages: list[ImportedMessage] = []
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise ConversationFileError(f"{where} must be an object with role and content.")
        if item.get("role") == "system" and index == 0 and not system_prompt:
            system_prompt = _checked_text(item.get("content"), f"{where}.content", MAX_TEXT_CHARS)
            continue
        role, text, stats = _message_fields(item, where)
        stopped = item.get("stopped", False)
        if not isinstance(stopped, bool):
            raise ConversationFileError(f"{where}.stopped must be true or false.")
        state: FinalState = "complete"
        if stopped:
            state = "stopped"
        elif stats is not None and stats.finish_reason == BROKEN:
            state = "broken"
        parent = len(messages) - 1 if messages else None
        messages.append(ImportedMessage(parent, role, text, state, stats, shown=True))
    return system_prompt, messages


def _tree_messages(raw: list[Any]) -> list[ImportedMessage]:
    """Version 2: ``id`` and ``parent`` link the messages; ``shown`` picks the visible versions."""
    messages: list[ImportedMessage] = []
    index_of: dict[int, int] = {}
    shown_under: dict[int | None, int] = {}
    for index, item in enumerate(raw):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise ConversationFileError(f"{where} must be an object with id, role and content.")
        key = _checked_number(item.get("id"), f"{where}.id", 0, 2**53, whole=True)
        if key in index_of:
            raise ConversationFileError(
                f"{where}.id is {key:g}, already used by messages[{index_of[int(key)]}]."
            )
        parent_key = item.get("parent")
        parent: int | None = None
        if parent_key is not None:
            number = _checked_number(parent_key, f"{where}.parent", 0, 2**53, whole=True)
            if number not in index_of:
                raise ConversationFileError(
                    f"{where}.parent must be the id of an earlier message; got {number:g}."
                )
            parent = index_of[int(number)]
        role, text, stats = _message_fields(item, where)
        state = cast(
            FinalState, _answer_choice(item, "state", FINAL_STATES, "complete", role, where)
        )
        shown_as = cast(
            AnswerFormat, _answer_choice(item, "format", ANSWER_FORMATS, "text", role, where)
        )
        shown = item.get("shown", False)
        if not isinstance(shown, bool):
            raise ConversationFileError(f"{where}.shown must be true or false.")
        if shown:
            if parent in shown_under:
                raise ConversationFileError(
                    f"{where}.shown is true, but messages[{shown_under[parent]}] is already the "
                    "shown version at that place."
                )
            shown_under[parent] = index
        index_of[int(key)] = index
        messages.append(ImportedMessage(parent, role, text, state, stats, shown, shown_as))
    # Where the file marks no version as shown, the newest one is.
    last_child = {message.parent: index for index, message in enumerate(messages)}
    return [
        replace(message, shown=True)
        if shown_under.get(message.parent, last_child[message.parent]) == index
        else message
        for index, message in enumerate(messages)
    ]


def _answer_choice(
    item: Mapping[str, Any],
    key: str,
    choices: Sequence[str],
    default: str,
    role: Role,
    where: str,
) -> str:
    """``item[key]``, one of ``choices``; anything but ``default`` only on an answer."""
    value = item.get(key, default)
    if value not in choices:
        raise ConversationFileError(
            f"{where}.{key} must be one of {', '.join(choices)}; got {_show(value)}."
        )
    if value != default and role != "assistant":
        raise ConversationFileError(f"{where} is a question; only answers have a {key}.")
    return str(value)


def _message_fields(item: Mapping[str, Any], where: str) -> tuple[Role, str, AnswerStats | None]:
    role = item.get("role")
    if role != "user" and role != "assistant":
        raise ConversationFileError(
            f'{where}.role must be "user" or "assistant", not {_show(role)}.'
        )
    text = _checked_text(item.get("content"), f"{where}.content", MAX_TEXT_CHARS)
    stats = None
    if item.get("stats") is not None:
        if role != "assistant":
            raise ConversationFileError(f"{where} is a question; only answers have stats.")
        stats = parse_stats(item["stats"], f"{where}.stats")
    return role, text, stats


def parse_stats(data: object, where: str) -> AnswerStats:
    """Check the ``stats`` object of a saved answer: known fields, numbers in range.

    >>> parse_stats({"ttft_ms": 12.5, "completion_tokens": 3}, "stats").summary()
    'first token 12 ms · 3 tokens'
    >>> try:
    ...     parse_stats({"prompt_tokens": 2.5}, "stats")
    ... except ConversationFileError as error:
    ...     print(error.reason)
    stats.prompt_tokens must be a whole number; got 2.5.
    """
    if not isinstance(data, Mapping):
        raise ConversationFileError(f"{where} must be an object.")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue
        field = f"{where}.{key}"
        if key in STATS_LIMITS:
            low, high, whole = STATS_LIMITS[key]
            number = _checked_number(value, field, low, high, whole=whole)
            values[key] = int(number) if whole else float(number)
        elif key in ("finish_reason", "model"):
            values[key] = _checked_text(value, field, MAX_LABEL_CHARS)
        elif key == "estimated":
            if not isinstance(value, bool):
                raise ConversationFileError(f"{field} must be true or false.")
            values[key] = value
    return AnswerStats(**values)


def _checked_text(value: object, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise ConversationFileError(f"{where} must be text.")
    bad = _UNDISPLAYABLE.search(value)
    if bad is not None:
        what = "a NUL character" if bad.group() == "\x00" else "a lone surrogate"
        raise ConversationFileError(
            f"{where} contains {what} (U+{ord(bad.group()):04X} at character {bad.start()}), "
            "which cannot be displayed."
        )
    if len(value) > limit:
        raise ConversationFileError(f"{where} is longer than {limit:,} characters.")
    return value


def _checked_number(value: object, where: str, low: float, high: float, *, whole: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConversationFileError(f"{where} must be a number; got {_show(value)}.")
    if not (math.isfinite(value) and low <= value <= high):
        raise ConversationFileError(
            f"{where} must be between {_number(low)} and {_number(high)}; got {_show(value)}."
        )
    if whole and not float(value).is_integer():
        raise ConversationFileError(f"{where} must be a whole number; got {value!r}.")
    return float(value)


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,}"


def _show(value: object, limit: int = 40) -> str:
    """A short, displayable rendering of a value from a file, for an error message."""
    if isinstance(value, float):
        return f"{value:g}"
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------- helpers


def _create_private(path: Path) -> None:
    """Create the folder (0700) and an empty database file (0600) unless they exist.

    Missing folders above it (the run folder, say) are created owner-only too.
    """
    missing = [folder for folder in (path.parent, *path.parent.parents) if not folder.exists()]
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path.parent, 0o700)
    # O_CREAT with 0600: the file never exists with wider permissions, even for an instant.
    # SQLite gives its -wal and -shm files the same permissions as the database file.
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
    finally:
        os.close(descriptor)


def _clean_title(text: str) -> str:
    """One line of at most MAX_NAME_LENGTH characters, displayable.

    >>> _clean_title("  What is\\n  a  KV cache?  ")
    'What is a KV cache?'
    """
    return " ".join(_displayable(text).split())[:MAX_NAME_LENGTH]


def _displayable(text: str) -> str:
    """``text`` with NUL characters and lone surrogates replaced by U+FFFD."""
    return _UNDISPLAYABLE.sub("\ufffd", text)


def _question_text(text: str) -> str:
    if not text.strip():
        raise ValueError("a question needs some text")
    return _displayable(text)


def _contains(text: str | None, needle: str | None) -> bool:
    """SQL function ``tschat_contains``: ``needle`` in ``text``, ignoring case (any script)."""
    if not text or not needle:
        return False
    return needle.casefold() in text.casefold()


def _rowid(cursor: sqlite3.Cursor) -> int:
    if cursor.lastrowid is None:
        raise StoreError("SQLite did not return the id of a new row.")
    return cursor.lastrowid


def _stats_to_db(stats: AnswerStats | None) -> str | None:
    return None if stats is None else json.dumps(stats.to_json(), ensure_ascii=False)


def _details_to_db(details: AnswerDetails | None) -> str | None:
    data = None if details is None else details.to_json()
    return None if data is None else json.dumps(data, ensure_ascii=False)


def _details_from_db(text: str | None) -> AnswerDetails:
    if text is None:
        return AnswerDetails()
    try:
        return AnswerDetails.from_json(json.loads(text))
    except ValueError:
        return AnswerDetails()


def _stats_from_db(text: str | None) -> AnswerStats | None:
    """Stats saved with an answer; figures that do not pass the import checks are dropped."""
    if text is None:
        return None
    try:
        return parse_stats(json.loads(text), "stats")
    except (ValueError, ConversationFileError):
        return None


__all__ = [
    "EXPORT_VERSION",
    "FINAL_STATES",
    "SCHEMA_VERSION",
    "STATS_LIMITS",
    "ConversationNotFound",
    "ConversationStore",
    "ConversationSummary",
    "FinalState",
    "ImportedConversation",
    "ImportedMessage",
    "MessageState",
    "SavedConversation",
    "StoreError",
    "StoredMessage",
    "parse_conversation_file",
    "parse_stats",
    "store_path",
]
