"""Batched text generation on llama.cpp's low-level API.

The high-level ``llama_cpp.Llama`` decodes one sequence at a time. This engine keeps one KV-cache
sequence per request and runs a single ``llama_decode`` per step over every active sequence, so
a batch of N requests costs about one forward pass per token instead of N.

Each ``Generation`` has its own sampler chain (seed, temperature, top-k/p, min-p, penalties,
logit bias), its own grammar if it has one, its own stop conditions and its own UTF-8 decoder, so
its output does not depend on what else is in the batch: answers under different grammars share
one batch. Prompts are prefilled in chunks that share the step with other sequences' decode
tokens, which is what lets a new request join a running batch; a step takes one prompt's chunk,
the prompt with the fewest tokens left.

A prompt that begins like one already in the cache skips that part of its prefill: the cache of a
running sequence, or the one a finished sequence left in its slot (the previous turn of a chat),
is copied into the new sequence up to the shared prefix (``llama_memory_seq_cp``). When several
requests with the same beginning arrive together, one prefills it and the others copy it a step
later. The copied cells hold the same numbers a prefill would compute. Whose caches a prompt may
reuse is ``prefix_cache``: everyone's, the same user's only, or none. The ``n`` answers of one
request are forks of one prompt: the first prefills it, the others copy it, whatever the cache.

A generation that finds no free KV slot waits in a queue and starts the step a slot frees.

Objects here are not thread-safe: one thread drives an engine.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import dataclasses
import logging
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import llama_cpp
import numpy as np
from contract import Sampling, sampler_seed

logger = logging.getLogger(__name__)

# Finish reasons, as OpenAI names them.
STOP = "stop"
LENGTH = "length"
CANCELLED = "cancelled"


GGML_LOG_LEVEL_WARN = 3
GGML_LOG_LEVEL_ERROR = 4
_captured: list[str] | None = None  # llama.cpp's log lines while a model loads


@llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
def _log_to_python(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    """Pass llama.cpp's warnings and errors to Python logging; drop its chatty load log."""
    if _captured is not None:
        _captured.append(text.decode("utf-8", errors="replace"))
    if level in (GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR):
        logger.warning("llama.cpp: %s", text.decode("utf-8", errors="replace").rstrip())


llama_cpp.llama_log_set(_log_to_python, ctypes.c_void_p(0))


SPLIT_MODES = {
    "none": llama_cpp.LLAMA_SPLIT_MODE_NONE,
    "layer": llama_cpp.LLAMA_SPLIT_MODE_LAYER,
    "row": llama_cpp.LLAMA_SPLIT_MODE_ROW,
}

# Who may reuse whose cached prompt beginning (handler.prefix_cache in model-config.yaml).
CACHE_SHARED = "shared"  # everyone's: one user's machine
CACHE_PER_USER = "per_user"  # only a request with the same scope (OpenAI `user` field)
CACHE_OFF = "off"
CACHE_SCOPES = (CACHE_SHARED, CACHE_PER_USER, CACHE_OFF)

# llama.cpp's attention kernel (handler.flash_attn): "auto" lets llama.cpp choose (on wherever
# the device supports it, the CPU included), as llama-server's -fa auto does.
FLASH_ATTN_MODES = {
    "auto": llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}

# llama_token_data as numpy sees it, for sampling from a candidate array built in place.
# The most tokens a top-k in front of the penalties keeps. A top-k costs more the more it keeps:
# per token, one sequence, 80-104 us keeping 104 (the defaults) against 178-207 us for the whole
# vocabulary, 155-206 us keeping 1,024 against 215-222 us. Beyond that it saves little, and near
# the vocabulary's size it is a full sort (repeat_last_n may be up to a million).
MAX_KEPT_BEFORE_PENALTIES = 1024
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class ContextOverflow(ValueError):
    """A prompt that does not fit in one sequence's context window."""


class GrammarError(ValueError):
    """A grammar llama.cpp cannot use; the message says why."""


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """What the engine loads and how much it may run at once."""

    model_path: str
    n_ctx: int = 2048
    n_threads: int = 2
    n_gpu_layers: int = -1
    max_sequences: int = 4
    n_batch: int = 512
    main_gpu: int = 0
    rpc_servers: tuple[str, ...] = ()  # host:port of llama.cpp RPC servers to offload layers to
    split_mode: str = (
        "layer"  # several devices: "layer" (pipeline), "row" (tensor parallel), "none"
    )
    tensor_split: tuple[float, ...] = ()  # share of the model per device; empty = by free memory
    kv_unified: bool = False  # one KV stream for all: faster batches, batch-dependent rounding
    prefix_cache: str = CACHE_SHARED  # whose cached prompt beginnings a new prompt may reuse
    flash_attn: str = "auto"  # llama.cpp's flash attention: auto, on or off (FLASH_ATTN_MODES)


