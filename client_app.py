"""Chat with a model served by TorchServe: saved, branching conversations, live speed, structured
answers, token probabilities, and one question to several models or settings side by side.

    streamlit run client_app.py --server.port 8502

Widgets and session state only: conversations are saved by ``tschat.chat.store``, a turn is
fitted to the context window and started by ``tschat.chat.turns``, HTTP is ``tschat.api``, and
``apps/chat_view.py`` draws the messages.

Any click reruns the script. An answer in flight is a ``PendingAnswer`` whose own thread reads the
stream and saves the text as it grows, so a rerun loses nothing: the page draws the answer in a
fragment that redraws itself a few times a second until the answer ends, then reruns the page.
A reload starts a new Streamlit session: the conversation's id is in the address (``?c=ID``), so
the new session opens it again, and follows its answer if it is still streaming (``LiveAnswers``).
"""

from __future__ import annotations

import re
import time
from typing import Any

import streamlit as st

from apps.chat_status import status_message
from apps.chat_view import answer_note, draw_text, draw_tokens, meter_line
from apps.safe_markdown import safe_markdown
from tschat.api.inference import InferenceClient
from tschat.api.keys import KeyStore
from tschat.api.management import ManagementClient
from tschat.chat.answer import LiveAnswers, PendingAnswer
from tschat.chat.request import (
    DEFAULT_TOP_LOGPROBS,
    MAX_TOP_LOGPROBS,
    MODES,
    SCHEMA_EXAMPLES,
    TOOL_CHOICES,
    TOOL_EXAMPLES,
    AnswerOptions,
    answer_options,
    example_text,
)
from tschat.chat.sampling import KNOBS, SEED_MAX, SamplingSettings, parse_stop_sequences
from tschat.chat.status import ServerCheck, check_server, server_address
from tschat.chat.store import (
    ConversationNotFound,
    ConversationStore,
    SavedConversation,
    StoredMessage,
    store_path,
)
from tschat.chat.turns import (
    ORPHAN_AFTER_S,
    Pane,
    TokenCounter,
    answer_question,
    ask_panes,
    settle_orphans,
)
from tschat.errors import TsChatError
from tschat.settings import Settings

REFRESH_S = 0.5  # how often a streaming answer is redrawn (twice a second)
CHAT, SIDE_BY_SIDE = "Chat", "Side by side"
MAX_PANES = 4
LISTED_CONVERSATIONS = 50
FINISHING_S = 2.0  # the longest an ended answer's last save is waited for before a page is drawn

# Session state keys.
SHOWN = "chat_shown"  # id of the conversation on screen; None: a new chat, saved at its question
ASK = "chat_ask"  # id of a question whose answer this run starts, or None
EDITING = "chat_editing"  # id of the question being edited, or None
NOTICE = "chat_notice"  # an error to show once, above the conversation
NOTES = "chat_notes"  # answer id -> what its request left out to fit the context window
STARTED = "chat_started"  # answer id -> PendingAnswer started here (to report how it ended)
PANE_ASK = "chat_pane_ask"  # a question for every pane, sent in this run
PANES = "chat_panes"  # (question, [PendingAnswer per pane]) of the last side-by-side question
STORE = "chat_store"  # the ConversationStore of the run folder
CLIENTS = "chat_clients"  # (connection, InferenceClient, ManagementClient | None)
IMPORT_ROUND = "chat_import_round"  # changes the uploader's key to empty it after a load
# Widget keys.
W_VIEW = "w_view"
W_QUESTION = "w_question"
W_PANE_QUESTION = "w_pane_question"
W_MODEL = "w_model"
W_SYSTEM = "w_system"
W_SEARCH = "w_search"
W_RENAME = "w_rename"
W_SEED = "w_seed"
W_STOP_SEQUENCES = "w_stop_sequences"
W_EDIT = "w_edit"
W_MODE = "w_mode"
W_SCHEMA = "w_schema"
W_SCHEMA_EXAMPLE = "w_schema_example"
W_TOOLS = "w_tools"
W_TOOL_EXAMPLE = "w_tool_example"
W_TOOL_CHOICE = "w_tool_choice"
W_PROBABILITIES = "w_probabilities"
W_TOP_LOGPROBS = "w_top_logprobs"
W_TRIM = "w_trim"
W_PANE_COUNT = "w_pane_count"
W_REMOTE_URL = "w_remote_url"
W_REMOTE_KEY = "w_remote_key"
W_REMOTE_MANAGEMENT_URL = "w_remote_management_url"
W_REMOTE_MANAGEMENT_KEY = "w_remote_management_key"
ADDRESS_PARAM = "c"  # ?c=ID: the conversation shown, so that a reload opens it again


