"""The request contract of the OpenAI-style API: every field, declared once, and its validation.

Each field a client may send to ``v1/chat/completions``, ``v1/completions`` or the original
example's body is a :class:`Field` in :data:`FIELDS`, with its type, bounds, default, and what the
server does with it:

* ``honoured`` - it does what OpenAI's documentation says (or, for an extension, what llama-server
  does with it);
* ``accepted`` - metadata that changes no output (``user``, ``metadata``, ...): taken and kept out
  of the answer;
* ``refused`` - a 400 naming the field, because this server cannot do what it asks.

A field that is not declared is refused too. The handler validates requests with :func:`parse`,
the engine samples with the :class:`Sampling` it returns, the chat client builds its controls from
:data:`FIELDS`, and the README's parameter table is :func:`markdown_table`.

Standard library only: the model archive ships this file next to the handler as ``contract.py``,
and the clients import it as ``tschat.contract``.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# -- endpoints --------------------------------------------------------------------------------

CHAT = "chat"  # v1/chat/completions
COMPLETION = "completion"  # v1/completions
LEGACY = "legacy"  # the original example's body, POSTed to /predictions/{model}
TOKENIZE = "tokenize"  # v1/tokenize
DETOKENIZE = "detokenize"  # v1/detokenize
ENDPOINT_NAMES = {
    CHAT: "chat",
    COMPLETION: "completions",
    LEGACY: "original body",
    TOKENIZE: "tokenize",
    DETOKENIZE: "detokenize",
}
ALL = (CHAT, COMPLETION, LEGACY)

# The worker's log lines that the operator console reads (tschat/ops/monitor.py): the first once
# a worker has loaded its model, the second with every step profile (every 10 s of serving),
# repeating the first's payload under "worker".
WORKER_INFO_MARK = "llama.cpp worker ready:"
PROFILE_MARK = "worker step profile:"

HONOURED = "honoured"
ACCEPTED = "accepted"
REFUSED = "refused"

# Limits that hold whatever the model. Limits that depend on the loaded model (context window,
# vocabulary, KV slots) come in a :class:`Limits`.
MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 256
MAX_LOGIT_BIAS = 1024
MAX_TOP_LOGPROBS = 20
MAX_N = 16
MAX_TOOLS = 128
MAX_METADATA_KEYS = 16
MAX_METADATA_VALUE = 512
MAX_NAME_LENGTH = 64
MAX_GRAMMAR_CHARS = 65_536
MAX_SCHEMA_CHARS = 65_536
MAX_SCHEMA_DEPTH = 32
SEED_MODULUS = 0xFFFFFFFF  # llama.cpp reads the seed 0xFFFFFFFF as "random": never hand it over
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Unicode noncharacters that the handler uses internally to mark a message's text in a prompt.
TEXT_MARKS = ("\ufdd0", "\ufdd1")


@dataclass(frozen=True)
class Control:
    """How the chat client shows a numeric field: a slider or number box with this range.

    ``start``: the control's first value where the field has no default (the server's default
    for ``max_tokens`` is "until the context is full", which a slider cannot show).
    """

    label: str
    low: float
    high: float
    step: float
    start: float | None = None


@dataclass(frozen=True)
class Field:
    """One request field: its type and bounds, its default, and what the server does with it."""

    name: str
    kind: str  # "number", "integer", "boolean", "string", or a word naming a structured value
    doc: str
    endpoints: tuple[str, ...] = ALL
    treatment: str = HONOURED
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    extension: bool = False  # not in OpenAI's API (llama-server has it)
    control: Control | None = None

    @property
    def whole(self) -> bool:
        return self.kind == "integer"

    def range_text(self) -> str:
        """The type and range as the README shows it.

        >>> FIELD["temperature"].range_text()
        'number, 0 to 2'
        """
        if self.minimum is None and self.maximum is None:
            return self.kind
        return f"{self.kind}, {_num(self.minimum)} to {_num(self.maximum)}"


def _num(value: float | None) -> str:
    if value is None:
        return "…"
    if float(value).is_integer() and abs(value) >= 2**31:
        return (
            f"2^{int(math.log2(abs(value)) + 0.5)}"
            if value > 0
            else f"-2^{int(math.log2(-value) + 0.5)}"
        )
    return f"{value:g}"


_SAMPLE = (CHAT, COMPLETION, LEGACY)
_OPENAI = (CHAT, COMPLETION)
_TOOLS = (CHAT, TOKENIZE)

# One row per field, kept on one line each so the table reads as one.
# fmt: off
FIELDS: tuple[Field, ...] = (
    # what to answer
    Field("messages", "list of messages", "The conversation; the chat template turns it into the prompt. Roles: system, developer (as system), user, assistant (with `tool_calls`), tool (with `tool_call_id`). Content is text or text parts.", (CHAT, TOKENIZE)),
    Field("prompt", "string or tokens", "The raw prompt: a string, a list of strings (one answer each), a list of token ids, or a list of such lists.", (COMPLETION, LEGACY)),
    Field("model", "string", "The model's name. Optional: the URL names the model; another name is a 404.", ALL + (TOKENIZE, DETOKENIZE)),
    # how to sample
    Field("temperature", "number", "Randomness: 0 always picks the likeliest token.", _SAMPLE, default=0.8, minimum=0.0, maximum=2.0, control=Control("Temperature", 0.0, 2.0, 0.05)),
    Field("top_p", "number", "Sample only from the likeliest tokens whose probabilities add up to this.", _SAMPLE, default=0.95, minimum=0.0, maximum=1.0, control=Control("Top-p", 0.0, 1.0, 0.01)),
    Field("top_k", "integer", "Sample only from this many likeliest tokens (0 = no limit).", _SAMPLE, default=40, minimum=0, maximum=1_000_000, extension=True, control=Control("Top-k", 0, 200, 1)),
    Field("min_p", "number", "Drop tokens less likely than this fraction of the likeliest one.", _SAMPLE, default=0.05, minimum=0.0, maximum=1.0, extension=True, control=Control("Min-p", 0.0, 1.0, 0.01)),
    Field("repeat_penalty", "number", "Divide the logits of tokens seen in the last `repeat_last_n` tokens by this (1 = none).", _SAMPLE, default=1.1, minimum=0.01, maximum=10.0, extension=True, control=Control("Repeat penalty", 1.0, 2.0, 0.01)),
    Field("repeat_last_n", "integer", "How many recent tokens the three penalties look at.", _SAMPLE, default=64, minimum=0, maximum=1_000_000, extension=True),
    Field("presence_penalty", "number", "Subtract this from the logit of every token already generated.", _SAMPLE, default=0.0, minimum=-2.0, maximum=2.0, control=Control("Presence penalty", -2.0, 2.0, 0.05)),
    Field("frequency_penalty", "number", "Subtract this times its count from the logit of every token already generated.", _SAMPLE, default=0.0, minimum=-2.0, maximum=2.0, control=Control("Frequency penalty", -2.0, 2.0, 0.05)),
    Field("logit_bias", "map of token id to number", f"Add a bias (-100 to 100) to tokens' logits; -100 bans a token, 100 all but forces it. At most {MAX_LOGIT_BIAS} entries.", _SAMPLE),
    Field("seed", "integer", "Makes sampling repeatable: the same seed, settings and prompt give the same answer. Without it the server draws one.", _SAMPLE, minimum=-(2**63), maximum=2**64 - 1, control=Control("Seed", 0, SEED_MODULUS - 1, 1, start=0)),
    Field("stop", "string or list", f"Up to {MAX_STOP_SEQUENCES} sequences (at most {MAX_STOP_LENGTH} characters each) that end the answer; they are not part of it.", _SAMPLE),
    Field("max_tokens", "integer", "Longest answer in tokens (the context window is the upper limit); finish reason `length` when reached.", _SAMPLE, default=None, minimum=1, maximum=1_000_000, control=Control("Max tokens", 1, 2048, 1, start=512)),
    Field("max_completion_tokens", "integer", "Same as `max_tokens` (OpenAI's newer name).", (CHAT,), minimum=1, maximum=1_000_000),
    Field("max_new_tokens", "integer", "Same as `max_tokens` (the original example's name).", (LEGACY,), minimum=1, maximum=1_000_000),
    Field("ignore_eos", "boolean", "Keep generating past the end-of-text token, up to `max_tokens`.", _SAMPLE, default=False, extension=True),
    Field("n", "integer", "How many answers to the same prompt; the prompt is computed once. At most the number of KV slots.", _SAMPLE, default=1, minimum=1, maximum=MAX_N),
    Field("best_of", "integer", "Only `best_of` = `n` is served (no server-side ranking).", (COMPLETION,), minimum=1, maximum=MAX_N),
    Field("grammar", "string", f"A GBNF grammar (llama.cpp's format, root rule `root`) that the answer must follow; at most {MAX_GRAMMAR_CHARS} characters.", _SAMPLE, extension=True),
    Field("response_format", "object", "`{\"type\": \"text\"}`, `{\"type\": \"json_object\"}` (any JSON object) or `{\"type\": \"json_schema\", \"json_schema\": {\"name\", \"schema\"}}`: the answer is sampled under a grammar, so it parses and validates.", (CHAT,)),
    Field("tools", "list of functions", f"Functions the model may call (at most {MAX_TOOLS}); calls come back as `tool_calls`.", _TOOLS),
    Field("tool_choice", "string or object", "`none`, `auto` (default with tools), `required`, `{\"type\": \"function\", \"function\": {\"name\"}}` or `{\"type\": \"allowed_tools\", ...}`; `required` and named calls are forced by a grammar.", _TOOLS),
    Field("parallel_tool_calls", "boolean", "Whether an answer may hold more than one tool call.", _TOOLS, default=True),
    # what comes back
    Field("stream", "boolean", "Send the answer as server-sent events, a chunk per token (the original body: plain text chunks).", ALL, default=False),
    Field("stream_options", "object", "`include_usage` (default true): a last chunk with usage; `include_obfuscation`: random padding in each chunk.", _OPENAI),
    Field("logprobs", "boolean (chat) or integer", f"Chat: `true` adds each token's log-probability. Completions and the original body: how many alternatives per token (0 to {MAX_TOP_LOGPROBS}), and a JSON answer for the original body. Log-probabilities are the model's, before sampling filters.", _SAMPLE),
    Field("top_logprobs", "integer", "Chat, with `logprobs`: how many alternatives per token.", (CHAT,), minimum=0, maximum=MAX_TOP_LOGPROBS),
    Field("echo", "boolean", "Put the prompt before the answer's text.", (COMPLETION,), default=False),
    # counting tokens
    Field("content", "string", "Text to tokenize (or send `messages` to count a chat's prompt, template applied).", (TOKENIZE,)),
    Field("add_special", "boolean", "Add the model's beginning-of-text token to `content`.", (TOKENIZE,), default=False),
    Field("parse_special", "boolean", "Read special-token text in `content` as special tokens.", (TOKENIZE,), default=True),
    Field("with_pieces", "boolean", "Give each token's text beside its id.", (TOKENIZE,), default=False),
    Field("tokens", "list of token ids", "Tokens to turn back into text.", (DETOKENIZE,)),
    # metadata
    Field("user", "string", "An end user's id: kept out of the answer; the prefix cache's `per_user` scope uses it.", _SAMPLE, treatment=ACCEPTED),
    Field("prompt_cache_key", "string", "Like `user`, for the prefix cache's `per_user` scope.", _OPENAI, treatment=ACCEPTED),
    Field("metadata", "object", f"Up to {MAX_METADATA_KEYS} string pairs; not stored.", _OPENAI, treatment=ACCEPTED),
    Field("store", "boolean", "Nothing is stored; accepted for compatibility.", _OPENAI, treatment=ACCEPTED),
    Field("service_tier", "string", "One tier here; accepted for compatibility.", _OPENAI, treatment=ACCEPTED),
    Field("safety_identifier", "string", "Accepted for compatibility, not used.", _OPENAI, treatment=ACCEPTED),
    Field("prompt_cache_retention", "string", "The cache lives as long as the worker; accepted for compatibility.", _OPENAI, treatment=ACCEPTED),
    Field("modalities", "list", "`[\"text\"]` only.", (CHAT,), treatment=ACCEPTED),
    # refused
    Field("suffix", "string", "Fill-in-the-middle: the default model has no infill tokens.", (COMPLETION,), treatment=REFUSED),
    Field("audio", "object", "Audio output: a text model.", (CHAT,), treatment=REFUSED),
    Field("functions", "list", "Deprecated by OpenAI: send `tools`.", (CHAT,), treatment=REFUSED),
    Field("function_call", "string or object", "Deprecated by OpenAI: send `tool_choice`.", (CHAT,), treatment=REFUSED),
    Field("prediction", "object", "Predicted outputs: not implemented.", (CHAT,), treatment=REFUSED),
    Field("reasoning_effort", "string", "The model does not reason in hidden tokens.", (CHAT,), treatment=REFUSED),
    Field("verbosity", "string", "Not implemented: say it in the prompt.", (CHAT,), treatment=REFUSED),
    Field("web_search_options", "object", "No web search here.", (CHAT,), treatment=REFUSED),
    Field("moderation", "object", "No moderation model here.", (CHAT,), treatment=REFUSED),
    Field("prompt_cache_options", "object", "Not implemented.", (CHAT,), treatment=REFUSED),
)
# fmt: on
FIELD: dict[str, Field] = {f.name: f for f in FIELDS}


def fields_for(endpoint: str) -> dict[str, Field]:
    """The fields a request to ``endpoint`` may carry."""
    return {f.name: f for f in FIELDS if endpoint in f.endpoints}


def default(name: str) -> Any:
    """A field's default value."""
    return FIELD[name].default


