"""The limits without a server: the handler's engine driven directly, in this process.

Two figures bound what serving can reach on the same model, threads and prompt:

* single stream: one request at a time, prompt formatted and tokenized as the handler does,
  prefill and decode to the end (the tokens/s and time to first token of one user);
* batched decode: N requests started together and decoded in one ``llama_decode`` per step
  until all end (the most tokens/s a batch of N can give).

Throughput counts the whole request, prefill included, exactly as the load generator does for
the served model, so the ratios compare like with like.
"""

from __future__ import annotations

import importlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tschat import contract
from tschat.bench.loadgen import RequestRecord, Summary, summarize

HANDLERS = Path(__file__).resolve().parent.parent / "handlers"


def handler_module(name: str) -> Any:
    """One of the handler's modules, imported as the archive lays them out."""
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

    def __init__(self, model_path: Path, n_threads: int, max_sequences: int, n_ctx: int = 2048):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.engine_mod = handler_module("engine")
        self.engine = self.engine_mod.LlamaEngine(
            self.engine_mod.EngineConfig(
                model_path=str(model_path),
                n_ctx=n_ctx,
                n_threads=n_threads,
                max_sequences=max_sequences,
            )
        )
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

    def run(
        self,
        prompt: str,
        max_tokens: int,
        sequences: int,
        temperature: float = 0.0,
        seed: int = 1,
        grammar: str | None = None,
        ignore_eos: bool = False,
    ) -> list[RequestRecord]:
        """Start ``sequences`` requests at once and step until all end; one record each."""
        params = contract.Sampling(
            max_tokens=max_tokens, temperature=temperature, seed=seed, ignore_eos=ignore_eos
        )
        t0 = time.perf_counter()
        gens = []
        started: dict[int, float] = {}
        for _ in range(sequences):
            # Formatting and tokenizing are part of a request's cost, as in the handler.
            begin = time.perf_counter() - t0
            gen = self.engine.start(self.prompt_tokens(prompt), params, grammar=grammar)
            started[id(gen)] = begin
            gens.append(gen)
        times: dict[int, list[float]] = {id(g): [] for g in gens}
        finished: dict[int, float] = {}
        for changed in self.engine.generate(gens):
            now = time.perf_counter() - t0
            for gen in changed:
                if gen.take_delta():
                    times[id(gen)].append(now)
                if gen.finished:
                    finished[id(gen)] = now
        return [
            RequestRecord(
                client=i,
                started=started[id(g)],
                finished=finished.get(id(g), time.perf_counter() - t0),
                token_times=tuple(times[id(g)]),
                tokens=g.completion_tokens,
            )
            for i, g in enumerate(gens)
        ]


def measure(
    model_path: Path,
    n_threads: int,
    prompt: str,
    max_tokens: int,
    sequences: int,
    repeats: int,
) -> InProcessResult:
    """Run ``repeats`` rounds of ``sequences`` requests started together, back to back."""
    with InProcessBench(model_path, n_threads, max_sequences=sequences) as bench:
        bench.run(prompt, 4, sequences)  # warm-up: first-call allocations stay out of the figures
        records: list[RequestRecord] = []
        offset = 0.0
        for _ in range(repeats):
            round_records = bench.run(prompt, max_tokens, sequences)
            # Put the rounds on one clock, back to back, as a closed-loop client would see them.
            shift = offset - min(r.started for r in round_records)
            for r in round_records:
                records.append(
                    RequestRecord(
                        r.client,
                        r.started + shift,
                        r.finished + shift,
                        tuple(t + shift for t in r.token_times),
                        r.tokens,
                    )
                )
            offset = max(r.finished for r in records)
    name = "in-process single stream" if sequences == 1 else f"in-process batch of {sequences}"
    return InProcessResult(name, sequences, tuple(records), summarize(records))
