"""Chat with a model served by TorchServe: streamed answers, sampling settings, saved chats.

    streamlit run client_app.py --server.port 8502

Widgets and session state only: conversations, export and import live in ``tschat.chat``,
HTTP in ``tschat.api``.

Any click reruns the script and interrupts the run that is drawing an answer. So the answer in
flight is a ``PendingAnswer`` kept in session state, whose own thread reads the HTTP stream: the
next run draws it again with ``st.write_stream`` from where it is, and the Stop button's callback
(run at the start of the rerun its click causes) closes the stream and keeps the text so far.
"""

from __future__ import annotations

import re
from typing import Any

import streamlit as st

from apps.chat_status import status_message
from tschat.api.inference import InferenceClient
from tschat.api.keys import KeyStore
from tschat.api.management import ManagementClient
from tschat.chat.answer import PendingAnswer
from tschat.chat.conversation import Conversation, ConversationBook, Message
from tschat.chat.export import from_json, to_json, to_markdown
from tschat.chat.sampling import KNOBS, SEED_MAX, SamplingSettings, parse_stop_sequences
from tschat.chat.status import ServerCheck, check_server
from tschat.errors import TsChatError
from tschat.settings import Settings

# Session state keys.
BOOK = "chat_book"  # ConversationBook
JOB = "chat_job"  # PendingAnswer being streamed, or None
SEND = "chat_send"  # True: the current conversation waits for an answer to be requested
EDITING = "chat_editing"  # True: the last question is being edited
NOTICE = "chat_notice"  # an error to show once, above the conversation
CLIENTS = "chat_clients"  # (connection, InferenceClient, ManagementClient | None)
IMPORT_ROUND = "chat_import_round"  # changes the uploader's key to empty it after a load
# Widget keys.
W_QUESTION = "w_question"
W_MODEL = "w_model"
W_SYSTEM = "w_system"
W_CONVERSATION = "w_conversation"
W_RENAME = "w_rename"
W_SEED = "w_seed"
W_STOP_SEQUENCES = "w_stop_sequences"
W_EDIT = "w_edit"
W_REMOTE_URL = "w_remote_url"
W_REMOTE_KEY = "w_remote_key"
W_REMOTE_MANAGEMENT_URL = "w_remote_management_url"
W_REMOTE_MANAGEMENT_KEY = "w_remote_management_key"
CURSOR = "▌"


def knob_key(name: str) -> str:
    return f"w_{name}"


# ---------------------------------------------------------------------------- state and callbacks


def init_state() -> None:
    if BOOK not in st.session_state:
        st.session_state[BOOK] = ConversationBook()
    defaults: dict[str, Any] = {
        JOB: None,
        SEND: False,
        EDITING: False,
        NOTICE: None,
        IMPORT_ROUND: 0,
        W_SYSTEM: book().current.system_prompt,
        W_CONVERSATION: book().current.name,
        W_RENAME: book().current.name,
        W_SEED: None,
        W_STOP_SEQUENCES: "",
    }
    defaults.update({knob_key(knob.name): knob.default for knob in KNOBS})
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)


def book() -> ConversationBook:
    value: ConversationBook = st.session_state[BOOK]
    return value


def job() -> PendingAnswer | None:
    value: PendingAnswer | None = st.session_state[JOB]
    return value


def busy() -> bool:
    return job() is not None or bool(st.session_state[SEND])


def show_conversation(conversation: Conversation) -> None:
    """Point the conversation widgets at ``conversation``."""
    st.session_state[W_CONVERSATION] = conversation.name
    st.session_state[W_RENAME] = conversation.name
    st.session_state[W_SYSTEM] = conversation.system_prompt
    st.session_state[EDITING] = False


def on_question() -> None:
    text = st.session_state.get(W_QUESTION) or ""
    if not text.strip() or busy():
        return
    book().current.add_question(text)
    st.session_state[EDITING] = False
    st.session_state[SEND] = True


def on_stop() -> None:
    answer = job()
    if answer is not None:
        answer.stop()
        finish(answer)


def finish(answer: PendingAnswer) -> None:
    """Store the answer (complete, stopped or broken off) in its conversation."""
    answer.stop()  # no-op when complete; closes the stream otherwise
    message = answer.message()
    if message is not None:
        answer.conversation.add_answer(message)
    if answer.error:
        what = "The answer broke off" if message else "No answer"
        st.session_state[NOTICE] = f"{what}: {answer.error}"
    st.session_state[JOB] = None