# -- what a parsed request holds -------------------------------------------------------------


@dataclass(frozen=True)
class Sampling:
    """How one answer picks its tokens and when it stops: what the engine needs."""

    max_tokens: int | None = default("max_tokens")
    temperature: float = default("temperature")
    top_p: float = default("top_p")
    top_k: int = default("top_k")
    min_p: float = default("min_p")
    repeat_penalty: float = default("repeat_penalty")
    repeat_last_n: int = default("repeat_last_n")
    presence_penalty: float = default("presence_penalty")
    frequency_penalty: float = default("frequency_penalty")
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None  # None: the server draws one
    stop: tuple[str, ...] = ()
    ignore_eos: bool = default("ignore_eos")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def sampler_seed(seed: int) -> int:
    """The 32-bit seed llama.cpp gets for an API seed: never 0xFFFFFFFF, which it reads as random.

    >>> sampler_seed(-1), sampler_seed(0xFFFFFFFF), sampler_seed(7)
    (4294967294, 0, 7)
    """
    return seed % SEED_MODULUS


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(frozen=True)
class Message:
    role: str  # system, user, assistant, tool (developer arrives as system)
    content: str | None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: Mapping[str, Any]  # a JSON schema of the arguments object


@dataclass(frozen=True)
class ToolChoice:
    """``mode`` none, auto or required; ``names``: the tools that may be called."""

    mode: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class OutputFormat:
    """What the answer's text must be: free text, any JSON object, JSON under a schema, a grammar."""

    kind: str = "text"  # text | json_object | json_schema | grammar
    schema: Mapping[str, Any] | None = None
    grammar: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class Request:
    """One validated request."""

    endpoint: str
    stream: bool = False
    sampling: Sampling = field(default_factory=Sampling)
    n: int = 1
    messages: tuple[Message, ...] = ()
    prompts: tuple[str | tuple[int, ...], ...] = ()
    echo: bool = False
    logprobs: int | None = None  # None: off; else the number of alternatives per token
    output: OutputFormat = field(default_factory=OutputFormat)
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice = field(default_factory=lambda: ToolChoice("none", ()))
    parallel_tool_calls: bool = True
    include_usage: bool = True
    obfuscate: bool = False
    user: str | None = None  # the scope of the prefix cache for per_user
    # v1/tokenize and v1/detokenize
    content: str | None = None
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False
    tokens: tuple[int, ...] = ()

    @property
    def answers(self) -> int:
        """How many sequences the request decodes: n per prompt."""
        return self.n * max(1, len(self.prompts))


