"""The limits without a server: the handler's engine driven directly, in this process.

The same requests a load sends, by the same clients, with no HTTP, no TorchServe and no JSON in
between: prompts formatted and tokenized as the handler does, then each client's share of them
sent in order (as the load generator's clients send theirs), a client's next request starting
the moment its last one ends, every active sequence decoded in one ``llama_decode`` per step.
One client gives the single-stream limit (the tokens/s and time to first token of one user);
eight the batched limit (the most tokens/s eight users get from a batch on these requests).

Throughput counts the whole request, prefill included, exactly as the load generator does for
the served model, and the engine is warmed up on the prompt the servers are warmed up with, so
the ratios compare like with like.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tschat import contract
from tschat.bench.loadgen import RequestRecord, Summary, client_shares, summarize
from tschat.bench.scenarios import Turn
from tschat.ops import process

HANDLERS = Path(__file__).resolve().parent.parent / "handlers"


def worker_thread_env() -> None:
    """Give llama.cpp's threads in this process the workers' settings (``process.THREAD_ENV``).

    OpenMP reads them once, when llama.cpp is first loaded: call this before importing it.
    """
    for key, value in process.THREAD_ENV.items():
        os.environ.setdefault(key, value)


def handler_module(name: str) -> Any:
    """One of the handler's modules, imported as the archive lays them out."""
    worker_thread_env()
    if str(HANDLERS) not in sys.path:
        sys.path.insert(0, str(HANDLERS))
    # The archive ships the contract next to the handler, which imports it as ``contract``.
    sys.modules.setdefault("contract", contract)
    return importlib.import_module(name)


@dataclass(frozen=True)
class InProcessResult:
    """Records of one in-process measurement, in the load generator's terms."""

    name: str
    sequences: int
    records: tuple[RequestRecord, ...]
    summary: Summary


class InProcessBench:
    """One loaded engine with room for ``max_sequences``, and the handler's prompt format."""

    def __init__(
        self,
        model_path: Path,
        n_threads: int,
        max_sequences: int,
        n_ctx: int = 2048,
        **engine_options: Any,
    ):
        """``engine_options``: other EngineConfig fields (``n_batch=128``), else the defaults."""
        worker_thread_env()
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.engine_mod = handler_module("engine")
        config = self.engine_mod.EngineConfig(
            model_path=str(model_path),
            n_ctx=n_ctx,
            n_threads=n_threads,
            max_sequences=max_sequences,
            **engine_options,
        )
        self.engine = self.engine_mod.LlamaEngine(config)
        template = self.engine.metadata("tokenizer.chat_template")
        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self.engine.eos_token,
            bos_token=self.engine.bos_token,
            add_generation_prompt=True,
        )

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> InProcessBench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def prompt_tokens(self, prompt: str) -> list[int]:
        formatted = self.formatter(messages=[{"role": "user", "content": prompt}])
        tokens: list[int] = self.engine.tokenize(
            formatted.prompt, add_special=not formatted.added_special
        )
        return tokens

    def warm_up(self, prompt: str, slots: int, repeat_penalty: float = 1.0) -> None:
        """A short answer in each of ``slots``: first-call allocations stay out of the figures."""
        self.run([Turn(prompt, 4)] * slots, slots, repeat_penalty)

    def run(
        self,
        turns: Sequence[Turn],
        clients: int,
        repeat_penalty: float = 1.0,
        seed: int = 1,
        grammar: str | None = None,
        ignore_eos: bool = False,
    ) -> list[RequestRecord]:
        """Run ``turns`` (one-turn requests) greedily for ``clients`` clients; one record each.

        The clients are the load generator's (``client_shares``): each sends its share of the
        turns in order, the next as soon as the one before ends, so at most ``clients``
        sequences decode at once, and a client whose share is done leaves its slot empty.
        """
        waiting = [[turns[n] for n in share] for share in client_shares(len(turns), clients)]
        t0 = time.perf_counter()
        # id(gen) -> (its client, when it started, when each piece of text came)
        active: dict[int, tuple[int, float, list[float]]] = {}
        gens: dict[int, Any] = {}  # keeps each active generation, and so its id, alive
        records: list[RequestRecord] = []

        def start_next(client: int) -> None:
            if not waiting[client]:
                return
            turn = waiting[client].pop(0)
            # Formatting and tokenizing are part of a request's cost, as in the handler.
            begin = time.perf_counter() - t0
            params = contract.Sampling(
                max_tokens=turn.max_tokens,
                temperature=0.0,
                repeat_penalty=repeat_penalty,
                seed=seed,
                ignore_eos=ignore_eos,
            )
            gen = self.engine.start(self.prompt_tokens(turn.user), params, grammar=grammar)
            active[id(gen)] = (client, begin, [])
            gens[id(gen)] = gen

        for client in range(clients):
            start_next(client)
        while active:
            changed = self.engine.step()
            now = time.perf_counter() - t0
            ended = []
            for gen in changed:
                client, begin, times = active[id(gen)]
                if gen.take_delta():
                    times.append(now)
                if gen.finished:
                    del active[id(gen)], gens[id(gen)]
                    records.append(
                        RequestRecord(client, begin, now, tuple(times), gen.completion_tokens)
                    )
                    ended.append(client)
            for client in ended:
                start_next(client)
        return sorted(records, key=lambda r: r.started)


def measure(
    model_path: Path,
    n_threads: int,
    turns: Sequence[Turn],
    slots: int,
    repeat_penalty: float = 1.0,
    *,
    warm_up: str,
    ignore_eos: bool = False,
) -> InProcessResult:
    """Run ``turns`` for ``slots`` clients, a sequence each, after a warm-up on ``warm_up``.

    ``warm_up`` is the prompt the served side was warmed up with: a measured prompt would find
    its whole prompt cached and start at once, which no served request does.
    """
    with InProcessBench(model_path, n_threads, max_sequences=slots) as bench:
        bench.warm_up(warm_up, slots, repeat_penalty)
        records = bench.run(turns, slots, repeat_penalty, ignore_eos=ignore_eos)
    name = "in-process single stream" if slots == 1 else f"in-process batch of {slots}"
    return InProcessResult(name, slots, tuple(records), summarize(records))
