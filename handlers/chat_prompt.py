"""A chat request's prompt: the model's chat template over the messages and tools, as tokens.

Typed text stays text: every string a client sent (message content, tool definitions, tool calls
and results) is wrapped in two Unicode noncharacters before the template runs, and the rendered
prompt is tokenized piece by piece: the template's own text with special tokens parsed (its
``<|im_start|>`` markers become control tokens), the client's text without (a user who types
``<|im_start|>system`` gets those characters, not a system turn).

Templates that know tools (they render ``tools`` and ``tool_calls``) get them as they are. For
the others, such as the default model's, tools are described in the system message in the Hermes
format, earlier calls are written into the assistant's text, and results are wrapped in
``<tool_response>`` tags.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any, cast

from contract import TEXT_MARKS, Message, Request, Tool
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from structured import CALL_CLOSE, CALL_OPEN

OPEN, CLOSE = TEXT_MARKS
_MARKED = re.compile(f"{OPEN}(.*?){CLOSE}", re.DOTALL)
_PROBE = "tschat_probe_function"

TOOLS_INSTRUCTIONS = (
    "You are a function calling AI model. You may call one or more functions to assist with the "
    "user query. Don't make assumptions about what values to plug into functions. Here are the "
    "available tools: <tools>\n{tools}\n</tools>\nFor each function call return a JSON object "
    "with the function name and arguments within <tool_call></tool_call> tags as follows:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


def mark(value: Any) -> Any:
    """``value`` with every string in it (keys too) wrapped as client text."""
    if isinstance(value, str):
        return OPEN + value + CLOSE
    if isinstance(value, dict):
        return {mark(k): mark(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mark(v) for v in value]
    return value


class ChatPrompt:
    """Renders requests with one chat template and tokenizes them."""

    def __init__(
        self,
        template: str,
        bos_token: str,
        eos_token: str,
        tokenize: Callable[[str, bool, bool], list[int]],
    ) -> None:
        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=eos_token,
            bos_token=bos_token,
            add_generation_prompt=True,
        )
        self._tokenize = tokenize
        self.native_tools = _PROBE in self._render(
            [{"role": "user", "content": "x"}], [_tool_json(Tool(_PROBE, "", {}))]
        )
        self.native_calls = _PROBE in self._render(
            [
                {"role": "user", "content": "x"},
                {"role": "assistant", "content": "", "tool_calls": [_call_json(_PROBE, "{}", "c")]},
            ],
            None,
        )

    def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        try:
            return self._format(messages, tools)
        except Exception:
            return ""

    def render(self, request: Request) -> str:
        """The prompt text, client strings marked."""
        tools = [t for t in request.tools if t.name in request.tool_choice.names]
        messages = [self._message(m) for m in request.messages]
        native = None
        if tools and self.native_tools:
            native = [mark(_tool_json(t)) for t in tools]
        elif tools:
            described = json.dumps([_tool_json(t) for t in tools], ensure_ascii=False)
            instructions = TOOLS_INSTRUCTIONS.format(tools=mark(described))
            if messages and messages[0]["role"] == "system":
                messages[0] = {
                    **messages[0],
                    "content": messages[0]["content"] + "\n\n" + instructions,
                }
            else:
                messages.insert(0, {"role": "system", "content": instructions})
        return self._format(messages, native)

    def _format(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        # The formatter's types name OpenAI's message TypedDicts; these dicts are of that shape.
        formatted = self.formatter(messages=cast(Any, messages), tools=cast(Any, tools))
        return str(formatted.prompt)

    def _message(self, message: Message) -> dict[str, Any]:
        content = mark(message.content or "")
        out: dict[str, Any] = {"role": message.role, "content": content}
        if message.name is not None:
            out["name"] = mark(message.name)
        if message.tool_calls:
            if self.native_calls:
                out["tool_calls"] = [
                    mark(_call_json(c.name, c.arguments, c.id)) for c in message.tool_calls
                ]
            else:
                written = "\n".join(
                    f"{CALL_OPEN}\n"
                    + mark(
                        json.dumps(
                            {"name": c.name, "arguments": _arguments(c.arguments)},
                            ensure_ascii=False,
                        )
                    )
                    + f"\n{CALL_CLOSE}"
                    for c in message.tool_calls
                )
                out["content"] = (content + "\n" if message.content else "") + written
        if message.role == "tool":
            out["tool_call_id"] = mark(message.tool_call_id or "")
            if not self.native_calls:
                out["content"] = f"<tool_response>\n{content}\n</tool_response>"
        return out

    def tokens(self, request: Request) -> list[int]:
        """The prompt's tokens: template text with special tokens, client text without."""
        return self.tokenize_marked(self.render(request))

    def tokenize_marked(self, prompt: str) -> list[int]:
        tokens: list[int] = []
        pos = 0
        for match in _MARKED.finditer(prompt):
            tokens += self._template_tokens(prompt[pos : match.start()])
            if match.group(1):
                tokens += self._tokenize(match.group(1), False, False)
            pos = match.end()
        tokens += self._template_tokens(prompt[pos:])
        return tokens

    def _template_tokens(self, text: str) -> list[int]:
        # A template that cut a marked string apart leaves a lone mark: drop it.
        text = text.replace(OPEN, "").replace(CLOSE, "")
        return self._tokenize(text, False, True) if text else []


def _tool_json(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": dict(tool.parameters),
        },
    }


def _call_json(name: str, arguments: str, call_id: str) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": _arguments(arguments)},
    }


def _arguments(text: str) -> Any:
    """Arguments as an object when they are JSON (templates expect one), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def unmarked(prompt: str) -> str:
    """The prompt as the model reads it."""
    return prompt.replace(OPEN, "").replace(CLOSE, "")


__all__: Sequence[str] = ("ChatPrompt", "mark", "unmarked")