@dataclass(frozen=True)
class Limits:
    """What the loaded model allows; checked after the fixed bounds of :data:`FIELDS`."""

    n_ctx: int = 2048  # tokens per sequence
    n_vocab: int = 1 << 20
    max_sequences: int = MAX_N  # KV slots: the most answers one request may ask for
    max_text_chars: int = 1 << 22  # characters of text a prompt may hold and still fit
    model: str | None = None  # the served model's name


class RequestError(Exception):
    """A request the handler refuses; ``status`` is the HTTP code (4xx)."""

    def __init__(
        self, message: str, param: str | None = None, status: int = 400, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code

    def body(self) -> dict[str, Any]:
        """OpenAI's error object."""
        err_type = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {
                "message": self.message,
                "type": err_type,
                "param": self.param,
                "code": self.code,
            }
        }


# -- parsing ----------------------------------------------------------------------------------


def decode_body(body: Any) -> dict[str, Any]:
    """The request body as a JSON object, whatever form TorchServe delivered it in.

    >>> decode_body(b'{"a": 1}')
    {'a': 1}
    >>> decode_body(b'[1]')
    Traceback (most recent call last):
    ...
    tschat.contract.RequestError: The request body must be a JSON object.
    """
    if body is None or body == b"" or body == "":
        raise RequestError("The request body is empty; send a JSON object.")
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RequestError(f"The request body is not valid UTF-8 (byte {exc.start}).") from None
    if isinstance(body, str):
        try:
            # Python refuses integers of over 4,300 digits (ValueError) before they cost time.
            body = json.loads(body, parse_constant=_reject_constant)
        except RequestError:
            raise
        except (ValueError, RecursionError) as exc:
            raise RequestError(f"The request body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    return body


def _reject_constant(name: str) -> float:
    raise RequestError(f"The request body contains {name}, which JSON does not allow.")


def parse(endpoint: str, body: Mapping[str, Any], limits: Limits | None = None) -> Request:
    """Validate a request body for an endpoint; raise :class:`RequestError` naming the problem."""
    limits = limits or Limits()
    allowed = fields_for(endpoint)
    for key in body:
        spec = allowed.get(key) if isinstance(key, str) else None
        if spec is None:
            where = ENDPOINT_NAMES[endpoint]
            raise RequestError(
                f"Unknown field '{_clip(key)}' for {where} requests; see the README's parameter "
                "table for the fields this server takes.",
                _clip(key),
                code="unknown_parameter",
            )
        if spec.treatment == REFUSED and body[key] not in (None, "", [], {}):
            raise RequestError(
                f"'{key}' is not supported: {spec.doc}", key, code="unsupported_parameter"
            )
    _check_model(body.get("model"), limits)
    if endpoint in (TOKENIZE, DETOKENIZE):
        return _token_request(endpoint, body, limits)

    stream = _bool(body, "stream")
    include_usage, obfuscate = _stream_options(body.get("stream_options"))
    n = _integer(body, "n")
    if n > limits.max_sequences:
        raise RequestError(
            f"'n' must be at most {limits.max_sequences} here (the KV slots of a worker); got {n}.",
            "n",
        )
    best_of = body.get("best_of")
    if best_of is not None and _integer(body, "best_of") != n:
        raise RequestError(
            "'best_of' must equal 'n': answers are not ranked on the server.", "best_of"
        )

    messages: tuple[Message, ...] = ()
    prompts: tuple[str | tuple[int, ...], ...] = ()
    if endpoint == CHAT:
        messages = _messages(body.get("messages"), limits)
    else:
        prompts = _prompts(body.get("prompt"), limits)
        if n * len(prompts) > limits.max_sequences:
            raise RequestError(
                f"{len(prompts)} prompts x n={n} answers is more than the {limits.max_sequences} "
                "a worker decodes at once.",
                "prompt",
            )
    echo = _bool(body, "echo") if endpoint == COMPLETION else False

    tools, tool_choice, parallel = (
        _tools(body) if endpoint == CHAT else ((), ToolChoice("none", ()), True)
    )
    output = _output_format(body, endpoint, limits)
    if output.kind != "text" and tool_choice.mode == "required":
        raise RequestError(
            "A forced tool call and a response format cannot both shape the answer; send one.",
            "response_format" if "response_format" in body else "grammar",
        )
    logprobs = _logprobs(body, endpoint)
    if logprobs is not None and echo:
        raise RequestError(
            "'echo' with 'logprobs' would need the prompt's log-probabilities, which are not computed.",
            "echo",
        )

    sampling = Sampling(
        max_tokens=_max_tokens(body, endpoint, limits),
        temperature=_number(body, "temperature"),
        top_p=_number(body, "top_p"),
        top_k=_integer(body, "top_k"),
        min_p=_number(body, "min_p"),
        repeat_penalty=_number(body, "repeat_penalty"),
        repeat_last_n=_integer(body, "repeat_last_n"),
        presence_penalty=_number(body, "presence_penalty"),
        frequency_penalty=_number(body, "frequency_penalty"),
        logit_bias=_logit_bias(body.get("logit_bias"), limits),
        seed=_seed(body),
        stop=_stop(body.get("stop")),
        ignore_eos=_bool(body, "ignore_eos"),
    )
    for name in ("metadata",):
        _metadata(body.get(name), name)
    user = None
    for name in (
        "user",
        "prompt_cache_key",
        "service_tier",
        "safety_identifier",
        "prompt_cache_retention",
    ):
        value = body.get(name)
        if value is not None and not isinstance(value, str):
            raise RequestError(f"'{name}' must be a string.", name)
        if isinstance(value, str):
            _check_text(value, name)
            if len(value) > MAX_METADATA_VALUE:
                raise RequestError(
                    f"'{name}' must be at most {MAX_METADATA_VALUE} characters.", name
                )
    for name in ("user", "prompt_cache_key"):
        if isinstance(body.get(name), str) and body[name]:
            user = f"{name}:{body[name]}"
            break
    if body.get("store") is not None:
        _bool(body, "store")
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise RequestError(
            "'modalities' must be [\"text\"]: this model writes text only.", "modalities"
        )
    return Request(
        endpoint=endpoint,
        stream=stream,
        sampling=sampling,
        n=n,
        messages=messages,
        prompts=prompts,
        echo=echo,
        logprobs=logprobs,
        output=output,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        include_usage=include_usage,
        obfuscate=obfuscate,
        user=user,
    )


def _clip(value: object, limit: int = 60) -> str:
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "…"


def _check_model(value: Any, limits: Limits) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise RequestError("'model' must be a string.", "model")
    if limits.model is not None and value != limits.model:
        raise RequestError(
            f"The model '{_clip(value)}' is not served at this URL, which serves '{limits.model}'.",
            "model",
            status=404,
            code="model_not_found",
        )


def _type_name(spec: Field) -> str:
    return {"number": "a number", "integer": "a whole number", "boolean": "true or false"}.get(
        spec.kind, spec.kind
    )


def _bool(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key)
    if value is None:
        return bool(FIELD[key].default)
    if not isinstance(value, bool):
        raise RequestError(f"'{key}' must be true or false.", key)
    return value


def _number(body: Mapping[str, Any], key: str) -> float:
    spec = FIELD[key]
    value = body.get(key)
    if value is None:
        return float(spec.default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{key}' must be {_type_name(spec)}.", key)
    return float(_in_range(spec, value))


def _integer(body: Mapping[str, Any], key: str) -> int:
    spec = FIELD[key]
    value = body.get(key)
    if value is None:
        return int(spec.default)
    return _whole(value, spec, key)


def _whole(value: Any, spec: Field, param: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"'{param}' must be a whole number.", param)
    if isinstance(value, float) and (not math.isfinite(value) or value != int(value)):
        if not math.isfinite(value):
            _in_range(spec, value, param)  # an overflowing number: say what the range is
        raise RequestError(f"'{param}' must be a whole number.", param)
    return int(_in_range(spec, value, param))


def _in_range(spec: Field, value: float, param: str | None = None) -> float:
    param = param or spec.name
    if not math.isfinite(value) and not (spec.minimum is not None or spec.maximum is not None):
        raise RequestError(f"'{param}' must be a finite number.", param)
    low = spec.minimum if spec.minimum is not None else -math.inf
    high = spec.maximum if spec.maximum is not None else math.inf
    if not low <= value <= high:
        shown = (
            value
            if math.isfinite(value)
            else ("a huge number" if value > 0 else "a huge negative number")
        )
        raise RequestError(
            f"'{param}' must be between {_num(spec.minimum)} and {_num(spec.maximum)}; got {shown}.",
            param,
        )
    return value


def _seed(body: Mapping[str, Any]) -> int | None:
    value = body.get("seed")
    if value is None:
        return None
    return _whole(value, FIELD["seed"], "seed")


def _max_tokens(body: Mapping[str, Any], endpoint: str, limits: Limits) -> int | None:
    given = [
        (name, _whole(body[name], FIELD[name], name))
        for name in ("max_completion_tokens", "max_tokens", "max_new_tokens")
        if body.get(name) is not None and endpoint in FIELD[name].endpoints
    ]
    if not given:
        return None
    values = {value for _, value in given}
    if len(values) > 1:
        names = " and ".join(f"'{name}'" for name, _ in given)
        raise RequestError(f"{names} disagree; send one of them.", given[0][0])
    name, value = given[0]
    if value >= limits.n_ctx:
        raise RequestError(
            f"'{name}' must be less than the context window of {limits.n_ctx} tokens; got {value}.",
            name,
        )
    return value


def _stream_options(value: Any) -> tuple[bool, bool]:
    if value is None:
        return True, False
    if not isinstance(value, dict):
        raise RequestError("'stream_options' must be an object.", "stream_options")
    for key in value:
        if key not in ("include_usage", "include_obfuscation"):
            raise RequestError(
                f"Unknown field 'stream_options.{_clip(key)}'; it takes include_usage and "
                "include_obfuscation.",
                "stream_options",
            )
    flags = []
    for key, fallback in (("include_usage", True), ("include_obfuscation", False)):
        flag = value.get(key, fallback)
        if flag is None:
            flag = fallback
        if not isinstance(flag, bool):
            raise RequestError(f"'stream_options.{key}' must be true or false.", "stream_options")
        flags.append(flag)
    return flags[0], flags[1]


def _check_text(text: str, param: str) -> None:
    if "\x00" in text:
        raise RequestError(f"{param} contains a NUL character.", param)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestError(
            f"{param} contains an unpaired surrogate (invalid Unicode).", param
        ) from None
    for mark in TEXT_MARKS:
        if mark in text:
            raise RequestError(
                f"{param} contains the Unicode noncharacter U+{ord(mark):04X}, which the server "
                "uses internally.",
                param,
            )


def _string(value: Any, param: str, *, allow_empty: bool = True, limit: int | None = None) -> str:
    if not isinstance(value, str):
        raise RequestError(f"'{param}' must be a string.", param)
    if not allow_empty and not value.strip():
        raise RequestError(f"'{param}' must not be empty.", param)
    if limit is not None and len(value) > limit:
        raise RequestError(
            f"'{param}' must be at most {limit} characters; got {len(value)}.", param
        )
    _check_text(value, param)
    return value


MESSAGE_KEYS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "refusal"},
    "tool": {"role", "content", "tool_call_id", "name"},
}
ROLES = tuple(MESSAGE_KEYS)