def knob_key(name: str, pane: int | None = None) -> str:
    return f"w_{name}" if pane is None else f"w_pane{pane}_{name}"


# ---------------------------------------------------------------------------- resources


@st.cache_resource(show_spinner=False)
def open_store(path: str) -> ConversationStore:
    """The conversation store of this process (one per file; its connections are per thread).

    Answers left streaming when the app last stopped are finished as broken off.
    """
    store = ConversationStore(path)
    store.finish_stale_answers(older_than_s=ORPHAN_AFTER_S)
    return store


@st.cache_resource(show_spinner=False)
def live_answers() -> LiveAnswers:
    """The answers streaming in this process, which any session (a reloaded page) may follow."""
    return LiveAnswers()


@st.cache_resource(show_spinner=False)
def token_counter(server: str, model: str) -> TokenCounter:
    """The token counts of a server's model, shared by every session (and kept on a reload)."""
    return TokenCounter(model)


# ---------------------------------------------------------------------------- state


def init_state() -> None:
    defaults: dict[str, Any] = {
        ASK: None,
        EDITING: None,
        NOTICE: None,
        NOTES: {},
        STARTED: {},
        PANE_ASK: None,
        PANES: None,
        IMPORT_ROUND: 0,
        W_VIEW: CHAT,
        W_SYSTEM: "",
        W_SEARCH: "",
        W_RENAME: "",
        W_SEED: None,
        W_STOP_SEQUENCES: "",
        W_MODE: "text",
        W_SCHEMA_EXAMPLE: next(iter(SCHEMA_EXAMPLES)),
        W_SCHEMA: example_text(next(iter(SCHEMA_EXAMPLES.values()))),
        W_TOOL_EXAMPLE: next(iter(TOOL_EXAMPLES)),
        W_TOOLS: example_text(next(iter(TOOL_EXAMPLES.values()))),
        W_TOOL_CHOICE: "auto",
        W_PROBABILITIES: False,
        W_TOP_LOGPROBS: DEFAULT_TOP_LOGPROBS,
        W_TRIM: True,
        W_PANE_COUNT: 2,
    }
    for pane in range(MAX_PANES):
        defaults[knob_key("seed", pane)] = None
        defaults.update({knob_key(knob.name, pane): knob.default for knob in KNOBS})
    defaults.update({knob_key(knob.name): knob.default for knob in KNOBS})
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)


def store() -> ConversationStore:
    value: ConversationStore = st.session_state[STORE]
    return value


def shown_id() -> int | None:
    value: int | None = st.session_state.get(SHOWN)
    return value


def show(conversation_id: int | None) -> None:
    """Put ``conversation_id`` (None: a new chat) on screen, and its id in the address."""
    st.session_state[SHOWN] = conversation_id
    st.session_state[EDITING] = None
    if conversation_id is None:
        st.query_params.pop(ADDRESS_PARAM, None)
        st.session_state[W_RENAME] = ""
        return
    st.query_params[ADDRESS_PARAM] = str(conversation_id)
    saved = store().load(conversation_id)
    st.session_state[W_RENAME] = saved.title
    st.session_state[W_SYSTEM] = saved.system_prompt


def open_from_address() -> None:
    """A new session (a reload, a link) opens the conversation named in the address."""
    if SHOWN in st.session_state:
        return
    st.session_state[SHOWN] = None
    wanted = st.query_params.get(ADDRESS_PARAM, "")
    if not wanted:
        return
    try:
        show(int(wanted))
    except (ValueError, ConversationNotFound):
        show(None)
        st.session_state[NOTICE] = (
            "The conversation in the address no longer exists; pick one in the sidebar."
        )


def streaming_here(saved: SavedConversation | None) -> dict[int, PendingAnswer]:
    """The answers of the shown conversation streaming in this process, by id, each looked up
    once: an answer that ends later is still in the result."""
    if saved is None:
        return {}
    return {
        m.id: answer
        for m in saved.messages
        if m.state == "streaming" and (answer := live_answers().get(m.id)) is not None
    }