def on_regenerate() -> None:
    if busy():  # a click on a button left from before the answer started
        return
    book().current.drop_last_answer()
    st.session_state[SEND] = True


def on_edit() -> None:
    if busy():
        return
    st.session_state[W_EDIT] = book().current.last_question() or ""
    st.session_state[EDITING] = True


def on_resend() -> None:
    if busy():
        return
    text = st.session_state.get(W_EDIT) or ""
    if text.strip():
        book().current.replace_last_question(text)
        st.session_state[SEND] = True
    st.session_state[EDITING] = False


def on_cancel_edit() -> None:
    st.session_state[EDITING] = False


def on_clear() -> None:
    if busy():
        return
    book().current.clear()
    st.session_state[EDITING] = False


def on_select_conversation() -> None:
    if busy():
        return
    show_conversation(book().select(st.session_state[W_CONVERSATION]))


def on_new_conversation() -> None:
    if busy():
        return
    conversation = book().add()
    conversation.system_prompt = st.session_state[W_SYSTEM]
    show_conversation(conversation)


def on_rename() -> None:
    name = book().rename(st.session_state[W_RENAME])
    st.session_state[W_RENAME] = name
    st.session_state[W_CONVERSATION] = name


def on_delete_conversation() -> None:
    if busy():
        return
    book().remove_current()
    show_conversation(book().current)


def on_system_prompt() -> None:
    book().current.system_prompt = st.session_state[W_SYSTEM]


def on_import() -> None:
    uploaded = st.session_state.get(import_key())
    st.session_state[IMPORT_ROUND] += 1  # a fresh, empty uploader next run
    if uploaded is None or busy():
        return
    try:
        conversation = from_json(uploaded.getvalue(), default_name=_stem(uploaded.name))
    except TsChatError as error:
        st.session_state[NOTICE] = error.message
        return
    show_conversation(book().add(conversation))


def on_reset_sampling() -> None:
    for knob in KNOBS:
        st.session_state[knob_key(knob.name)] = knob.default
    st.session_state[W_SEED] = None
    st.session_state[W_STOP_SEQUENCES] = ""


def import_key() -> str:
    return f"w_import_{st.session_state[IMPORT_ROUND]}"


def _stem(file_name: str) -> str:
    return re.sub(r"\.json$", "", file_name, flags=re.IGNORECASE) or "Imported"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "conversation"


# ---------------------------------------------------------------------------- connection


def clients(settings: Settings) -> tuple[InferenceClient, ManagementClient | None]:
    """Clients for the local TorchServe (keys from its key file) or the remote one typed in."""
    remote_url = (st.session_state.get(W_REMOTE_URL) or "").strip().rstrip("/")
    remote_key = (st.session_state.get(W_REMOTE_KEY) or "").strip()
    management_url = (st.session_state.get(W_REMOTE_MANAGEMENT_URL) or "").strip().rstrip("/")
    management_key = (st.session_state.get(W_REMOTE_MANAGEMENT_KEY) or "").strip()
    connection = (settings, remote_url, remote_key, management_url, management_key)
    cached = st.session_state.get(CLIENTS)
    if cached is not None and cached[0] == connection:
        return cached[1], cached[2]
    inference: InferenceClient
    management: ManagementClient | None
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
    return inference, management


def valid_remote_url() -> str | None:
    """An error sentence when the remote address is not an http(s) URL."""
    for key in (W_REMOTE_URL, W_REMOTE_MANAGEMENT_URL):
        value = (st.session_state.get(key) or "").strip()
        if value and not re.match(r"https?://[^/\s]+", value):
            return f"{value!r} is not an address like http://host:8080."
    return None


# ---------------------------------------------------------------------------- drawing


def draw_status(check: ServerCheck) -> None:
    text, button = st.columns([6, 1], vertical_alignment="center")
    draw = {"ok": text.success, "warning": text.warning, "error": text.error}[check.level]
    draw(status_message(check), icon={"ok": "✅", "warning": "⏳", "error": "🛑"}[check.level])
    button.button("Check", help="Ask TorchServe again", key="w_check")