def _messages(value: Any, limits: Limits) -> tuple[Message, ...]:
    if value is None:
        raise RequestError("'messages' is required.", "messages")
    if not isinstance(value, list):
        raise RequestError("'messages' must be a list of {role, content} objects.", "messages")
    if not value:
        raise RequestError("'messages' must not be empty.", "messages")
    # Every message costs at least one token: a longer list cannot fit, and is refused before
    # any of it is read.
    if len(value) >= limits.n_ctx:
        raise RequestError(
            f"'messages' has {len(value)} messages; at most {limits.n_ctx - 1} fit in the "
            f"context window of {limits.n_ctx} tokens.",
            "messages",
            code="context_length_exceeded",
        )
    budget = _TextBudget(limits, "messages")
    out = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise RequestError(f"{where} must be an object with 'role' and 'content'.", where)
        role = message.get("role")
        if not isinstance(role, str) or role not in MESSAGE_KEYS:
            raise RequestError(
                f"{where}.role must be one of {', '.join(ROLES)}; got {_clip(role)}.",
                f"{where}.role",
            )
        for key in message:
            if key not in MESSAGE_KEYS[role]:
                raise RequestError(
                    f"{where}.{_clip(key)} is not a field of a {role} message.",
                    f"{where}.{_clip(key)}",
                )
        tool_calls = (
            _message_tool_calls(message.get("tool_calls"), where, budget)
            if role == "assistant"
            else ()
        )
        content = _content(
            message.get("content"),
            where,
            optional=bool(tool_calls) or role == "assistant" and "refusal" in message,
        )
        if content is not None:
            budget.take(content)
        refusal = message.get("refusal")
        if refusal is not None:
            budget.take(_string(refusal, f"{where}.refusal"))
            if content is None:
                content = refusal
        name = message.get("name")
        if name is not None:
            name = _string(name, f"{where}.name", limit=MAX_NAME_LENGTH)
        tool_call_id = None
        if role == "tool":
            tool_call_id = (
                _string(
                    message.get("tool_call_id"),
                    f"{where}.tool_call_id",
                    allow_empty=False,
                    limit=MAX_METADATA_VALUE,
                )
                if message.get("tool_call_id") is not None
                else None
            )
            if tool_call_id is None:
                raise RequestError(
                    f"{where}.tool_call_id is required for a tool message.", f"{where}.tool_call_id"
                )
        out.append(
            Message(
                role="system" if role == "developer" else role,
                content=content,
                name=name,
                tool_calls=tool_calls,
                tool_call_id=tool_call_id,
            )
        )
    if all(not (m.content or "").strip() and not m.tool_calls for m in out):
        raise RequestError("Every message is empty; send some text.", "messages")
    return tuple(out)