def busy(saved: SavedConversation | None) -> bool:
    """Whether an answer of the shown conversation is streaming in this process."""
    return bool(streaming_here(saved))


# ---------------------------------------------------------------------------- callbacks


def on_question() -> None:
    text = st.session_state.get(W_QUESTION) or ""
    if not text.strip():
        return
    conversation = shown_id()
    if conversation is None:
        conversation = store().create(system_prompt=st.session_state[W_SYSTEM])
    elif busy(store().load(conversation)):
        return
    st.session_state[ASK] = store().append_question(conversation, text)
    show(conversation)


def on_stop(answer_id: int) -> None:
    answer = live_answers().get(answer_id)
    if answer is not None:
        answer.stop()  # saves the text so far, marked as stopped


def on_regenerate(answer: StoredMessage) -> None:
    st.session_state[ASK] = answer.parent_id


def on_retry(question_id: int) -> None:
    st.session_state[ASK] = question_id


def on_edit(question: StoredMessage) -> None:
    st.session_state[W_EDIT] = question.content
    st.session_state[EDITING] = question.id


def on_resend() -> None:
    question_id = st.session_state[EDITING]
    text = st.session_state.get(W_EDIT) or ""
    st.session_state[EDITING] = None
    if question_id is not None and text.strip():
        st.session_state[ASK] = store().edit_question(question_id, text)


def on_cancel_edit() -> None:
    st.session_state[EDITING] = None


def on_step(message_id: int, offset: int) -> None:
    store().step(message_id, offset)
    st.session_state[EDITING] = None


def on_new_conversation() -> None:
    show(None)


def on_open(conversation_id: int) -> None:
    show(conversation_id)


def on_rename() -> None:
    conversation = shown_id()
    if conversation is not None:
        st.session_state[W_RENAME] = store().rename(conversation, st.session_state[W_RENAME])


def on_delete_conversation() -> None:
    conversation = shown_id()
    if conversation is not None:
        store().delete(conversation)
    show(None)


def on_system_prompt() -> None:
    conversation = shown_id()
    if conversation is not None:
        store().set_system_prompt(conversation, st.session_state[W_SYSTEM])


def on_import() -> None:
    uploaded = st.session_state.get(import_key())
    st.session_state[IMPORT_ROUND] += 1  # a fresh, empty uploader next run
    if uploaded is None:
        return
    title = re.sub(r"\.json$", "", uploaded.name, flags=re.IGNORECASE) or "Imported"
    try:
        conversation = store().import_json(uploaded.getvalue(), default_title=title)
    except TsChatError as error:
        st.session_state[NOTICE] = error.message
        return
    show(conversation)


def on_schema_example() -> None:
    st.session_state[W_SCHEMA] = example_text(SCHEMA_EXAMPLES[st.session_state[W_SCHEMA_EXAMPLE]])


def on_tool_example() -> None:
    st.session_state[W_TOOLS] = example_text(TOOL_EXAMPLES[st.session_state[W_TOOL_EXAMPLE]])


def on_reset_sampling() -> None:
    for knob in KNOBS:
        st.session_state[knob_key(knob.name)] = knob.default
    st.session_state[W_SEED] = None
    st.session_state[W_STOP_SEQUENCES] = ""


def on_pane_question() -> None:
    text = st.session_state.get(W_PANE_QUESTION) or ""
    if text.strip():
        st.session_state[PANE_ASK] = text


def on_stop_panes() -> None:
    for answer in (st.session_state[PANES] or ("", []))[1]:
        answer.stop()


def import_key() -> str:
    return f"w_import_{st.session_state[IMPORT_ROUND]}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "conversation"


# ---------------------------------------------------------------------------- connection


def connect(settings: Settings) -> tuple[InferenceClient | None, ServerCheck | None, str | None]:
    """Clients for the local TorchServe or the remote one typed in, and what it answers.

    Never raises: a bad address or a strange answer is a sentence (the third value).
    """
    try:
        remote_url = _address(W_REMOTE_URL)
        management_url = _address(W_REMOTE_MANAGEMENT_URL)
    except TsChatError as error:
        return None, None, f"{error.message} Fix the remote server address in the sidebar."
    remote_key = (st.session_state.get(W_REMOTE_KEY) or "").strip()
    management_key = (st.session_state.get(W_REMOTE_MANAGEMENT_KEY) or "").strip()
    connection = (settings, remote_url, remote_key, management_url, management_key)
    cached = st.session_state.get(CLIENTS)
    if cached is not None and cached[0] == connection:
        inference, management = cached[1], cached[2]
    else:
        if remote_url:
            inference = InferenceClient(remote_url, remote_key or None, settings.request_timeout_s)
            management = None
            if management_url:
                keys = KeyStore.explicit(management=management_key or None)
                management = ManagementClient(settings, keys, base_url=management_url)
        else:
            # Keys come from TorchServe's key file and are refreshed when they expire.
            keys = KeyStore(settings)
            inference = InferenceClient.from_settings(settings, keys)
            management = ManagementClient(settings, keys)
        st.session_state[CLIENTS] = (connection, inference, management)
    model = str(st.session_state.get(W_MODEL) or settings.model_name)
    return inference, check_server(inference, management, model), None


