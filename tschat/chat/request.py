"""What a chat request asks for besides the conversation: the sampling settings, the shape of the
answer (free text, JSON valid against a schema, or calls of tools) and the token probabilities.

:func:`answer_options` reads what the user typed (a schema or tool list as JSON text) and checks
the whole request with the server's own rules (:func:`tschat.contract.parse`), so a mistake is a
sentence before anything is sent. :func:`schema_problem` checks an answer against its schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema

from tschat import contract
from tschat.chat.conversation import AnswerFormat
from tschat.chat.sampling import SamplingSettings
from tschat.errors import SettingsError

Mode = Literal["text", "json_schema", "tools"]
MODES: dict[Mode, str] = {
    "text": "Text",
    "json_schema": "JSON schema",
    "tools": "Tools",
}
TOOL_CHOICES = ("auto", "required", "none")
MAX_TOP_LOGPROBS = contract.MAX_TOP_LOGPROBS
DEFAULT_TOP_LOGPROBS = 5
SCHEMA_NAME = "answer"

# Examples to start from (the schema and tool boxes can hold any other).
SCHEMA_EXAMPLES: dict[str, dict[str, Any]] = {
    "A person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer", "minimum": 0, "maximum": 130},
            "city": {"type": "string", "maxLength": 40},
        },
        "required": ["name", "age", "city"],
        "additionalProperties": False,
    },
    "A sentiment": {
        "type": "object",
        "properties": {
            "sentiment": {"enum": ["positive", "neutral", "negative"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["sentiment", "confidence"],
        "additionalProperties": False,
    },
    "A short list": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {"type": "string", "maxLength": 30},
                "minItems": 1,
                "maxItems": 5,
            }
        },
        "required": ["items"],
        "additionalProperties": False,
    },
}
TOOL_EXAMPLES: dict[str, list[dict[str, Any]]] = {
    "Weather and time": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The current weather in a city.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "city": {"type": "string", "maxLength": 40},
                        "unit": {"enum": ["celsius", "fahrenheit"]},
                    },
                    "required": ["city", "unit"],
                    "additionalProperties": False,
                },
            },
        },
        {
            "type": "function",
            "function": {
                "name": "get_time",
                "description": "The local time in a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string", "maxLength": 40}},
                    "required": ["city"],
                    "additionalProperties": False,
                },
            },
        },
    ],
}


def example_text(example: Any) -> str:
    """An example as the text boxes show it."""
    return json.dumps(example, indent=2)


@dataclass(frozen=True)
class AnswerOptions:
    """Everything a chat request sends besides the messages.

    ``top_logprobs``: how many alternatives per token to ask for (None: no probabilities).
    """

    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    mode: Mode = "text"
    schema: Mapping[str, Any] | None = None
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: str = "auto"
    top_logprobs: int | None = None

    @property
    def answer_format(self) -> AnswerFormat:
        """How the answer is shown: text, JSON, or the tool calls as JSON."""
        return {"text": "text", "json_schema": "json", "tools": "tool_calls"}[self.mode]  # type: ignore[return-value]

    def request_params(self) -> dict[str, Any]:
        """The keyword arguments for ``InferenceClient.chat_stream``.

        >>> options = AnswerOptions(mode="json_schema", schema={"type": "object"}, top_logprobs=3)
        >>> params = options.request_params()
        >>> params["response_format"]["json_schema"]["name"], params["top_logprobs"]
        ('answer', 3)
        """
        params = self.sampling.request_params()
        if self.mode == "json_schema":
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": SCHEMA_NAME, "schema": dict(self.schema or {})},
            }
        elif self.mode == "tools":
            params["tools"] = [dict(tool) for tool in self.tools]
            params["tool_choice"] = self.tool_choice
        if self.top_logprobs is not None:
            params["logprobs"] = True
            params["top_logprobs"] = self.top_logprobs
        return params


def answer_options(
    sampling: SamplingSettings,
    *,
    mode: Mode = "text",
    schema_text: str = "",
    tools_text: str = "",
    tool_choice: str = "auto",
    top_logprobs: int | None = None,
) -> AnswerOptions:
    """The options from what the user typed; :class:`SettingsError` says what is wrong.

    >>> answer_options(SamplingSettings(), mode="json_schema", schema_text="[1]")
    Traceback (most recent call last):
    ...
    tschat.errors.SettingsError: The JSON schema must be a JSON object, like {"type": "object"}.
    >>> answer_options(SamplingSettings(), mode="tools", tools_text="{")
    Traceback (most recent call last):
    ...
    tschat.errors.SettingsError: The tool list is not valid JSON: Expecting property name \
enclosed in double quotes: line 1 column 2 (char 1).
    """
    if mode not in MODES:
        raise SettingsError(f"The answer format must be one of {', '.join(MODES)}.")
    schema: dict[str, Any] | None = None
    tools: tuple[dict[str, Any], ...] = ()
    if mode == "json_schema":
        schema = _json(schema_text, "The JSON schema")
        if not isinstance(schema, dict):
            raise SettingsError('The JSON schema must be a JSON object, like {"type": "object"}.')
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as error:
            raise SettingsError(f"The JSON schema is not a valid schema: {error.message}") from None
    elif mode == "tools":
        value = _json(tools_text, "The tool list")
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list) or not value:
            raise SettingsError(
                'The tool list must be a JSON list of {"type": "function", "function": {...}} '
                "objects."
            )
        tools = tuple(value)
        if tool_choice not in TOOL_CHOICES:
            raise SettingsError(f"The tool choice must be one of {', '.join(TOOL_CHOICES)}.")
    if top_logprobs is not None and not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise SettingsError(f"Alternatives per token must be between 0 and {MAX_TOP_LOGPROBS}.")
    options = AnswerOptions(sampling, mode, schema, tools, tool_choice, top_logprobs)
    # The server's own rules, so that a mistake is a sentence here and not a refused request.
    body = {"messages": [{"role": "user", "content": "?"}], **options.request_params()}
    try:
        contract.parse(contract.CHAT, body)
    except contract.RequestError as error:
        raise SettingsError(error.message) from None
    return options


def schema_problem(text: str, schema: Mapping[str, Any]) -> str | None:
    """Why an answer is not JSON valid against ``schema``; None when it is.

    >>> schema_problem('{"n": 1}', {"type": "object", "required": ["n"]}) is None
    True
    >>> schema_problem('{"m": 1}', {"type": "object", "required": ["n"]})
    "The answer does not match the schema: 'n' is a required property."
    """
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return "The answer is not complete JSON."
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as error:
        return f"The answer does not match the schema: {error.message}."
    except jsonschema.SchemaError:
        return "The schema itself is not valid."
    return None


def _json(text: str, what: str) -> Any:
    if not text.strip():
        raise SettingsError(f"{what} is empty: paste JSON or pick an example.")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:
        raise SettingsError(f"{what} is not valid JSON: {error}.") from None