def draw_message(message: Message) -> None:
    with st.chat_message(message.role):
        if message.content:
            st.markdown(message.content)  # HTML in the answer is shown as text
        elif message.role == "assistant":
            st.caption("(no text)")
        if message.role == "assistant":
            notes = []
            if message.stopped:
                notes.append("⏹ stopped: partial answer")
            if message.stats is not None and message.stats.summary():
                notes.append(message.stats.summary())
            if notes:
                st.caption(" · ".join(notes))


def draw_actions(conversation: Conversation) -> None:
    if not conversation.messages:
        return
    row = st.container(horizontal=True)
    if conversation.can_regenerate():
        label = "Retry" if conversation.awaiting_answer else "Regenerate"
        row.button(label, icon=":material/refresh:", on_click=on_regenerate, key="w_regenerate")
        row.button(
            "Edit last question", icon=":material/edit:", on_click=on_edit, key="w_edit_start"
        )
    row.button("Clear", icon=":material/delete:", on_click=on_clear, key="w_clear")


def draw_editor() -> None:
    with st.container(border=True):
        st.text_area("Edit your last question", key=W_EDIT, height=100)
        row = st.container(horizontal=True)
        row.button("Send", type="primary", on_click=on_resend, key="w_resend")
        row.button("Cancel", on_click=on_cancel_edit, key="w_cancel_edit")


def stream_answer(
    inference: InferenceClient | None, model: str, sampling: SamplingSettings
) -> None:
    """Start or resume the answer, draw it as it streams, then store it."""
    answer = job()
    if answer is None:
        assert inference is not None
        conversation = book().current
        messages, params = conversation.api_messages(), sampling.request_params()
        answer = PendingAnswer(
            lambda: inference.chat_stream(model, messages, **params), conversation, model
        )
        st.session_state[JOB] = answer
        st.session_state[SEND] = False
    with st.chat_message("assistant"):
        waiting = st.empty()
        text = st.container()
        st.button("Stop", icon=":material/stop_circle:", on_click=on_stop, key="w_stop")

        def on_wait(pending: PendingAnswer) -> None:
            # Drawing something now and then also lets Streamlit act on a click (Stop).
            if pending.text:
                waiting.empty()
            else:
                waiting.caption(f"Waiting for the model… {pending.waited_s:.0f} s")

        with text:
            st.write_stream(answer.deltas(on_wait), cursor=CURSOR)
        waiting.empty()
    finish(answer)
    st.rerun()


def sidebar(settings: Settings, check: ServerCheck | None) -> SamplingSettings:
    """Draw the sidebar; return the sampling settings it holds."""
    locked = busy()
    with st.sidebar:
        st.header("Model")
        choices = {choice.name: choice for choice in (check.models if check else ())}
        if check is not None and check.listed and choices:
            names = list(choices)
            if st.session_state.get(W_MODEL) not in names:
                st.session_state[W_MODEL] = (
                    settings.model_name if settings.model_name in names else names[0]
                )
            st.selectbox(
                "Model",
                names,
                key=W_MODEL,
                format_func=lambda name: choices[name].label,
                help="The models registered in TorchServe, with their state.",
            )
        else:
            st.session_state.setdefault(W_MODEL, settings.model_name)
            st.text_input("Model", key=W_MODEL, help="Name of a model registered in TorchServe.")
        st.text_area(
            "System prompt",
            key=W_SYSTEM,
            on_change=on_system_prompt,
            placeholder="e.g. You are a concise assistant.",
            help="Sent first in every turn of this conversation.",
        )

        st.header("Sampling")
        for knob in KNOBS:
            cast = int if knob.whole else float
            st.slider(
                knob.label,
                cast(knob.low),
                cast(knob.high),
                step=cast(knob.step),
                key=knob_key(knob.name),
                help=knob.help,
            )
        st.number_input(
            "Seed",
            min_value=0,
            max_value=SEED_MAX,
            step=1,
            key=W_SEED,
            placeholder="random",
            help="The same seed, settings and conversation give the same answer. Empty: random.",
        )
        st.text_area(
            "Stop sequences",
            key=W_STOP_SEQUENCES,
            height=80,
            placeholder="one per line, up to 4 (\\n = new line)",
            help="The answer ends before any of these texts.",
        )
        sampling, sampling_error = read_sampling()
        if sampling_error:
            st.error(sampling_error)
        st.button("Reset sampling", on_click=on_reset_sampling, key="w_reset_sampling")

        st.header("Conversations")
        st.selectbox(
            "Conversation",
            book().names(),
            key=W_CONVERSATION,
            on_change=on_select_conversation,
            disabled=locked,
        )
        st.text_input("Name", key=W_RENAME, on_change=on_rename, disabled=locked)
        new, delete = st.columns(2)
        new.button(
            "New",
            icon=":material/add:",
            on_click=on_new_conversation,
            disabled=locked,
            key="w_new_conversation",
        )
        delete.button(
            "Delete",
            icon=":material/delete:",
            on_click=on_delete_conversation,
            disabled=locked,
            key="w_delete_conversation",
        )
        conversation = book().current
        model = str(st.session_state.get(W_MODEL) or settings.model_name)
        markdown, json_file = st.columns(2)
        markdown.download_button(
            "Markdown",
            to_markdown(conversation, model=model),
            file_name=f"{_slug(conversation.name)}.md",
            mime="text/markdown",
            icon=":material/download:",
            on_click="ignore",
            key="w_download_md",
        )
        json_file.download_button(
            "JSON",
            to_json(conversation, model=model, settings=sampling),
            file_name=f"{_slug(conversation.name)}.json",
            mime="application/json",
            icon=":material/download:",
            on_click="ignore",
            key="w_download_json",
        )
        st.file_uploader(
            "Load a conversation (JSON)",
            type=["json"],
            key=import_key(),
            on_change=on_import,
            disabled=locked,
        )

        with st.expander("Remote server"):
            st.caption(
                "Leave empty to use the local TorchServe (its keys are read from "
                f"{settings.key_file})."
            )
            st.text_input("Inference URL", key=W_REMOTE_URL, placeholder="http://host:8080")
            st.text_input("Inference key", key=W_REMOTE_KEY, type="password")
            st.text_input(
                "Management URL (optional)",
                key=W_REMOTE_MANAGEMENT_URL,
                placeholder="http://host:8081",
            )
            st.text_input("Management key", key=W_REMOTE_MANAGEMENT_KEY, type="password")
    return sampling