def _address(key: str) -> str:
    text = (st.session_state.get(key) or "").strip()
    return server_address(text) if text else ""


# ---------------------------------------------------------------------------- sidebar


def sidebar(settings: Settings, check: ServerCheck | None, problem: str | None) -> None:
    """Draw the sidebar (always, whatever the server answered, so the address can be fixed)."""
    with st.sidebar:
        conversations_section()
        st.header("Model")
        model_picker(settings, check, W_MODEL)
        st.text_area(
            "System prompt",
            key=W_SYSTEM,
            on_change=on_system_prompt,
            placeholder="e.g. You are a concise assistant.",
            help="Sent first in every turn of this conversation.",
        )
        st.toggle(
            "Leave out the oldest turns when the window is full",
            key=W_TRIM,
            help="Off: a conversation too long for the model's context window is refused with "
            "a message saying so.",
        )
        answer_section()
        if problem:
            st.error(problem)
        remote_section(settings)


def conversations_section() -> None:
    st.header("Conversations")
    st.button(
        "New chat", icon=":material/add:", on_click=on_new_conversation, key="w_new_conversation"
    )
    st.text_input("Search", key=W_SEARCH, placeholder="Search titles and messages")
    found = store().conversations(st.session_state[W_SEARCH], limit=LISTED_CONVERSATIONS)
    with st.container(key="conversation_list", height=220 if len(found) > 6 else "content"):
        for summary in found:
            current = summary.id == shown_id()
            st.button(
                summary.title,
                key=f"w_open_{summary.id}",
                on_click=on_open,
                args=(summary.id,),
                type="primary" if current else "tertiary",
                help=f"{summary.message_count} messages",
                width="stretch",
            )
        if not found:
            st.caption("No conversation matches." if st.session_state[W_SEARCH] else "None yet.")
    st.file_uploader(
        "Import a conversation (JSON)",
        type=["json"],
        key=import_key(),
        on_change=on_import,
        help="A file saved with the JSON button (any version), or an OpenAI-style list of "
        "{role, content} messages.",
    )
    conversation = shown_id()
    if conversation is None:
        return
    st.text_input("Name", key=W_RENAME, on_change=on_rename)
    model = str(st.session_state.get(W_MODEL) or "")
    title = _slug(st.session_state[W_RENAME])
    # A row that wraps: three columns of the sidebar's width cut the labels short.
    row = st.container(horizontal=True)
    row.download_button(
        "Markdown",
        store().export_markdown(conversation, model=model or None),
        file_name=f"{title}.md",
        mime="text/markdown",
        icon=":material/download:",
        on_click="ignore",
        key="w_download_md",
    )
    sampling, _ = read_sampling()
    row.download_button(
        "JSON",
        store().export_json(conversation, model=model or None, settings=sampling),
        file_name=f"{title}.json",
        mime="application/json",
        icon=":material/download:",
        on_click="ignore",
        key="w_download_json",
    )
    row.button(
        "Delete",
        icon=":material/delete:",
        on_click=on_delete_conversation,
        key="w_delete_conversation",
    )


def model_picker(settings: Settings, check: ServerCheck | None, key: str) -> None:
    choices = {choice.name: choice for choice in (check.models if check else ())}
    if check is not None and check.listed and choices:
        names = list(choices)
        if st.session_state.get(key) not in names:
            st.session_state[key] = (
                settings.model_name if settings.model_name in names else names[0]
            )
        st.selectbox(
            "Model",
            names,
            key=key,
            format_func=lambda name: choices[name].label,
            help="The models registered in TorchServe, with their state.",
        )
    else:
        st.session_state.setdefault(key, settings.model_name)
        st.text_input("Model", key=key, help="Name of a model registered in TorchServe.")


