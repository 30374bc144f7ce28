"""Batched text generation on llama.cpp's low-level API.

The high-level ``llama_cpp.Llama`` decodes one sequence at a time. This engine keeps one KV-cache
sequence per request and runs a single ``llama_decode`` per step over every active sequence, so
a batch of N requests costs about one forward pass per token instead of N.

Each ``Generation`` has its own sampler chain (seed, temperature, top-k/p, min-p, repeat penalty),
its own stop conditions and its own UTF-8 decoder, so its output does not depend on what else is
in the batch. Prompts are prefilled in chunks that share the step with other sequences' decode
tokens, which is what lets a new request join a running batch.

A prompt that begins like one already in the cache skips that part of its prefill: the cache of a
running sequence, or the one a finished sequence left in its slot (the previous turn of a chat),
is copied into the new sequence up to the shared prefix (``llama_memory_seq_cp``). When several
requests with the same beginning arrive together, one prefills it and the others copy it a step
later. The copied cells hold the same numbers a prefill would compute.

Objects here are not thread-safe: one thread drives an engine.
"""

from __future__ import annotations

import codecs
import ctypes
import dataclasses
import logging
import os
import re
import socket
import time
from collections.abc import Iterable, Sequence

import llama_cpp

logger = logging.getLogger(__name__)

# Finish reasons, as OpenAI names them.
STOP = "stop"
LENGTH = "length"
CANCELLED = "cancelled"


GGML_LOG_LEVEL_WARN = 3
GGML_LOG_LEVEL_ERROR = 4
_captured: list[str] | None = None  # llama.cpp's log lines while a model loads


@llama_cpp.llama_log_callback
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


class ContextOverflow(ValueError):
    """A prompt that does not fit in one sequence's context window."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens and when it stops."""

    max_tokens: int | None = None
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    seed: int = 0
    stop: tuple[str, ...] = ()


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
    prefix_cache: bool = True  # reuse the cache of a shared prompt beginning instead of prefilling


class Generation:
    """One request's sequence: its prompt, sampler, output so far and timings."""

    def __init__(self, seq_id: int, prompt_tokens: list[int], params: SamplingParams) -> None:
        self.seq_id = seq_id
        self.prompt_tokens = prompt_tokens
        self.params = params
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.text = ""
        self.created = time.perf_counter()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self._pending = list(prompt_tokens)  # tokens still to feed to the model
        self._n_past = 0
        self._tokens = list(prompt_tokens)  # the sequence so far; the first _n_past are cached
        self._waiting_for: tuple[Generation, int] | None = None  # (donor, prefix) to copy
        self.cached_tokens = 0  # prompt tokens taken from the cache instead of prefilled
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""  # decoded text held back because it may start a stop sequence
        self._delta = ""  # text produced since the last take_delta()
        self._sampler: ctypes.c_void_p | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def take_delta(self) -> str:
        """Return the text produced since the last call (never a split UTF-8 character)."""
        delta, self._delta = self._delta, ""
        return delta

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


# A shorter shared beginning is prefilled again: copying a sequence's cache costs about as much
# as prefilling a few tokens.
MIN_SHARED_PREFIX = 8