def read_sampling() -> tuple[SamplingSettings, str | None]:
    """The sampling settings from the widgets; on a bad value, the defaults and why."""
    try:
        values: dict[str, Any] = {
            knob.name: st.session_state[knob_key(knob.name)] for knob in KNOBS
        }
        seed = st.session_state.get(W_SEED)
        values["seed"] = None if seed is None else int(seed)
        values["stop"] = parse_stop_sequences(st.session_state.get(W_STOP_SEQUENCES) or "")
        return SamplingSettings(**values), None
    except TsChatError as error:
        return SamplingSettings(), f"{error.message} The default sampling settings are used."


# ---------------------------------------------------------------------------- page


def main() -> None:
    st.set_page_config(page_title="TorchServe chat", page_icon="💬")
    init_state()
    try:
        settings = Settings.from_env()
    except TsChatError as error:
        st.error(f"The chat cannot start: {error.message}")
        st.stop()

    st.title("💬 Chat")
    url_error = valid_remote_url()
    check: ServerCheck | None = None
    inference: InferenceClient | None = None
    if url_error:
        st.error(f"{url_error} Fix the remote server address in the sidebar.", icon="🛑")
    else:
        inference, management = clients(settings)
        model = str(st.session_state.get(W_MODEL) or settings.model_name)
        check = check_server(inference, management, model)
        draw_status(check)
    sampling = sidebar(settings, check)

    notice = st.session_state[NOTICE]
    if notice:
        st.error(notice, icon="⚠️")
        st.session_state[NOTICE] = None

    conversation = book().current
    for message in conversation.messages:
        draw_message(message)

    can_send = check is not None and check.can_chat
    start = st.session_state[SEND] and check is not None and check.reachable
    if job() is not None or start:
        st.chat_input("Wait for the answer, or press Stop", key=W_QUESTION, disabled=True)
        stream_answer(inference, str(st.session_state[W_MODEL]), sampling)  # ends with a rerun
    st.session_state[SEND] = False  # TorchServe is not reachable: the question waits for Retry

    if st.session_state[EDITING] and conversation.last_question() is not None:
        draw_editor()
    else:
        draw_actions(conversation)
    st.chat_input(
        "Ask something" if can_send else "TorchServe is not ready: see the message above",
        key=W_QUESTION,
        on_submit=on_question,
        disabled=not can_send,
        submit_mode="disable",
    )


main()