def knobs(pane: int | None = None) -> None:
    """The sampling sliders (every parameter of the request contract the chat offers)."""
    for knob in KNOBS:
        cast = int if knob.whole else float
        st.slider(
            knob.label,
            cast(knob.low),
            cast(knob.high),
            step=cast(knob.step),
            key=knob_key(knob.name, pane),
            help=knob.help,
        )
    st.number_input(
        "Seed",
        min_value=0,
        max_value=SEED_MAX,
        step=1,
        key=knob_key("seed", pane),
        placeholder="random",
        help="The same seed, settings and conversation give the same answer. Empty: random.",
    )


def answer_section() -> None:
    st.header("Sampling")
    knobs()
    st.text_area(
        "Stop sequences",
        key=W_STOP_SEQUENCES,
        height=80,
        placeholder="one per line, up to 4 (\\n = new line)",
        help="The answer ends before any of these texts.",
    )
    st.button("Reset sampling", on_click=on_reset_sampling, key="w_reset_sampling")

    st.header("Answer")
    st.radio(
        "Format",
        list(MODES),
        key=W_MODE,
        format_func=MODES.__getitem__,
        horizontal=True,
        help="JSON schema: the answer is JSON valid against the schema (sampled under a "
        "grammar). Tools: the model may call the functions you describe.",
    )
    mode = st.session_state[W_MODE]
    if mode == "json_schema":
        st.selectbox(
            "Example schema",
            list(SCHEMA_EXAMPLES),
            key=W_SCHEMA_EXAMPLE,
            on_change=on_schema_example,
        )
        st.text_area("JSON schema", key=W_SCHEMA, height=200)
    elif mode == "tools":
        st.selectbox(
            "Example tools", list(TOOL_EXAMPLES), key=W_TOOL_EXAMPLE, on_change=on_tool_example
        )
        st.text_area("Tools (OpenAI's format)", key=W_TOOLS, height=200)
        st.selectbox("Tool choice", TOOL_CHOICES, key=W_TOOL_CHOICE)
    st.toggle(
        "Token probabilities",
        key=W_PROBABILITIES,
        help="Ask for each token's probability and its likeliest alternatives, and show them "
        "under the answers.",
    )
    if st.session_state[W_PROBABILITIES]:
        st.slider("Alternatives per token", 1, MAX_TOP_LOGPROBS, key=W_TOP_LOGPROBS)


def read_sampling(pane: int | None = None) -> tuple[SamplingSettings, str | None]:
    """The sampling settings from the widgets; on a bad value, the defaults and why."""
    try:
        values: dict[str, Any] = {
            knob.name: st.session_state[knob_key(knob.name, pane)] for knob in KNOBS
        }
        seed = st.session_state.get(knob_key("seed", pane))
        values["seed"] = None if seed is None else int(seed)
        if pane is None:
            values["stop"] = parse_stop_sequences(st.session_state.get(W_STOP_SEQUENCES) or "")
        return SamplingSettings(**values), None
    except TsChatError as error:
        return SamplingSettings(), f"{error.message} The default sampling settings are used."


def read_options() -> tuple[AnswerOptions, str | None]:
    """The request options from the widgets; on a mistake, plain text answers and why."""
    sampling, problem = read_sampling()
    probabilities = bool(st.session_state[W_PROBABILITIES])
    try:
        options = answer_options(
            sampling,
            mode=st.session_state[W_MODE],
            schema_text=st.session_state[W_SCHEMA],
            tools_text=st.session_state[W_TOOLS],
            tool_choice=st.session_state[W_TOOL_CHOICE],
            top_logprobs=int(st.session_state[W_TOP_LOGPROBS]) if probabilities else None,
        )
    except TsChatError as error:
        return AnswerOptions(sampling), f"{error.message} Plain text answers are asked for."
    return options, problem


def remote_section(settings: Settings) -> None:
    with st.expander("Remote server"):
        st.caption(
            "Leave empty to use the local TorchServe (its keys are read from "
            f"{settings.key_file}). An address is a scheme, host and port only."
        )
        st.text_input("Inference URL", key=W_REMOTE_URL, placeholder="http://host:8080")
        st.text_input("Inference key", key=W_REMOTE_KEY, type="password")
        st.text_input(
            "Management URL (optional)", key=W_REMOTE_MANAGEMENT_URL, placeholder="http://host:8081"
        )
        st.text_input("Management key", key=W_REMOTE_MANAGEMENT_KEY, type="password")