class _TextBudget:
    """Counts a request's characters; past what could fit in the context window, it refuses."""

    def __init__(self, limits: Limits, param: str) -> None:
        self.left = limits.max_text_chars
        self.limits = limits
        self.param = param

    def take(self, text: str) -> None:
        self.left -= len(text)
        if self.left < 0:
            raise RequestError(
                f"The request holds more than {self.limits.max_text_chars} characters of text, "
                f"more than fits in the context window of {self.limits.n_ctx} tokens.",
                self.param,
                code="context_length_exceeded",
            )


PART_NAMES = {
    "image_url": "an image",
    "input_audio": "audio",
    "file": "a file",
}


def _content(value: Any, where: str, optional: bool) -> str | None:
    param = f"{where}.content"
    if value is None:
        if optional:
            return None
        raise RequestError(f"{param} must be a string.", param)
    if isinstance(value, list):  # OpenAI content parts: text only
        texts = []
        for j, part in enumerate(value):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in PART_NAMES:
                raise RequestError(
                    f"{param}[{j}] is {PART_NAMES[kind]}; this model reads text only.", param
                )
            if (
                kind not in ("text", "refusal")
                or not isinstance(part.get(kind), str)
                or set(part) - {"type", kind}
            ):
                raise RequestError(f"{param} parts must be {{type: 'text', text: ...}}.", param)
            texts.append(part[kind])
        value = "".join(texts)
    if not isinstance(value, str):
        raise RequestError(f"{param} must be a string.", param)
    _check_text(value, param)
    return value


