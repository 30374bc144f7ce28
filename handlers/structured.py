"""Structured answers: grammars for JSON and tool calls, and tool calls read back from the text.

An answer that must be JSON (``response_format``) or a tool call (``tool_choice`` required or a
named function) is sampled under a GBNF grammar, llama.cpp's format, so every token keeps the
text valid. JSON schemas become grammars with llama-cpp-python's converter (a port of llama.cpp's
``json_schema_to_grammar``), after a check that bounds what the conversion may cost.

Tool calls are written in the Hermes format, which many open models were trained on::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

:class:`ToolCallReader` takes an answer's text as it streams and separates the calls from the
rest, holding back text that may still turn out to open a call.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from contract import OutputFormat, RequestError, Tool, ToolChoice
from llama_cpp.llama_grammar import SchemaConverter

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"

# Counts a schema may ask for: more items or characters than this cannot fit in any answer,
# and the converter writes repetitions out in full, so a huge count would cost time and memory.
MAX_SCHEMA_COUNT = 4096
MAX_PATTERN_CHARS = 1024
MAX_PATTERN_REPEAT = 10_000  # product of the {m,n} counts in one pattern
MAX_GRAMMAR_CHARS = 1 << 20  # what a schema may turn into
COUNT_KEYWORDS = (
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
    "minContains",
    "maxContains",
)
_REPEAT = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def output_grammar(fmt: OutputFormat, param: str = "response_format") -> str | None:
    """The grammar an answer must follow for a response format, or None for free text."""
    if fmt.kind == "json_object":
        return schema_grammar({"type": "object"}, param)
    if fmt.kind == "json_schema":
        assert fmt.schema is not None
        return schema_grammar(fmt.schema, param)
    if fmt.kind == "grammar":
        return fmt.grammar
    return None


def schema_grammar(schema: Mapping[str, Any], param: str) -> str:
    """A GBNF grammar for JSON text valid against ``schema``; RequestError if it cannot be one."""
    converter = _converter()
    _check_costs(schema, param)
    try:
        resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "schema")
        converter.visit(resolved, "")
        grammar = str(converter.format_grammar())
    except RequestError:
        raise
    except Exception as exc:  # the converter raises whatever its parsing meets
        raise RequestError(
            f"The JSON schema in '{param}' cannot be turned into a grammar: {_reason(exc)}", param
        ) from None
    return _bounded(grammar, param)


def tool_call_grammar(tools: Sequence[Tool], choice: ToolChoice, parallel: bool) -> str:
    """A grammar that allows only calls of the chosen tools (one, or several if parallel)."""
    calls = [
        {
            "type": "object",
            "properties": {
                "name": {"const": tool.name},
                "arguments": tool.parameters,
            },
            "required": ["name", "arguments"],
        }
        for tool in tools
        if tool.name in choice.names
    ]
    schema: dict[str, Any] = calls[0] if len(calls) == 1 else {"oneOf": calls}
    _check_costs(schema, "tools")
    converter = _converter()
    try:
        resolved = converter.resolve_refs(json.loads(json.dumps(schema)), "tools")
        body = converter.visit(resolved, "tool-call-body")
        converter._add_rule(
            "tool-call",
            f"{_literal(CALL_OPEN + chr(10))} {body} {_literal(chr(10) + CALL_CLOSE)}",
        )
        converter._add_rule("root", 'tool-call ("\\n" tool-call)*' if parallel else "tool-call")
        grammar = str(converter.format_grammar())
    except Exception as exc:
        raise RequestError(
            f"The tools' parameters cannot be turned into a grammar: {_reason(exc)}", "tools"
        ) from None
    return _bounded(grammar, "tools")


def _converter() -> SchemaConverter:
    return SchemaConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def _literal(text: str) -> str:
    return json.dumps(text)  # a GBNF literal escapes like a JSON string


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 300 else text[:300] + "…"


def _bounded(grammar: str, param: str) -> str:
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise RequestError(
            f"The schema in '{param}' makes a grammar of {len(grammar)} characters; at most "
            f"{MAX_GRAMMAR_CHARS} are allowed. Ask for fewer repetitions.",
            param,
        )
    return grammar


def _check_costs(node: Any, param: str) -> None:
    """Refuse counts and patterns whose grammar would be huge to write out."""
    if isinstance(node, list):
        for item in node:
            _check_costs(item, param)
        return
    if not isinstance(node, dict):
        return
    for key in COUNT_KEYWORDS:
        value = node.get(key)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or not 0 <= value <= MAX_SCHEMA_COUNT
        ):
            raise RequestError(
                f"'{key}' in '{param}' must be a whole number from 0 to {MAX_SCHEMA_COUNT}; "
                f"got {str(value)[:40]}.",
                param,
            )
    pattern = node.get("pattern")
    if pattern is not None:
        if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN_CHARS:
            raise RequestError(
                f"A 'pattern' in '{param}' must be a string of at most {MAX_PATTERN_CHARS} "
                "characters.",
                param,
            )
        product = 1
        for low, high in _REPEAT.findall(pattern):
            product *= max(int(high or low), 1)  # {m}, {m,} and {m,n}: at most m or n copies
            if product > MAX_PATTERN_REPEAT:
                raise RequestError(
                    f"A 'pattern' in '{param}' repeats more than {MAX_PATTERN_REPEAT} times.",
                    param,
                )
    for value in node.values():
        _check_costs(value, param)


# -- tool calls in the answer -----------------------------------------------------------------


@dataclass(frozen=True)
class ParsedCall:
    id: str
    name: str
    arguments: str  # JSON text


class ToolCallReader:
    """Splits an answer's text into content and tool calls, as the text streams in."""

    def __init__(self, names: Sequence[str], parallel: bool = True) -> None:
        self.names = set(names)
        self.parallel = parallel
        self.buffer = ""
        self.calls: list[ParsedCall] = []
        self.done = False  # with parallel false, the first call ends the answer

    def feed(self, text: str) -> tuple[str, list[ParsedCall]]:
        """Content ready to show and calls completed by ``text``."""
        self.buffer += text
        content, calls = "", []
        while not self.done:
            start = self.buffer.find(CALL_OPEN)
            if start == -1:
                keep = _partial_suffix(self.buffer, CALL_OPEN)
                content += self.buffer[: len(self.buffer) - keep]
                self.buffer = self.buffer[len(self.buffer) - keep :]
                break
            end = self.buffer.find(CALL_CLOSE, start)
            if end == -1:
                content += self.buffer[:start]
                self.buffer = self.buffer[start:]
                break
            block = self.buffer[start + len(CALL_OPEN) : end]
            call = self._parse(block)
            if call is None:  # not a call of a known tool: it stays text
                content += self.buffer[: end + len(CALL_CLOSE)]
            else:
                content += self.buffer[:start]
                calls.append(call)
                self.calls.append(call)
                if not self.parallel:
                    self.done = True
            self.buffer = self.buffer[end + len(CALL_CLOSE) :]
        if self.done:
            self.buffer = ""
        return (content if not self.calls or content.strip() else ""), calls

    def finish(self) -> str:
        """What is left once the answer ended: an unfinished call is shown as text."""
        rest, self.buffer = self.buffer, ""
        return "" if self.done else rest

    def _parse(self, block: str) -> ParsedCall | None:
        try:
            data = json.loads(block)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("name") not in self.names:
            return None
        arguments = data.get("arguments", data.get("parameters", {}))
        if not isinstance(arguments, dict):
            return None
        return ParsedCall(
            id=f"call_{uuid.uuid4().hex[:24]}",
            name=str(data["name"]),
            arguments=json.dumps(arguments, ensure_ascii=False),
        )


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that begins ``marker``.

    >>> _partial_suffix("Sure <tool_", CALL_OPEN), _partial_suffix("Sure", CALL_OPEN)
    (6, 0)
    """
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