# ---------------------------------------------------------------------------- the chat


def draw_status(check: ServerCheck) -> None:
    text, button = st.columns([6, 1], vertical_alignment="center")
    draw = {"ok": text.success, "warning": text.warning, "error": text.error}[check.level]
    # Through safe Markdown: a remote server's words are plain text, its links never load.
    draw(
        safe_markdown(status_message(check)),
        icon={"ok": "✅", "warning": "⏳", "error": "🛑"}[check.level],
    )
    button.button("Check", help="Ask TorchServe again", key="w_check")


def draw_branch_controls(message: StoredMessage, locked: bool) -> None:
    """``◀ 2/3 ▶`` for a message with other versions."""
    if message.sibling_count < 2:
        return
    with st.container(
        horizontal=True, vertical_alignment="center", gap=None, key=f"branch_{message.id}"
    ):
        st.button(
            "◀",
            key=f"w_prev_{message.id}",
            on_click=on_step,
            args=(message.id, -1),
            disabled=locked or message.previous_sibling is None,
            type="tertiary",
            help="The version before this one",
        )
        st.markdown(message.position)
        st.button(
            "▶",
            key=f"w_next_{message.id}",
            on_click=on_step,
            args=(message.id, 1),
            disabled=locked or message.next_sibling is None,
            type="tertiary",
            help="The version after this one",
        )


def draw_message(message: StoredMessage, locked: bool, probabilities: bool) -> None:
    with st.chat_message(message.role):
        if message.role == "user":
            draw_text(message.content)
        else:
            draw_text(message.content, message.details.format)
            if probabilities:
                draw_tokens(message.details.tokens)
            note = answer_note(message.state, message.stats, message.details.format)
            left_out = st.session_state[NOTES].get(message.id)
            if left_out:
                note = f"{note} · {left_out}" if note else left_out
            if note:
                st.caption(note)
        with st.container(horizontal=True, vertical_alignment="center"):
            draw_branch_controls(message, locked)
            question = message.role == "user"
            st.button(
                "Edit" if question else "Regenerate",
                icon=":material/edit:" if question else ":material/refresh:",
                key=f"w_{'edit' if question else 'regenerate'}_{message.id}",
                on_click=on_edit if question else on_regenerate,
                args=(message,),
                disabled=locked,
                type="tertiary",
            )


def draw_editor(question: StoredMessage) -> None:
    with st.chat_message("user"), st.container(border=True):
        st.text_area("Edit the question", key=W_EDIT, height=100)
        st.caption("Sending makes a new version; the earlier one stays (◀ ▶).")
        row = st.container(horizontal=True)
        row.button("Send", type="primary", on_click=on_resend, key="w_resend")
        row.button("Cancel", on_click=on_cancel_edit, key="w_cancel_edit")


@st.fragment(run_every=REFRESH_S)
def follow_answer(answer_id: int, probabilities: bool) -> None:
    """Draw a streaming answer and redraw it a few times a second; rerun the page when it ends."""
    answer = live_answers().get(answer_id)
    if answer is None or answer.view().finished:
        st.rerun()  # the page shows it as saved
    view = answer.view()
    with st.chat_message("assistant"):
        draw_text(view.text, view.format, streaming=True)
        if probabilities:
            draw_tokens(view.tokens)
        line = view.reading.label()
        left_out = st.session_state[NOTES].get(answer_id)
        st.caption(f"{line} · {left_out}" if left_out else line)
        st.button(
            "Stop",
            icon=":material/stop_circle:",
            on_click=on_stop,
            args=(answer_id,),
            key="w_stop",
        )


def report_finished() -> None:
    """Say once how the answers this session started went wrong, if they did.

    Called after the shown conversation was loaded: an answer saved as ended there has ended
    here too, and its last save (which sets its figures) is waited for, so the page that first
    draws it ended also says why.
    """
    started: dict[int, PendingAnswer] = st.session_state[STARTED]
    for answer_id, answer in list(started.items()):
        if not answer.finished or not answer.wait_saved(FINISHING_S):
            continue
        del started[answer_id]
        if answer.error:
            what = "The answer broke off" if answer.text or answer.tool_calls else "No answer"
            st.session_state[NOTICE] = f"{what}: {answer.error}"
        elif answer.save_error:
            st.session_state[NOTICE] = answer.save_error