def _message_tool_calls(value: Any, where: str, budget: _TextBudget) -> tuple[ToolCall, ...]:
    if value is None:
        return ()
    param = f"{where}.tool_calls"
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise RequestError(f"{param} must be a list of at most {MAX_TOOLS} tool calls.", param)
    calls = []
    for j, call in enumerate(value):
        at = f"{param}[{j}]"
        if (
            not isinstance(call, dict)
            or call.get("type", "function") != "function"
            or set(call) - {"id", "type", "function"}
        ):
            raise RequestError(
                f"{at} must be {{id, type: 'function', function: {{name, arguments}}}}.", at
            )
        function = call.get("function")
        if not isinstance(function, dict) or set(function) - {"name", "arguments"}:
            raise RequestError(f"{at}.function must be {{name, arguments}}.", at)
        name = _string(
            function.get("name"), f"{at}.function.name", allow_empty=False, limit=MAX_NAME_LENGTH
        )
        arguments = _string(function.get("arguments", "{}"), f"{at}.function.arguments")
        budget.take(arguments)
        call_id = _string(call.get("id", f"call_{j}"), f"{at}.id", limit=MAX_METADATA_VALUE)
        calls.append(ToolCall(call_id, name, arguments))
    return tuple(calls)


def _prompts(value: Any, limits: Limits) -> tuple[str | tuple[int, ...], ...]:
    if value is None:
        raise RequestError("'prompt' is required.", "prompt")
    budget = _TextBudget(limits, "prompt")
    if isinstance(value, str):
        items: list[Any] = [value]
    elif (
        isinstance(value, list)
        and value
        and all(isinstance(x, int) and not isinstance(x, bool) for x in value)
    ):
        items = [value]
    elif isinstance(value, list):
        items = value
    else:
        raise RequestError(
            "'prompt' must be a string, a list of strings or a list of token ids.", "prompt"
        )
    if not items:
        raise RequestError("'prompt' must not be empty.", "prompt")
    if len(items) > limits.max_sequences:
        raise RequestError(
            f"'prompt' holds {len(items)} prompts; a worker decodes at most {limits.max_sequences} at once.",
            "prompt",
        )
    out: list[str | tuple[int, ...]] = []
    for i, item in enumerate(items):
        param = "prompt" if len(items) == 1 else f"prompt[{i}]"
        if isinstance(item, str):
            text = _string(item, param, allow_empty=False)
            budget.take(text)
            out.append(text)
        elif isinstance(item, list) and item:
            if len(item) >= limits.n_ctx:
                raise RequestError(
                    f"{param} has {len(item)} tokens; this model's context window is {limits.n_ctx}.",
                    param,
                    code="context_length_exceeded",
                )
            out.append(_token_ids(item, param, limits))
        else:
            raise RequestError(f"{param} must be a non-empty string or list of token ids.", param)
    return tuple(out)


def _token_ids(value: list[Any], param: str, limits: Limits) -> tuple[int, ...]:
    for token in value:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < limits.n_vocab:
            raise RequestError(
                f"{param} holds {_clip(token)}, which is not a token id (0 to {limits.n_vocab - 1}).",
                param,
            )
    return tuple(value)