class LlamaEngine:
    """A loaded GGUF model with a KV cache shared by up to ``max_sequences`` generations."""

    def __init__(self, config: EngineConfig) -> None:
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
        global _captured
        _captured = []
        try:
            self.model = llama_cpp.llama_model_load_from_file(
                os.fsencode(config.model_path), model_params
            )
            self.layers_by_device = _layers_by_device(_captured)
        finally:
            _captured = None
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
        self.ctx = llama_cpp.llama_init_from_model(self.model, ctx_params)
        if not self.ctx:
            llama_cpp.llama_model_free(self.model)
            raise RuntimeError("llama.cpp could not create a context (out of memory?)")
        self.n_ctx_seq = config.n_ctx
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self._batch = llama_cpp.llama_batch_init(config.n_batch, 0, 1)
        self._free_ids = list(range(config.max_sequences))
        # Tokens whose cache a free slot still holds (left by its last generation).
        self._slot_tokens: dict[int, list[int]] = {}
        self.active: list[Generation] = []
        self._piece = ctypes.create_string_buffer(256)

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
        }

    # -- tokens ----------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Tokens of text; special tokens written in the text (chat markup) are parsed."""
        data = text.encode("utf-8")
        n_max = len(data) + 8
        tokens = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, n_max, add_special, True)
        if n < 0:  # buffer too small: -n is the size needed
            n_max = -n
            tokens = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(
                self.vocab, data, len(data), tokens, n_max, add_special, True
            )
        return list(tokens[:n])

    def _piece_bytes(self, token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(
            self.vocab, token, self._piece, len(self._piece), 0, False
        )
        if n < 0:
            self._piece = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(
                self.vocab, token, self._piece, len(self._piece), 0, False
            )
        return self._piece.raw[:n]

    # -- generations -------------------------------------------------------------------------

    @property
    def free_slots(self) -> int:
        return len(self._free_ids)

    def start(self, prompt_tokens: list[int], params: SamplingParams) -> Generation:
        """Reserve a sequence for a prompt; it is prefilled by the next steps."""
        if not prompt_tokens:
            raise ContextOverflow("The prompt is empty after tokenization.")
        if len(prompt_tokens) >= self.n_ctx_seq:
            raise ContextOverflow(
                f"The prompt is {len(prompt_tokens)} tokens long; this model's context window "
                f"is {self.n_ctx_seq} tokens, and at least one must be left for the answer."
            )
        if not self._free_ids:
            raise RuntimeError("no free sequence slot")
        # The lowest free slot: scattered KV sequences measured ~1.4x slower per batch step.
        slot = min(self._free_ids)
        self._free_ids.remove(slot)
        gen = Generation(slot, prompt_tokens, params)
        gen._sampler = self._make_sampler(params)
        self._reuse_prefix(gen)
        self.active.append(gen)
        return gen

    def _reuse_prefix(self, gen: Generation) -> None:
        """Give ``gen`` the longest cached beginning of its prompt, or have it wait for one.

        Sources: free slots' leftover caches (this slot's own included) and running sequences'
        caches; a running sequence still prefilling the same beginning is waited for.
        """
        prompt = gen.prompt_tokens
        limit = len(prompt) - 1  # the last prompt token is decoded to get the first logits
        best, source = 0, -1
        if self.config.prefix_cache:
            for slot, tokens in self._slot_tokens.items():
                if (n := _common_prefix(prompt, tokens, limit)) > best:
                    best, source = n, slot
            for other in self.active:
                cached = other._tokens[: other._n_past]
                if (n := _common_prefix(prompt, cached, limit)) > best:
                    best, source = n, other.seq_id
            donor = None
            for other in self.active:
                if other._waiting_for is None:
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
                self._reuse_prefix(gen)

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
        self._resolve_waits()
        batch = self._batch
        n = 0
        sample_at: list[tuple[Generation, int]] = []
        budget = self.config.n_batch
        # Decode tokens first (one each), then prompt chunks: a long prompt never stalls the others.
        for gen in sorted(self.active, key=lambda g: (len(g._pending) > 1, g.seq_id)):
            if gen._waiting_for is not None:
                continue
            take = min(len(gen._pending), budget - n)
            if take <= 0:
                continue
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
        batch.n_tokens = n
        status = llama_cpp.llama_decode(self.ctx, batch)
        if status != 0:
            # The KV cache is full or the decode failed: end every generation cleanly.
            logger.error("llama_decode returned %s with %s active sequences", status, n)
            changed = list(self.active)
            for gen in changed:
                gen._finish(LENGTH)
                gen._n_past = 0  # what the cache holds is unknown now: keep none of it
                self._release(gen)
            return changed

        changed = []
        now = time.perf_counter()
        for gen, index in sample_at:
            token = llama_cpp.llama_sampler_sample(gen._sampler, self.ctx, index)
            if gen.first_token_at is None:
                gen.first_token_at = now
            if llama_cpp.llama_vocab_is_eog(self.vocab, token):
                gen._finish(STOP)
            else:
                gen.completion_tokens += 1
                gen._emit(gen._decoder.decode(self._piece_bytes(token)), final=False)
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
            changed.append(gen)
        for gen in changed:
            if gen.finished:
                self._release(gen)
        return changed

    def generate(self, gens: Sequence[Generation]) -> Iterable[list[Generation]]:
        """Step until every generation in gens has finished, yielding each step's changes."""
        while any(not g.finished for g in gens):
            yield self.step()

    def _release(self, gen: Generation) -> None:
        if gen in self.active:
            self.active.remove(gen)
            # The slot keeps its cache: a later prompt that begins the same way reuses it.
            cached = gen._tokens[: gen._n_past] if gen._waiting_for is None else []
            if cached and self.config.prefix_cache:
                self._slot_tokens[gen.seq_id] = cached
            else:
                llama_cpp.llama_memory_seq_rm(self.memory, gen.seq_id, -1, -1)
            self._free_ids.append(gen.seq_id)
        if gen._sampler is not None:
            llama_cpp.llama_sampler_free(gen._sampler)
            gen._sampler = None

    def _make_sampler(self, p: SamplingParams) -> ctypes.c_void_p:
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        add = llama_cpp.llama_sampler_chain_add
        if p.repeat_penalty != 1.0:
            add(
                chain,
                llama_cpp.llama_sampler_init_penalties(
                    self.n_vocab, 64, p.repeat_penalty, 0.0, 0.0
                ),
            )
        if p.temperature <= 0:
            add(chain, llama_cpp.llama_sampler_init_greedy())
            return chain
        if p.top_k > 0:
            add(chain, llama_cpp.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            add(chain, llama_cpp.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            add(chain, llama_cpp.llama_sampler_init_min_p(p.min_p, 1))
        add(chain, llama_cpp.llama_sampler_init_temp(p.temperature))
        add(chain, llama_cpp.llama_sampler_init_dist(p.seed & 0xFFFFFFFF))
        return chain

    def close(self) -> None:
        for gen in list(self.active):
            self._release(gen)
        if self.ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self.ctx)
            llama_cpp.llama_model_free(self.model)
            self.ctx = None
            self.model = None


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