def start_turn(
    inference: InferenceClient,
    model: str,
    saved: SavedConversation,
    question_id: int,
    options: AnswerOptions,
) -> None:
    """Start the answer to ``question_id``; a request that cannot fit becomes the notice."""
    turn = answer_question(
        store(),
        live_answers(),
        inference,
        token_counter(inference.base_url, model),
        saved,
        question_id,
        options,
        trim=bool(st.session_state[W_TRIM]),
    )
    if turn.answer is None:
        assert turn.plan is not None
        st.session_state[NOTICE] = turn.plan.error
        return
    assert turn.answer.answer_id is not None
    st.session_state[STARTED][turn.answer.answer_id] = turn.answer
    note = turn.plan.note if turn.plan is not None else None
    if turn.count_error:
        note = f"The server did not count the tokens ({turn.count_error}); everything was sent."
    if note:
        st.session_state[NOTES][turn.answer.answer_id] = note


def draw_meter(
    inference: InferenceClient,
    model: str,
    saved: SavedConversation | None,
    reserved: int,
    trim: bool,
) -> None:
    """How much of the context window the conversation takes, from the server's tokenize route."""
    if saved is None or not saved.messages:
        return
    try:
        plan = token_counter(inference.base_url, model).plan(
            inference, saved.api_messages(), reserved=reserved, trim=trim
        )
    except TsChatError:
        return  # the status line says what is wrong with the server
    st.progress(min(plan.fraction, 1.0))
    st.caption(meter_line(plan))


def load_shown() -> SavedConversation | None:
    """The conversation on screen, its orphaned answers settled; None for a new chat."""
    conversation = shown_id()
    if conversation is None:
        return None
    try:
        saved = store().load(conversation)
        if settle_orphans(store(), live_answers(), saved, time.time()):
            saved = store().load(conversation)
    except ConversationNotFound as error:
        show(None)
        st.session_state[NOTICE] = error.message
        return None
    return saved


def chat(
    settings: Settings,
    inference: InferenceClient | None,
    check: ServerCheck | None,
    saved: SavedConversation | None,
    options: AnswerOptions,
) -> None:
    model = str(st.session_state.get(W_MODEL) or settings.model_name)
    trim = bool(st.session_state[W_TRIM])
    reachable = check is not None and check.reachable and inference is not None
    messages = saved.messages if saved is not None else ()
    # Looked up once: an answer that ends during this run is still followed (its fragment then
    # starts the page over), never drawn as saved while the page stays locked for it.
    live = streaming_here(saved)
    if len(live) < sum(m.state == "streaming" for m in messages):
        # It ended since the page loaded it (saved before it left the live list): start the
        # page over, so that it is drawn as saved and how it ended is reported.
        st.rerun()
    locked = bool(live)
    probabilities = bool(st.session_state[W_PROBABILITIES])
    if not messages:
        st.caption("Ask something to start a conversation; it is saved as you go.")
    for message in messages:
        if message.id in live:
            follow_answer(message.id, probabilities)
        elif message.id == st.session_state[EDITING]:
            draw_editor(message)
        else:
            draw_message(message, locked, probabilities)
    if saved is not None and saved.awaiting_answer and not locked:
        last = saved.messages[-1]
        st.button(
            "Retry", icon=":material/refresh:", on_click=on_retry, args=(last.id,), key="w_retry"
        )
    if reachable and not locked:
        assert inference is not None
        draw_meter(inference, model, saved, options.sampling.max_tokens, trim)

    can_send = check is not None and check.can_chat
    if locked:
        placeholder = "Wait for the answer, or press Stop"
    elif can_send:
        placeholder = "Ask something"
    else:
        placeholder = "TorchServe is not ready: see the message above"
    st.chat_input(
        placeholder,
        key=W_QUESTION,
        on_submit=on_question,
        disabled=locked or not can_send,
        submit_mode="disable",
    )


# ---------------------------------------------------------------------------- side by side