MAX_DETOKENIZE = 1 << 16


def _token_request(endpoint: str, body: Mapping[str, Any], limits: Limits) -> Request:
    if endpoint == DETOKENIZE:
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or len(tokens) > MAX_DETOKENIZE:
            raise RequestError(
                f"'tokens' must be a list of at most {MAX_DETOKENIZE} token ids.", "tokens"
            )
        return Request(endpoint, tokens=_token_ids(tokens, "tokens", limits))
    has_messages = body.get("messages") is not None
    if has_messages == (body.get("content") is not None):
        raise RequestError(
            "Send either 'content' (text) or 'messages' (a chat) to tokenize.", "content"
        )
    content = None
    if not has_messages:
        content = _string(body.get("content"), "content")
        _TextBudget(limits, "content").take(content)
    tools, choice, parallel = _tools(body)
    return Request(
        endpoint,
        messages=_messages(body.get("messages"), limits) if has_messages else (),
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        content=content,
        add_special=_bool(body, "add_special"),
        parse_special=_bool(body, "parse_special"),
        with_pieces=_bool(body, "with_pieces"),
    )


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise RequestError("'stop' must be a string or a list of strings.", "stop")
    if len(value) > MAX_STOP_SEQUENCES:
        raise RequestError(f"'stop' may hold at most {MAX_STOP_SEQUENCES} sequences.", "stop")
    for s in value:
        if len(s) > MAX_STOP_LENGTH:
            raise RequestError(
                f"Each stop sequence must be at most {MAX_STOP_LENGTH} characters.", "stop"
            )
        _check_text(s, "stop")
    return tuple(s for s in value if s)