@dataclasses.dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability and the likeliest alternatives at its place."""

    token: int
    piece: bytes
    logprob: float
    top: tuple[tuple[int, bytes, float], ...]


@dataclasses.dataclass
class StepTimes:
    """Where the engine's steps spent their time since it started: seconds and counts, summed.

    ``decode_s`` is ``llama_decode`` itself; ``prefill_decode_s`` the part of it in steps that
    held a prompt chunk. ``sample_s`` is choosing the tokens; ``detok_s`` turning them into text,
    stop sequences and the bookkeeping after; ``build_s`` filling the batch.
    """

    steps: int = 0
    prefill_steps: int = 0
    tokens: int = 0  # fed to llama_decode, prompt chunks included
    sampled: int = 0
    moves: int = 0  # sequences moved down into a free slot (``LlamaEngine._pack_slots``)
    build_s: float = 0.0
    decode_s: float = 0.0
    prefill_decode_s: float = 0.0
    sample_s: float = 0.0
    detok_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in dataclasses.asdict(self).items()}


class Generation:
    """One answer's sequence: its prompt, sampler, output so far and timings."""

    def __init__(
        self,
        prompt_tokens: list[int],
        params: Sampling,
        *,
        grammar: str | None = None,
        logprobs: int | None = None,
        scope: str | None = None,
    ) -> None:
        self.seq_id = -1  # the KV slot, once it has one
        self.prompt_tokens = prompt_tokens
        self.params = params
        self.grammar = grammar
        self.logprobs = logprobs
        self.scope = scope
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.error: str | None = None  # why it ended early, if something went wrong
        self.text = ""
        self.created = time.perf_counter()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self._pending = list(prompt_tokens)  # tokens still to feed to the model
        self._n_past = 0
        self._tokens = list(prompt_tokens)  # the sequence so far; the first _n_past are cached
        self._waiting_for: tuple[Generation, int] | None = None  # (donor, prefix) to copy
        self._fork_of: Generation | None = None  # shares this one's prompt, whatever the cache
        self.cached_tokens = 0  # prompt tokens taken from the cache instead of prefilled
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # decoded text held back because it may start a stop sequence
        self._delta = ""  # text produced since the last take_delta()
        self._entries: list[TokenLogprob] = []  # log-probabilities since the last take_logprobs()
        self._sampler: ctypes.c_void_p | None = None
        self._grammar: ctypes.c_void_p | None = None
        self._greedy = False  # its sampler only takes the likeliest token: argmax does the same
        self._bias: tuple[np.ndarray, np.ndarray] | None = None  # (token ids, biases) for argmax

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def queued(self) -> bool:
        """Waiting for a free KV slot."""
        return self.seq_id < 0 and not self.finished

    def take_delta(self) -> str:
        """Return the text produced since the last call (never a split UTF-8 character)."""
        delta, self._delta = self._delta, ""
        return delta

    def take_logprobs(self) -> list[TokenLogprob]:
        """Return the log-probabilities of the tokens sampled since the last call."""
        entries, self._entries = self._entries, []
        return entries

    @property
    def ttft_ms(self) -> float | None:
        if self.first_token_at is None:
            return None
        return (self.first_token_at - self.created) * 1000.0

    @property
    def tokens_per_second(self) -> float | None:
        """Decode speed after the first token."""
        if self.first_token_at is None or self.completion_tokens < 2:
            return None
        end = self.finished_at or time.perf_counter()
        elapsed = end - self.first_token_at
        return (self.completion_tokens - 1) / elapsed if elapsed > 0 else None

    def _emit(self, text: str, final: bool) -> None:
        """Add decoded text, holding back a tail that could still grow into a stop sequence."""
        buffer = self._held + text
        stops = self.params.stop
        for stop in stops:
            at = buffer.find(stop)
            if at != -1:
                self._delta += buffer[:at]
                self.text += buffer[:at]
                self._held = ""
                self.finish_reason = STOP
                return
        keep = 0 if final else _longest_stop_prefix(buffer, stops)
        ready = buffer[: len(buffer) - keep]
        self._held = buffer[len(buffer) - keep :]
        self._delta += ready
        self.text += ready

    def _finish(self, reason: str) -> None:
        if self.finish_reason is None:
            self._emit(self._decoder.decode(b"", final=True), final=True)
            if self.finish_reason is None:
                self.finish_reason = reason
        self.finished_at = time.perf_counter()