def side_by_side(
    settings: Settings, inference: InferenceClient | None, check: ServerCheck | None
) -> None:
    """One question to 2-4 panes at once, each with its own model and settings."""
    st.selectbox("Panes", [2, 3, 4], key=W_PANE_COUNT)
    count = int(st.session_state[W_PANE_COUNT])
    for pane, column in enumerate(st.columns(count)):
        with column:
            st.subheader(f"Pane {pane + 1}")
            model_picker(settings, check, knob_key("model", pane))
            with st.popover("Settings", icon=":material/tune:", width="stretch"):
                knobs(pane)

    reachable = check is not None and check.reachable and inference is not None
    question = st.session_state[PANE_ASK]
    st.session_state[PANE_ASK] = None
    if question and reachable:
        assert inference is not None
        on_stop_panes()
        panes = []
        for pane in range(count):
            sampling, _ = read_sampling(pane)
            model = str(st.session_state.get(knob_key("model", pane)) or settings.model_name)
            panes.append(Pane(model, AnswerOptions(sampling)))
        system = st.session_state[W_SYSTEM]
        st.session_state[PANES] = (question, ask_panes(inference, question, system, panes))

    asked = st.session_state[PANES]
    streaming = asked is not None and any(not a.view().finished for a in asked[1])
    if asked is not None:
        with st.chat_message("user"):
            draw_text(asked[0])
        draw_pane_answers(streaming)
    can_send = check is not None and check.can_chat
    st.chat_input(
        "Ask every pane at once" if can_send else "TorchServe is not ready: see the message above",
        key=W_PANE_QUESTION,
        on_submit=on_pane_question,
        disabled=streaming or not can_send,
        submit_mode="disable",
    )


def draw_pane_answers(streaming: bool) -> None:
    """The panes' answers side by side; while any streams, redrawn a few times a second."""

    def draw() -> None:
        asked = st.session_state[PANES]
        if asked is None:
            return
        views = [answer.view() for answer in asked[1]]
        if streaming and all(view.finished for view in views):
            st.rerun()
        for pane, (column, answer, view) in enumerate(
            zip(st.columns(len(views)), asked[1], views, strict=True)
        ):
            with column, st.container(border=True, key=f"pane_answer_{pane}"):
                st.caption(answer.model)
                draw_text(view.text, view.format, streaming=not view.finished)
                if view.finished:
                    note = answer_note(view.state, answer.stats)
                    st.caption(note)
                    if view.error:
                        st.error(safe_markdown(view.error))
                else:
                    st.caption(view.reading.label())
        if streaming:
            st.button(
                "Stop all",
                icon=":material/stop_circle:",
                on_click=on_stop_panes,
                key="w_stop_panes",
            )

    st.fragment(draw, run_every=REFRESH_S if streaming else None)()


# ---------------------------------------------------------------------------- page


def main() -> None:
    st.set_page_config(
        page_title="TorchServe chat",
        page_icon="💬",
        layout="wide" if st.session_state.get(W_VIEW) == SIDE_BY_SIDE else "centered",
    )
    init_state()
    try:
        settings = Settings.from_env()
        st.session_state[STORE] = open_store(str(store_path(settings.run_dir)))
    except TsChatError as error:
        st.error(f"The chat cannot start: {error.message}")
        st.stop()
    open_from_address()
    st.title("💬 Chat")
    try:
        saved = load_shown()
        report_finished()
        inference, check, problem = connect(settings)
        options, option_problem = read_options()
        # A question asked in this run (or Retry, Regenerate, an edit) starts its answer now,
        # before anything is drawn, so the page shows it streaming.
        ask = st.session_state[ASK]
        st.session_state[ASK] = None
        reachable = check is not None and check.reachable and inference is not None
        if ask is not None and saved is not None and reachable and not busy(saved):
            assert inference is not None
            model = str(st.session_state.get(W_MODEL) or settings.model_name)
            start_turn(inference, model, saved, ask, options)
            saved = store().load(saved.id)
        # Not reachable: the question waits for Retry.
        sidebar(settings, check, option_problem)
    except TsChatError as error:
        st.error(safe_markdown(error.message), icon="🛑")
        st.stop()
    if problem:
        st.error(problem, icon="🛑")
    elif check is not None:
        draw_status(check)
    notice = st.session_state[NOTICE]
    if notice:
        st.error(safe_markdown(notice), icon="⚠️")
        st.session_state[NOTICE] = None
    st.segmented_control(
        "View", [CHAT, SIDE_BY_SIDE], key=W_VIEW, required=True, label_visibility="collapsed"
    )
    if st.session_state[W_VIEW] == SIDE_BY_SIDE:
        side_by_side(settings, inference, check)
    else:
        chat(settings, inference, check, saved, options)


main()