def _logit_bias(value: Any, limits: Limits) -> tuple[tuple[int, float], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise RequestError(
            "'logit_bias' must be an object mapping token ids to numbers.", "logit_bias"
        )
    if len(value) > MAX_LOGIT_BIAS:
        raise RequestError(f"'logit_bias' may hold at most {MAX_LOGIT_BIAS} tokens.", "logit_bias")
    out = []
    for key, bias in value.items():
        if (
            not isinstance(key, str)
            or not key.isascii()
            or not key.isdigit()
            or len(key) > 9
            or int(key) >= limits.n_vocab
        ):
            raise RequestError(
                f"'logit_bias' key {_clip(key)} is not a token id (0 to {limits.n_vocab - 1}).",
                "logit_bias",
            )
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise RequestError(
                f"'logit_bias' values must be numbers from -100 to 100; token {key} has {_clip(bias)}.",
                "logit_bias",
            )
        out.append((int(key), float(bias)))
    return tuple(out)


def _logprobs(body: Mapping[str, Any], endpoint: str) -> int | None:
    value = body.get("logprobs")
    top = body.get("top_logprobs")
    if endpoint == CHAT:
        if value is not None and not isinstance(value, bool):
            raise RequestError("'logprobs' must be true or false.", "logprobs")
        if top is not None:
            count = _integer(body, "top_logprobs")
            if not value:
                raise RequestError("'top_logprobs' needs 'logprobs': true.", "top_logprobs")
            return count
        return 0 if value else None
    if value is None:
        return None
    spec = Field("logprobs", "integer", "", minimum=0, maximum=MAX_TOP_LOGPROBS)
    return _whole(value, spec, "logprobs")


def _metadata(value: Any, param: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS:
        raise RequestError(
            f"'{param}' must be an object of at most {MAX_METADATA_KEYS} strings.", param
        )
    for key, item in value.items():
        _string(key, f"{param} key", limit=64)
        _string(item, f"{param}.{_clip(key)}", limit=MAX_METADATA_VALUE)


def _tools(body: Mapping[str, Any]) -> tuple[tuple[Tool, ...], ToolChoice, bool]:
    value = body.get("tools")
    parallel = _bool(body, "parallel_tool_calls")
    tools: list[Tool] = []
    if value is not None:
        if not isinstance(value, list) or len(value) > MAX_TOOLS:
            raise RequestError(f"'tools' must be a list of at most {MAX_TOOLS} tools.", "tools")
        for i, tool in enumerate(value):
            at = f"tools[{i}]"
            if not isinstance(tool, dict) or tool.get("type") != "function":
                kind = tool.get("type") if isinstance(tool, dict) else None
                raise RequestError(
                    f"{at} must be {{type: 'function', function: {{...}}}}"
                    + (
                        f"; '{_clip(kind)}' tools are not supported."
                        if isinstance(kind, str)
                        else "."
                    ),
                    at,
                )
            if set(tool) - {"type", "function"}:
                raise RequestError(f"{at} holds unknown fields; it takes type and function.", at)
            function = tool.get("function")
            if not isinstance(function, dict) or set(function) - {
                "name",
                "description",
                "parameters",
                "strict",
            }:
                raise RequestError(
                    f"{at}.function must be {{name, description?, parameters?, strict?}}.", at
                )
            name = function.get("name")
            if not isinstance(name, str) or not NAME_PATTERN.match(name):
                raise RequestError(
                    f"{at}.function.name must be 1 to 64 letters, digits, _ or -.", at
                )
            if any(t.name == name for t in tools):
                raise RequestError(f"Two tools are named '{name}'.", at)
            description = function.get("description") or ""
            _string(description, f"{at}.function.description", limit=MAX_SCHEMA_CHARS)
            parameters = function.get("parameters", {"type": "object", "properties": {}})
            _schema(parameters, f"{at}.function.parameters")
            strict = function.get("strict")
            if strict is not None and not isinstance(strict, bool):
                raise RequestError(f"{at}.function.strict must be true or false.", at)
            tools.append(Tool(name, description, parameters))
    names = tuple(t.name for t in tools)
    choice = body.get("tool_choice")
    if choice is None:
        mode = "auto" if tools else "none"
        return tuple(tools), ToolChoice(mode, names if tools else ()), parallel
    if not tools and choice != "none":
        raise RequestError("'tool_choice' needs 'tools'.", "tool_choice")
    if choice in ("none", "auto", "required"):
        return tuple(tools), ToolChoice(choice, () if choice == "none" else names), parallel
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (
            choice.get("function", {}).get("name")
            if isinstance(choice.get("function"), dict)
            else None
        )
        if name not in names:
            raise RequestError(
                f"'tool_choice' names {_clip(name)}, which is not in 'tools'.", "tool_choice"
            )
        return tuple(tools), ToolChoice("required", (name,)), parallel
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice.get("allowed_tools")
        if not isinstance(allowed, dict) or allowed.get("mode") not in ("auto", "required"):
            raise RequestError(
                "'tool_choice.allowed_tools' must be {mode: auto|required, tools: [...]}.",
                "tool_choice",
            )
        picked = []
        for ref in allowed.get("tools") or []:
            name = (
                ref.get("function", {}).get("name")
                if isinstance(ref, dict) and isinstance(ref.get("function"), dict)
                else None
            )
            if name not in names:
                raise RequestError(
                    f"'tool_choice.allowed_tools' names {_clip(name)}, which is not in 'tools'.",
                    "tool_choice",
                )
            picked.append(name)
        if not picked:
            raise RequestError(
                "'tool_choice.allowed_tools.tools' must name at least one tool.", "tool_choice"
            )
        return tuple(tools), ToolChoice(allowed["mode"], tuple(picked)), parallel
    raise RequestError(
        "'tool_choice' must be none, auto, required, {type: 'function', function: {name}} or "
        "{type: 'allowed_tools', ...}.",
        "tool_choice",
    )


def _output_format(body: Mapping[str, Any], endpoint: str, limits: Limits) -> OutputFormat:
    grammar = body.get("grammar")
    value = body.get("response_format") if endpoint == CHAT else None
    fmt = OutputFormat()
    if value is not None:
        if not isinstance(value, dict) or value.get("type") not in (
            "text",
            "json_object",
            "json_schema",
        ):
            raise RequestError(
                "'response_format' must be {type: 'text'}, {type: 'json_object'} or "
                "{type: 'json_schema', json_schema: {...}}.",
                "response_format",
            )
        kind = value["type"]
        allowed_keys = {"type", "json_schema"} if kind == "json_schema" else {"type"}
        if set(value) - allowed_keys:
            raise RequestError(
                f"'response_format' of type {kind} takes only {', '.join(sorted(allowed_keys))}.",
                "response_format",
            )
        if kind == "json_object":
            fmt = OutputFormat("json_object")
        elif kind == "json_schema":
            spec = value.get("json_schema")
            if not isinstance(spec, dict) or set(spec) - {
                "name",
                "description",
                "schema",
                "strict",
            }:
                raise RequestError(
                    "'response_format.json_schema' must be {name, description?, schema?, strict?}.",
                    "response_format",
                )
            name = spec.get("name")
            if not isinstance(name, str) or not NAME_PATTERN.match(name):
                raise RequestError(
                    "'response_format.json_schema.name' must be 1 to 64 letters, digits, _ or -.",
                    "response_format",
                )
            if spec.get("description") is not None:
                _string(
                    spec["description"],
                    "response_format.json_schema.description",
                    limit=MAX_SCHEMA_CHARS,
                )
            if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
                raise RequestError(
                    "'response_format.json_schema.strict' must be true or false.", "response_format"
                )
            schema = spec.get("schema", {"type": "object"})
            _schema(schema, "response_format.json_schema.schema")
            fmt = OutputFormat("json_schema", schema=schema, name=name)
    if grammar is not None:
        text = _string(grammar, "grammar", allow_empty=False, limit=MAX_GRAMMAR_CHARS)
        if fmt.kind != "text":
            raise RequestError(
                "Send either 'grammar' or a JSON 'response_format', not both.", "grammar"
            )
        fmt = OutputFormat("grammar", grammar=text)
    return fmt


def _schema(value: Any, param: str) -> None:
    """A JSON schema's shape: an object, bounded in size and depth (the handler compiles it)."""
    if not isinstance(value, dict):
        raise RequestError(f"{param} must be a JSON schema object.", param)
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        raise RequestError(f"{param} is not plain JSON.", param) from None
    if len(text) > MAX_SCHEMA_CHARS:
        raise RequestError(f"{param} must be at most {MAX_SCHEMA_CHARS} characters of JSON.", param)
    if _depth(value) > MAX_SCHEMA_DEPTH:
        raise RequestError(f"{param} nests deeper than {MAX_SCHEMA_DEPTH} levels.", param)
    _check_text(text, param)


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_SCHEMA_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


# -- the README's table -----------------------------------------------------------------------

TABLE_START = "<!-- parameters: generated from tschat/contract.py -->"
TABLE_END = "<!-- /parameters -->"


def markdown_table() -> str:
    """The README's parameter table, one row per field."""
    rows = [
        "| field | endpoints | type | default | here | what it does |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in FIELDS:
        endpoints = (
            ", ".join(ENDPOINT_NAMES[e] for e in f.endpoints) if f.endpoints != ALL else "all"
        )
        name = f"`{f.name}`" + (" (ext.)" if f.extension else "")
        shown_default = "" if f.default is None else f"`{json.dumps(f.default)}`"
        doc = f.doc.replace("|", "\\|")
        rows.append(
            f"| {name} | {endpoints} | {f.range_text()} | {shown_default} | {f.treatment} | {doc} |"
        )
    return "\n".join(rows)


def readme_table(readme: str) -> str:
    """The table between the markers of a README's text."""
    start = readme.index(TABLE_START) + len(TABLE_START)
    return readme[start : readme.index(TABLE_END)].strip()


if __name__ == "__main__":  # python -m tschat.contract > table.md
    sys.stdout.write(markdown_table() + "\n")