def _longest_stop_prefix(text: str, stops: Iterable[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop sequence.

    >>> _longest_stop_prefix("Hello\\nQ", ["\\nQ:"])
    2
    >>> _longest_stop_prefix("Hello", ["\\nQ:"])
    0
    """
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


def _common_prefix(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """Length of the common beginning of a and b, at most ``limit``.

    >>> _common_prefix([1, 2, 3, 4], [1, 2, 5], 10), _common_prefix([1, 2], [1, 2], 1)
    (2, 1)
    """
    n = 0
    for x, y in zip(a, b, strict=False):
        if n >= limit or x != y:
            break
        n += 1
    return n


def _holder(held: dict[int, int], own: int = -1) -> int:
    """The slot that holds the most (``own`` first on a tie, then the lowest); -1: none holds any.

    >>> _holder({3: 5, 1: 5, 2: 4}), _holder({3: 5, 1: 5}, own=3), _holder({2: 0}), _holder({})
    (1, 3, -1, -1)
    """
    slot = max(held, key=lambda slot: (held[slot], slot == own, -slot), default=-1)
    return slot if slot >= 0 and held[slot] > 0 else -1


def _penalised(p: Sampling) -> bool:
    return p.repeat_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


def _penalties_only_lower(p: Sampling) -> bool:
    """Whether the penalties can only lower a logit (never raise a seen token above others)."""
    return p.repeat_penalty >= 1.0 and p.frequency_penalty >= 0.0 and p.presence_penalty >= 0.0


def _kept_before_penalties(p: Sampling) -> int:
    """How many of the likeliest tokens the penalties need to see, 0 for the whole vocabulary.

    Penalties change only the last ``repeat_last_n`` tokens' logits. When they can only lower
    them, the ``k`` likeliest tokens after the penalties are among the ``k + repeat_last_n``
    likeliest before, so a top-k of that many in front of the penalties picks exactly what the
    whole vocabulary would, while the penalties look up ~100 tokens instead of every one.

    >>> _kept_before_penalties(Sampling(temperature=0.8, top_k=40, repeat_penalty=1.1))
    104
    >>> _kept_before_penalties(Sampling(temperature=0.0, repeat_penalty=1.1))  # greedy: k = 1
    65
    >>> _kept_before_penalties(Sampling(temperature=0.8, top_k=0, repeat_penalty=1.1))  # no k
    0
    >>> _kept_before_penalties(Sampling(temperature=0.8, repeat_penalty=0.9))  # may raise one
    0
    """
    k = 1 if p.greedy else p.top_k
    if k <= 0 or not _penalties_only_lower(p):
        return 0
    kept = k + p.repeat_last_n
    return kept if kept <= MAX_KEPT_BEFORE_PENALTIES else 0


def _only_greedy(p: Sampling) -> bool:
    """Whether the sampler chain for ``p`` is llama.cpp's greedy sampler, after any logit bias.

    Such a chain takes the likeliest token once the biases (``logit_bias``, and ``ignore_eos``'s
    ban of the end-of-generation tokens) are added: one argmax over the step's logits does that.
    """
    return p.greedy and not _penalised(p)


def _bias_may_change(bias: tuple[np.ndarray, np.ndarray], best: int) -> bool:
    """Whether adding ``bias`` (token ids, values) to the logits may move their argmax ``best``.

    Biases that only lower logits, none of them on ``best``, leave it the first maximum.

    >>> ban = (np.array([2, 7]), np.array([-np.inf, -100.0], dtype=np.float32))
    >>> _bias_may_change(ban, 5), _bias_may_change(ban, 7)
    (False, True)
    >>> _bias_may_change((np.array([2]), np.array([0.5], dtype=np.float32)), 5)
    True
    """
    ids, values = bias
    return bool((values > 0).any() or (ids == best).any())


def _step_order(gen: Generation) -> tuple[int, int]:
    """Which generations a step serves first: decoding ones by slot, then prompts, the one
    with the fewest tokens left first."""
    pending = len(gen._pending)
    return (0, gen.seq_id) if pending <= 1 else (1, pending)


# A shorter shared beginning is prefilled again: copying a sequence's cache costs about as much
# as prefilling a few tokens.
MIN_SHARED_PREFIX = 8
# Steps a free slot stays below a running sequence before that sequence moves down into it. A
# chat's next turn arrives within a step or two and takes back the slot holding its history;
# a slot free for longer is a client gone, and the gap it leaves costs every later step.
PACK_AFTER_STEPS = 3


def _scan_vocab(vocab: ctypes.c_void_p, n_vocab: int) -> tuple[tuple[int, ...], int]:
    """The end-of-generation tokens, and the longest text a token stands for (in bytes).

    A text longer than n_ctx times the latter cannot fit in the context window.
    """
    piece = ctypes.create_string_buffer(256)  # its own: this runs beside the engine's thread
    eog: list[int] = []
    longest = 1
    for token in range(n_vocab):
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            eog.append(token)
        n = llama_cpp.llama_token_to_piece(vocab, token, piece, len(piece), 0, False)
        longest = max(longest, abs(n))  # negative: the room it needs
    return tuple(eog), longest


class LlamaEngine:
    """A loaded GGUF model with a KV cache shared by up to ``max_sequences`` generations."""

    def __init__(self, config: EngineConfig) -> None:
        if config.prefix_cache not in CACHE_SCOPES:
            raise ValueError(
                f"prefix_cache must be one of {', '.join(CACHE_SCOPES)}; "
                f"got {config.prefix_cache!r}"
            )
        if config.flash_attn not in FLASH_ATTN_MODES:
            raise ValueError(
                f"flash_attn must be one of {', '.join(FLASH_ATTN_MODES)}; "
                f"got {config.flash_attn!r}"
            )
        self.config = config
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        self.backend = _backend_name()
        if config.rpc_servers:
            # An explicit device list: the RPC servers' devices (and a local GPU, if any).
            devices = _add_rpc_servers(config.rpc_servers) + _local_gpu_devices()
            self._devices = (ctypes.c_void_p * (len(devices) + 1))(*devices, None)
            model_params.devices = ctypes.cast(self._devices, ctypes.c_void_p)
            self.backend = f"rpc+{self.backend}"
        self.gpu_offload = self.backend != "cpu"
        # A negative n_gpu_layers means all layers; without a GPU or RPC device none is offloaded.
        model_params.n_gpu_layers = config.n_gpu_layers if self.gpu_offload else 0
        model_params.main_gpu = config.main_gpu
        model_params.split_mode = SPLIT_MODES[config.split_mode]
        if config.tensor_split:
            n_max = llama_cpp.llama_max_devices()
            if len(config.tensor_split) > n_max:
                raise ValueError(f"tensor_split has more than {n_max} entries")
            self._tensor_split = (ctypes.c_float * n_max)(*config.tensor_split)
            model_params.tensor_split = self._tensor_split
        model_params.use_mmap = True  # workers share the weights' pages
        with _capture_log() as log:
            self.model = llama_cpp.llama_model_load_from_file(
                os.fsencode(config.model_path), model_params
            )
        self.layers_by_device = _layers_by_device(log)
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load the model file {config.model_path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_layers = llama_cpp.llama_model_n_layer(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

        ctx_params = llama_cpp.llama_context_default_params()
        # The cache holds n_ctx tokens per sequence. By default each sequence has a cache stream
        # of its own, so its numbers do not depend on its neighbours: greedy output is the same
        # alone or in any batch. kv_unified shares one stream: ~1.4x more tokens/s at 8
        # sequences, but attention then spans other sequences' cells and rounding can differ.
        ctx_params.n_seq_max = config.max_sequences
        ctx_params.n_ctx = config.n_ctx * config.max_sequences
        ctx_params.kv_unified = config.kv_unified
        ctx_params.n_batch = config.n_batch
        ctx_params.n_ubatch = config.n_batch
        ctx_params.n_threads = config.n_threads
        ctx_params.n_threads_batch = config.n_threads
        ctx_params.no_perf = True
        ctx_params.flash_attn_type = FLASH_ATTN_MODES[config.flash_attn]
        # Creating the context allocates and clears the KV cache (a few hundred ms for many
        # sequences, without the GIL): the vocabulary is scanned meanwhile.
        with ThreadPoolExecutor(1) as pool:
            scan = pool.submit(_scan_vocab, self.vocab, self.n_vocab)
            self.ctx = llama_cpp.llama_init_from_model(self.model, ctx_params)
        self.eog_tokens, self.max_token_chars = scan.result()
        self._eog = frozenset(self.eog_tokens)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        self.n_ctx_seq = config.n_ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self._batch = llama_cpp.llama_batch_init(config.n_batch, 0, 1)
        self._free_ids = list(range(config.max_sequences))
        self._freed_at: dict[int, int] = {}  # the step at which each free slot was freed
        # Tokens whose cache a free slot still holds (left by its last generation), and whose.
        self._slot_tokens: dict[int, tuple[list[int], str | None]] = {}
        self.active: list[Generation] = []
        self.queue: list[Generation] = []  # waiting for a free slot, first come first served
        self._piece = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}
        self.times = StepTimes()
        # A candidate array for sampling by hand (grammars), reused by every generation.
        self._ids = np.arange(self.n_vocab, dtype=np.int32)
        self._cand = np.zeros(self.n_vocab, dtype=TOKEN_DATA)
        self._cand_array = llama_cpp.llama_token_data_array(
            data=self._cand.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=self.n_vocab,
            selected=-1,
            sorted=False,
        )
        self._one = np.zeros(1, dtype=TOKEN_DATA)
        self._one_array = llama_cpp.llama_token_data_array(
            data=self._one.ctypes.data_as(llama_cpp.llama_token_data_p),
            size=1,
            selected=-1,
            sorted=False,
        )

    # -- model facts -------------------------------------------------------------------------

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as a string, or None."""
        size = llama_cpp.llama_model_meta_val_str(self.model, key.encode(), None, 0)
        if size < 0:
            return None
        buf = ctypes.create_string_buffer(size + 1)
        llama_cpp.llama_model_meta_val_str(self.model, key.encode(), buf, size + 1)
        return buf.value.decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        """The text of a special token such as BOS or EOS, for chat templates."""
        if token < 0:
            return ""
        return (llama_cpp.llama_vocab_get_text(self.vocab, token) or b"").decode(
            "utf-8", errors="replace"
        )

    @property
    def bos_token(self) -> str:
        return self.token_text(llama_cpp.llama_vocab_bos(self.vocab))

    @property
    def eos_token(self) -> str:
        return self.token_text(llama_cpp.llama_vocab_eos(self.vocab))

    def describe(self) -> dict[str, object]:
        """What this engine runs on, for logs and the console."""
        desc = ctypes.create_string_buffer(128)
        llama_cpp.llama_model_desc(self.model, desc, len(desc))
        return {
            "model": desc.value.decode(errors="replace"),
            "backend": self.backend,
            "n_layers": self.n_layers,
            "n_gpu_layers": sum(n for dev, n in self.layers_by_device.items() if dev != "CPU"),
            "layers_by_device": self.layers_by_device,
            "n_ctx": self.n_ctx_seq,
            "max_sequences": self.config.max_sequences,
            "n_threads": self.config.n_threads,
            "prefix_cache": self.config.prefix_cache,
            "flash_attn": self.config.flash_attn,
        }

    def slots(self) -> dict[str, int]:
        """KV slots in use and requests waiting for one."""
        total = self.config.max_sequences
        return {"total": total, "busy": total - len(self._free_ids), "queued": len(self.queue)}

    # -- tokens ----------------------------------------------------------------------------

    def tokenize(
        self, text: str, add_special: bool = True, parse_special: bool = True
    ) -> list[int]:
        """Tokens of text; ``parse_special``: special tokens written in the text become tokens."""
        data = text.encode("utf-8")
        n_max = len(data) + 8
        tokens = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(
            self.vocab, data, len(data), tokens, n_max, add_special, parse_special
        )
        if n < 0:  # buffer too small: -n is the size needed
            n_max = -n
            tokens = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), tokens, n_max, add_special, parse_special
            )
        return list(tokens[:n])

    def detokenize(self, tokens: Sequence[int]) -> str:
        """The text of tokens, special tokens written out."""
        return b"".join(self.piece(t, special=True) for t in tokens).decode(
            "utf-8", errors="replace"
        )

    def piece(self, token: int, special: bool = False) -> bytes:
        """The bytes a token stands for (a special token's text only with ``special``)."""
        if special:
            return self._piece_bytes(token, True)
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self._piece_bytes(token)
        return piece

    def _piece_bytes(self, token: int, special: bool = False) -> bytes:
        n = llama_cpp.llama_token_to_piece(
            self.vocab, token, self._piece, len(self._piece), 0, special
        )
        if n < 0:
            self._piece = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(
                self.vocab, token, self._piece, len(self._piece), 0, special
            )
        return self._piece.raw[:n]

    # -- generations -------------------------------------------------------------------------

    @property
    def free_slots(self) -> int:
        return len(self._free_ids)

    def check_grammar(self, grammar: str) -> None:
        """Raise GrammarError if llama.cpp cannot parse ``grammar`` (GBNF, root rule ``root``)."""
        self._free_sampler(self._grammar_sampler(grammar))

    def start(
        self,
        prompt_tokens: list[int],
        params: Sampling,
        *,
        grammar: str | None = None,
        logprobs: int | None = None,
        scope: str | None = None,
        fork_of: Generation | None = None,
    ) -> Generation:
        """Take a prompt; it is prefilled by the next steps, or waits for a free slot.

        ``fork_of``: another answer to the same prompt, whose prefill this one copies whatever
        the prefix cache allows. Raises ContextOverflow or GrammarError before anything is held.
        """
        if not prompt_tokens:
            raise ContextOverflow("The prompt is empty after tokenization.")
        if len(prompt_tokens) >= self.n_ctx_seq:
            raise ContextOverflow(
                f"The prompt is {len(prompt_tokens)} tokens long; this model's context window "
                f"is {self.n_ctx_seq} tokens, and at least one must be left for the answer."
            )
        gen = Generation(prompt_tokens, params, grammar=grammar, logprobs=logprobs, scope=scope)
        gen._fork_of = fork_of
        gen._sampler = self._make_sampler(params)
        gen._greedy = grammar is None and _only_greedy(params)
        if gen._greedy and (bias := self._logit_biases(params)):
            gen._bias = (
                np.array([token for token, _ in bias], dtype=np.intp),
                np.array([value for _, value in bias], dtype=np.float32),
            )
        if grammar is not None:
            try:
                gen._grammar = self._grammar_sampler(grammar)
            except GrammarError:
                self._free_sampler(gen._sampler)
                raise
        if self._free_ids and not self.queue:
            self._take_slot(gen)
        else:
            self.queue.append(gen)
        return gen

    def _take_slot(self, gen: Generation) -> None:
        slot = self._choose_slot(gen)
        self._free_ids.remove(slot)
        gen.seq_id = slot
        self._reuse_prefix(gen)
        self.active.append(gen)

    def _choose_slot(self, gen: Generation) -> int:
        """The free slot for ``gen``.

        A chat's next turn takes the slot that holds its history, wherever it lies: the free
        slot whose leftover cache holds at least half of ``gen``'s prompt and MIN_SHARED_PREFIX
        tokens more of it than any other free slot's. Given to another request, that chat's
        cache would be lost and its next turn would prefill its whole history again.

        Any other prompt takes the slot that keeps the busy slots closest together, as a step
        costs more the wider the slots it covers (8 sequences of about 1,000 tokens: 69-73 ms a
        step in slots 0-7, 81-93 ms in slots 0-6 and 8, 104-117 ms in slots 0, 2, ..., 14). Of
        those: one that already holds the longest beginning of the prompt any slot holds (a
        shared system prompt, say: reused in place, not copied), then an empty slot, then the
        leftover released longest ago.
        """
        # A fork copies the answer it forks.
        held = self._prompt_held(gen) if gen._fork_of is None else {}
        best, second = [*sorted(held.values(), reverse=True), 0, 0][:2]
        if best >= second + MIN_SHARED_PREFIX and 2 * best >= len(gen.prompt_tokens):
            return _holder(held)
        busy = [other.seq_id for other in self.active]
        worth = self._keep_worth()

        def cost(slot: int) -> tuple[int, bool, int, int]:
            copies = best >= MIN_SHARED_PREFIX and held.get(slot, 0) < best
            return max([*busy, slot]) - min([*busy, slot]), copies, worth(slot), slot

        return min(self._free_ids, key=cost)

    def _keep_worth(self) -> Callable[[int], int]:
        """How much a free slot's cache is worth keeping, lowest first: an empty slot (-1),
        then the leftovers in the order they were released (0: longest ago)."""
        age = {slot: n for n, slot in enumerate(self._slot_tokens)}
        return lambda slot: age.get(slot, -1)

    def _prompt_held(self, gen: Generation) -> dict[int, int]:
        """For each slot's leftover cache that ``gen`` may reuse, how much of ``gen``'s
        prompt (all but its last token, decoded to get the first logits) it holds."""
        limit = len(gen.prompt_tokens) - 1
        return {
            slot: _common_prefix(gen.prompt_tokens, tokens, limit)
            for slot, (tokens, scope) in self._slot_tokens.items()
            if self._may_share(gen, scope)
        }

    def _longest_leftover(self, gen: Generation) -> tuple[int, int]:
        """The longest beginning of ``gen``'s prompt that a slot's leftover cache holds and
        ``gen`` may reuse, and that slot (-1: none). These slots are free, or the one ``gen``
        has just taken; on a tie that one wins (it needs no copy), then the lowest."""
        held = self._prompt_held(gen)
        holder = _holder(held, own=gen.seq_id)
        return (held[holder], holder) if holder >= 0 else (0, -1)

    def _may_share(self, gen: Generation, scope: str | None) -> bool:
        """Whether ``gen`` may reuse a cache computed for a request of ``scope``."""
        mode = self.config.prefix_cache
        if mode == CACHE_SHARED:
            return True
        return mode == CACHE_PER_USER and gen.scope is not None and gen.scope == scope

    def _reuse_prefix(self, gen: Generation) -> None:
        """Give ``gen`` the longest cached beginning of its prompt, or have it wait for one.

        Sources: free slots' leftover caches (this slot's own included) and running sequences'
        caches, as far as the cache's scope allows; a running sequence still prefilling the same
        beginning is waited for. A fork waits for the answer it forks whatever the scope.
        """
        prompt = gen.prompt_tokens
        limit = len(prompt) - 1  # the last prompt token is decoded to get the first logits
        fork = gen._fork_of
        if fork is not None and fork in self.active and fork._waiting_for is None:
            if fork._n_past >= limit:
                self._copy_prefix(gen, fork.seq_id, limit)
            else:
                gen._waiting_for = (fork, limit)
                self._slot_tokens.pop(gen.seq_id, None)
            return
        best, source = self._longest_leftover(gen)
        donor = None
        for other in self.active:
            if not self._may_share(gen, other.scope):
                continue
            cached = other._tokens[: other._n_past]
            if (n := _common_prefix(prompt, cached, limit)) > best:
                best, source = n, other.seq_id
        for other in self.active:
            if other._waiting_for is None and self._may_share(gen, other.scope):
                n = _common_prefix(prompt, other._tokens, limit)
                if n >= MIN_SHARED_PREFIX and n > best + MIN_SHARED_PREFIX:
                    best, donor = n, other
        if donor is not None:
            gen._waiting_for = (donor, best)
            self._slot_tokens.pop(gen.seq_id, None)  # this slot's old cache is not a source
            return
        self._copy_prefix(gen, source, best if best >= MIN_SHARED_PREFIX else 0)

    def _copy_prefix(self, gen: Generation, source: int, n: int) -> None:
        """Start ``gen``'s cache as the first ``n`` cells of slot ``source`` (0: empty)."""
        slot = gen.seq_id
        self._slot_tokens.pop(slot, None)
        if n == 0:
            llama_cpp.llama_memory_seq_rm(self.memory, slot, -1, -1)
        elif source != slot and self.config.kv_unified:
            llama_cpp.llama_memory_seq_rm(self.memory, slot, -1, -1)
            llama_cpp.llama_memory_seq_cp(self.memory, source, slot, 0, n)
        else:
            if source != slot:
                # Separate streams copy whole: llama.cpp copies a stream only in full.
                llama_cpp.llama_memory_seq_cp(self.memory, source, slot, -1, -1)
            llama_cpp.llama_memory_seq_rm(self.memory, slot, n, -1)
        gen._n_past = n
        gen._pending = list(gen.prompt_tokens[n:])
        gen.cached_tokens = n

    def _resolve_waits(self) -> None:
        """Waiting generations whose donor has cached the shared beginning copy it now."""
        for gen in self.active:
            if gen._waiting_for is None:
                continue
            donor, n = gen._waiting_for
            if donor._n_past >= n and donor in self.active:
                gen._waiting_for = None
                self._copy_prefix(gen, donor.seq_id, n)
            elif donor not in self.active:  # it ended early: look again
                gen._waiting_for = None
                gen._fork_of = None
                self._reuse_prefix(gen)

    def _pack_slots(self) -> None:
        """Move the highest running sequence down into a free slot between running ones, while
        one has been free for PACK_AFTER_STEPS steps.

        With a KV stream per sequence, llama.cpp cuts each step's batch into ubatches of
        consecutive slots, each a whole pass over the weights, so a free slot between running
        ones costs every step until they end (8 sequences of about 1,000 tokens: 69-73 ms a
        step in slots 0-7, 81-93 ms in slots 0-6 and 8). Moving a sequence copies its whole
        stream once (about 9 ms for the default model's 2,048 cells). The free slot's leftover
        cache moves to another free slot first, so that a chat coming back late still finds it;
        where no other slot is free, the gap stays.
        """
        if self.config.kv_unified:
            return
        while self.active:
            top = max(self.active, key=lambda gen: gen.seq_id)
            bottom = min(gen.seq_id for gen in self.active)
            holes = [
                slot
                for slot in self._free_ids
                if bottom < slot < top.seq_id
                and self.times.steps - self._freed_at.get(slot, 0) >= PACK_AFTER_STEPS
                # A leftover cache needs another free slot to go to, or it stays where it is.
                and (slot not in self._slot_tokens or len(self._free_ids) > 1)
            ]
            if not holes or top._waiting_for is not None:
                return
            self._move(top, min(holes))

    def _move(self, gen: Generation, slot: int) -> None:
        """Give running ``gen`` the free ``slot``, its cache copied there."""
        old = gen.seq_id
        if slot in self._slot_tokens:
            # Its leftover goes to the free slot whose own cache is least worth keeping.
            worth = self._keep_worth()
            spare = min((s for s in self._free_ids if s != slot), key=lambda s: (worth(s), s))
            llama_cpp.llama_memory_seq_cp(self.memory, slot, spare, -1, -1)
            self._slot_tokens = {
                spare if s == slot else s: held
                for s, held in self._slot_tokens.items()
                if s != spare
            }
        # Separate streams copy whole; the copies run in order before the next decode.
        llama_cpp.llama_memory_seq_cp(self.memory, old, slot, -1, -1)
        llama_cpp.llama_memory_seq_rm(self.memory, old, -1, -1)
        self._free_ids.remove(slot)
        self._free_ids.append(old)
        self._freed_at[old] = self.times.steps
        gen.seq_id = slot
        self.times.moves += 1

    def cancel(self, gen: Generation) -> None:
        """Stop a generation now and free its slot."""
        if not gen.finished:
            gen._finish(CANCELLED)
        self._release(gen)

    def step(self) -> list[Generation]:
        """Decode one step for every active generation; return those that changed.

        A finished generation is returned once, with its finish_reason set, and its slot freed.
        """
        if not self.active:
            return []
        clock = time.perf_counter
        started = clock()
        self._resolve_waits()
        self._pack_slots()
        batch = self._batch
        n = 0
        sample_at: list[tuple[Generation, int]] = []
        budget = self.config.n_batch
        # Decode tokens first (one each), then a chunk of one prompt: the one with the fewest
        # tokens left. Prefill costs about the same per token whatever the batch's shape, so
        # another prompt's tokens in the step would only delay this one's first token (and
        # every answer's next), and that prompt ends no sooner than in a step of its own.
        takes: list[tuple[Generation, int]] = []
        for gen in sorted(self.active, key=_step_order):
            if gen._waiting_for is not None:
                continue
            take = min(len(gen._pending), budget - n)
            if take <= 0:
                continue
            takes.append((gen, take))
            n += take
            if take > 1:
                break  # a prompt's chunk: the prompts after it have more tokens left
        # The batch holds them in slot order, the chunk among the answers. With a KV stream per
        # sequence llama.cpp splits a batch into ubatches of consecutive sequence ids, each
        # ubatch taking one token of every sequence it holds; a chunk placed after the answers
        # of slots above its own would start a third ubatch, a whole pass over the weights.
        n = 0
        for gen, take in sorted(takes, key=lambda t: t[0].seq_id):
            for i in range(take):
                batch.token[n] = gen._pending[i]
                batch.pos[n] = gen._n_past + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = gen.seq_id
                batch.logits[n] = False
                n += 1
            gen._n_past += take
            del gen._pending[:take]
            if not gen._pending:
                batch.logits[n - 1] = True
                sample_at.append((gen, n - 1))
        if n == 0:
            return []
        batch.n_tokens = n
        built = clock()
        status = llama_cpp.llama_decode(self.ctx, batch)
        decoded = clock()
        times = self.times
        times.steps += 1
        times.tokens += n
        times.build_s += built - started
        times.decode_s += decoded - built
        if n > len(sample_at):
            times.prefill_steps += 1
            times.prefill_decode_s += decoded - built
        if status != 0:
            # The KV cache is full or the decode failed: end every generation cleanly.
            logger.error("llama_decode returned %s with %s active sequences", status, n)
            changed = list(self.active)
            for gen in changed:
                gen.error = f"llama_decode failed ({status})"
                gen._finish(LENGTH)
                gen._n_past = 0  # what the cache holds is unknown now: keep none of it
                self._release(gen)
            return changed

        tokens = self._sample_all(sample_at)
        sampled = clock()
        changed = []
        for (gen, _), token in zip(sample_at, tokens, strict=True):
            changed.append(gen)
            if isinstance(token, Exception):  # one answer's sampling problem ends that answer
                gen.error = f"sampling failed: {token}"
                gen._finish(STOP)
                continue
            if gen.first_token_at is None:
                gen.first_token_at = sampled
            if token is None or token in self._eog:  # None: the grammar allows nothing more
                gen._finish(STOP)
                continue
            gen.completion_tokens += 1
            gen._emit(gen._decoder.decode(self.piece(token)), final=False)
            limit = gen.params.max_tokens
            if gen.finished:
                gen._finish(STOP)
            elif limit is not None and gen.completion_tokens >= limit:
                gen._finish(LENGTH)
            elif gen._n_past + 1 >= self.n_ctx_seq:
                gen._finish(LENGTH)
            else:
                gen._pending.append(token)
                gen._tokens.append(token)
        for gen in changed:
            if gen.finished:
                self._release(gen)
        times.sampled += len(sample_at)
        times.sample_s += sampled - decoded
        times.detok_s += clock() - sampled
        return changed

    def _sample_all(
        self, sample_at: Sequence[tuple[Generation, int]]
    ) -> list[int | None | Exception]:
        """Each generation's next token, from the logits at its batch index.

        Greedy samplers are served by one argmax over the step's logits (the first of equal
        maxima, as llama.cpp's greedy sampler picks), a row's logit biases added to a copy of it
        first where they may move its maximum; the others run their own sampler chain.
        """
        tokens: list[int | None | Exception] = []
        logits: np.ndarray | None = None  # the step's logits, one row per sampled position
        greedy: np.ndarray | None = None  # each row's argmax, computed with them
        for row, (gen, index) in enumerate(sample_at):
            try:
                if gen._greedy:
                    if logits is None or greedy is None:
                        logits = np.ctypeslib.as_array(
                            llama_cpp.llama_get_logits(self.ctx),
                            shape=(len(sample_at), self.n_vocab),
                        )
                        greedy = logits.argmax(axis=1)
                    best = int(greedy[row])
                    if gen._bias is not None and _bias_may_change(gen._bias, best):
                        biased = logits[row].copy()
                        np.add.at(biased, gen._bias[0], gen._bias[1])  # repeated ids add up
                        best = int(biased.argmax())
                    if gen.logprobs is not None:
                        self._add_logprobs(gen, index, best)
                    token: int | None = best
                else:
                    token = self._sample(gen, index)
            except Exception as exc:
                logger.exception("sampling failed for sequence %s", gen.seq_id)
                tokens.append(exc)
                continue
            tokens.append(token)
        return tokens

    def generate(self, gens: Sequence[Generation]) -> Iterable[list[Generation]]:
        """Step until every generation in gens has finished, yielding each step's changes."""
        while any(not g.finished for g in gens):
            yield self.step()

    # -- sampling ----------------------------------------------------------------------------

    def _sample(self, gen: Generation, index: int) -> int | None:
        """Pick ``gen``'s next token from the logits at batch ``index`` (None: none allowed)."""
        if gen._grammar is None:
            token: int | None = int(llama_cpp.llama_sampler_sample(gen._sampler, self.ctx, index))
        else:
            token = self._sample_with_grammar(gen, index)
        if token is not None and gen.logprobs is not None:
            self._add_logprobs(gen, index, token)
        return token

    def _add_logprobs(self, gen: Generation, index: int, token: int) -> None:
        # Sampling reads the logits without changing them: these are the model's own.
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,)
        )
        assert gen.logprobs is not None
        gen._entries.append(self._logprob_entry(logits, token, gen.logprobs))

    def _logprob_entry(self, logits: np.ndarray, token: int, top: int) -> TokenLogprob:
        """The log-probability of ``token`` and of the ``top`` likeliest tokens."""
        x = logits.astype(np.float64)
        biggest = x.max()
        logprobs = x - (biggest + math.log(float(np.exp(x - biggest).sum())))
        alternatives: tuple[tuple[int, bytes, float], ...] = ()
        if top > 0:
            ids = np.argpartition(-logprobs, top)[:top]
            ids = ids[np.argsort(-logprobs[ids], kind="stable")]
            alternatives = tuple((int(t), self.piece(int(t)), float(logprobs[t])) for t in ids)
        return TokenLogprob(token, self.piece(token), float(logprobs[token]), alternatives)

    def _sample_with_grammar(self, gen: Generation, index: int) -> int | None:
        """Sample under a grammar without ever accepting a token it forbids.

        As llama.cpp's own server does: sample freely, and only if the grammar rejects that token
        apply the grammar to every candidate and sample again. A grammar that allows nothing
        more (or forbids the end of text before it is complete) ends the answer.
        """
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,)
        )
        assert gen._sampler is not None and gen._grammar is not None
        token = self._apply_chain(gen._sampler, logits)
        if not self._grammar_allows(gen._grammar, token, logits[token]):
            cand = self._reset_candidates(logits)
            llama_cpp.llama_sampler_apply(gen._grammar, ctypes.byref(self._cand_array))
            if not np.isfinite(cand["logit"]).any():
                return None
            llama_cpp.llama_sampler_apply(gen._sampler, ctypes.byref(self._cand_array))
            token = int(cand["id"][self._cand_array.selected])
        llama_cpp.llama_sampler_accept(gen._grammar, token)
        llama_cpp.llama_sampler_accept(gen._sampler, token)
        return token

    def _reset_candidates(self, logits: np.ndarray) -> np.ndarray:
        cand = self._cand
        cand["id"] = self._ids
        cand["logit"] = logits
        cand["p"] = 0.0
        arr = self._cand_array
        arr.size = self.n_vocab
        arr.selected = -1
        arr.sorted = False
        return cand

    def _apply_chain(self, sampler: ctypes.c_void_p, logits: np.ndarray) -> int:
        cand = self._reset_candidates(logits)
        llama_cpp.llama_sampler_apply(sampler, ctypes.byref(self._cand_array))
        return int(cand["id"][self._cand_array.selected])

    def _grammar_allows(self, grammar: ctypes.c_void_p, token: int, logit: float) -> bool:
        one = self._one
        one["id"] = token
        one["logit"] = logit if np.isfinite(logit) else 0.0
        one["p"] = 0.0
        self._one_array.size = 1
        self._one_array.selected = -1
        self._one_array.sorted = False
        llama_cpp.llama_sampler_apply(grammar, ctypes.byref(self._one_array))
        return bool(np.isfinite(one["logit"][0]))

    def _grammar_sampler(self, grammar: str) -> ctypes.c_void_p:
        with _capture_log() as log:
            sampler = llama_cpp.llama_sampler_init_grammar(
                self.vocab, grammar.encode("utf-8"), b"root"
            )
        if sampler:
            return cast(ctypes.c_void_p, sampler)
        # llama.cpp's grammar parser writes why to stderr: parse again to read it.
        with _capture_stderr() as err, _capture_log():
            again = llama_cpp.llama_sampler_init_grammar(
                self.vocab, grammar.encode("utf-8"), b"root"
            )
        self._free_sampler(again)
        problems = [line.strip() for line in [*err, *log] if line.strip()]
        problems = [p for p in problems if "failed to parse" not in p and p != grammar.strip()]
        reason = problems[0] if problems else "it is not valid GBNF"
        raise GrammarError(f"llama.cpp could not use the grammar: {reason[:300]}")

    @staticmethod
    def _free_sampler(sampler: ctypes.c_void_p | None) -> None:
        if sampler:
            llama_cpp.llama_sampler_free(sampler)

    def _release(self, gen: Generation) -> None:
        if gen in self.queue:
            self.queue.remove(gen)
        if gen in self.active:
            self.active.remove(gen)
            # The slot keeps its cache: a later prompt that begins the same way reuses it.
            cached = gen._tokens[: gen._n_past] if gen._waiting_for is None else []
            if cached and self.config.prefix_cache != CACHE_OFF:
                self._slot_tokens[gen.seq_id] = (cached, gen.scope)
            else:
                llama_cpp.llama_memory_seq_rm(self.memory, gen.seq_id, -1, -1)
                self._slot_tokens.pop(gen.seq_id, None)
            self._free_ids.append(gen.seq_id)
            self._freed_at[gen.seq_id] = self.times.steps
        self._free_sampler(gen._sampler)
        self._free_sampler(gen._grammar)
        gen._sampler = gen._grammar = None
        while self.queue and self._free_ids:
            self._take_slot(self.queue.pop(0))

    def _logit_biases(self, p: Sampling) -> list[tuple[int, float]]:
        """What is added to tokens' logits before sampling: ``logit_bias``, then ``ignore_eos``."""
        bias = list(p.logit_bias)
        if p.ignore_eos:
            bias += [(token, -math.inf) for token in self.eog_tokens]
        return bias

    def _make_sampler(self, p: Sampling) -> ctypes.c_void_p:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if bias := self._logit_biases(p):
            entries = (llama_cpp.llama_logit_bias * len(bias))(
                *(llama_cpp.llama_logit_bias(token, value) for token, value in bias)
            )
            add(chain, llama_cpp.llama_sampler_init_logit_bias(self.n_vocab, len(bias), entries))
        if _penalised(p):
            if kept := _kept_before_penalties(p):
                add(chain, llama_cpp.llama_sampler_init_top_k(kept))
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    self.n_vocab,
                    p.repeat_last_n,
                    p.repeat_penalty,
                    p.frequency_penalty,
                    p.presence_penalty,
                ),
            )
        if p.greedy:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return cast(ctypes.c_void_p, chain)
        if p.top_k > 0:
            add(chain, llama_cpp.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            add(chain, llama_cpp.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            add(chain, llama_cpp.llama_sampler_init_min_p(p.min_p, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(p.temperature))
        add(chain, llama_cpp.llama_sampler_init_dist(sampler_seed(p.seed or 0)))
        return cast(ctypes.c_void_p, chain)

    def close(self) -> None:
        for gen in list(self.active) + list(self.queue):
            self._release(gen)
        if self.ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self.ctx)
            llama_cpp.llama_model_free(self.model)
            self.ctx = None
            self.model = None


@contextlib.contextmanager
def _capture_stderr() -> Iterator[list[str]]:
    """Collect what native code writes to file descriptor 2 while the block runs."""
    lines: list[str] = []
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += sink.read().decode("utf-8", errors="replace").splitlines()


@contextlib.contextmanager
def _capture_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines while the block runs."""
    global _captured
    lines: list[str] = []
    _captured = lines
    try:
        yield lines
    finally:
        _captured = None


def _layers_by_device(log: Iterable[str]) -> dict[str, int]:
    """Count the layers llama.cpp placed on each device, from its load log.

    >>> _layers_by_device(["load_tensors: layer   0 assigned to device RPC0, is_swa = 0",
    ...                    "load_tensors: layer   1 assigned to device CPU, is_swa = 0"])
    {'RPC0': 1, 'CPU': 1}
    """
    counts: dict[str, int] = {}
    for line in log:
        match = re.search(r"layer\s+\d+ assigned to device (\S+?),", line)
        if match:
            counts[match.group(1)] = counts.get(match.group(1), 0) + 1
    return counts


def _ggml() -> ctypes.CDLL:
    """libggml as loaded by llama_cpp, with the device registry functions typed."""
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml.so"))
    lib.ggml_backend_register.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_reg_dev_count.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_backend_reg.restype = ctypes.c_void_p
    lib.ggml_backend_dev_backend_reg.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    return lib


_RPC_DEVICES: dict[str, list[int]] = {}  # endpoint -> its devices, registered once per process
GGML_BACKEND_DEVICE_TYPE_GPU = 1


def _add_rpc_servers(servers: Sequence[str]) -> list[int]:
    """Register llama.cpp RPC servers; return their devices, in the order given."""
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    try:
        rpc = ctypes.CDLL(os.path.join(libdir, "libggml-rpc.so"))
    except OSError:
        raise RuntimeError(
            "rpc_servers is set but llama-cpp-python was built without -DGGML_RPC=ON"
        ) from None
    rpc.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    rpc.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    ggml = _ggml()
    devices: list[int] = []
    for server in servers:
        if server not in _RPC_DEVICES:
            _check_reachable(server)  # ggml aborts the process on a server it cannot reach
            reg = rpc.ggml_backend_rpc_add_server(server.encode())
            count = ggml.ggml_backend_reg_dev_count(reg) if reg else 0
            if not count:
                raise RuntimeError(f"could not reach the llama.cpp RPC server at {server}")
            ggml.ggml_backend_register(reg)
            _RPC_DEVICES[server] = [ggml.ggml_backend_reg_dev_get(reg, i) for i in range(count)]
        devices += _RPC_DEVICES[server]
    return devices


def _check_reachable(server: str, timeout: float = 5.0) -> None:
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"rpc_servers entries are host:port; got {server!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RuntimeError(f"could not reach the llama.cpp RPC server at {server}: {exc}") from None


def _local_gpu_devices() -> list[int]:
    """This machine's GPU devices (CUDA, Metal, ...), not counting RPC ones."""
    ggml = _ggml()
    found = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        reg_name = ggml.ggml_backend_reg_name(ggml.ggml_backend_dev_backend_reg(dev))
        if ggml.ggml_backend_dev_type(dev) == GGML_BACKEND_DEVICE_TYPE_GPU and reg_name != b"RPC":
            found.append(dev)
    return found


def _backend_name() -> str:
    """The GPU backend this build of llama.cpp was compiled with, or "cpu".

    llama_supports_gpu_offload() is also true for a CPU build with the RPC backend, so the
    system info line (one entry per compiled backend) is what tells.
    """
    info = llama_cpp.llama_print_system_info().decode(errors="replace").upper()
    for name in ("CUDA", "METAL", "VULKAN", "HIP", "SYCL"):
        if re.search(rf"\b{name}\s*:", info):
            return name.lower()
    return "cpu"
