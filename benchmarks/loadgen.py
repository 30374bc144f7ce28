"""Command line of the load generator (tschat.bench.loadgen), against a running local TorchServe.

    python -m benchmarks.loadgen --clients 8 --requests 16 --max-tokens 64
    python -m benchmarks.loadgen --scenario multi-turn --clients 4 --requests 40

Address, ports and keys come from the TSCHAT_* settings, as for the apps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tschat.api.keys import KeyStore
from tschat.bench import scenarios
from tschat.bench.loadgen import LoadSpec, format_summary, make_prompt, run_load
from tschat.settings import Settings


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.loadgen",
        description="Streamed chat requests from concurrent clients against a local TorchServe "
        "(address, ports and keys from TSCHAT_* settings, as for the apps).",
    )
    parser.add_argument("--model", default=settings.model_name, help="registered model name")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=8, help="requests in all")
    parser.add_argument(
        "--scenario",
        choices=scenarios.SCENARIOS,
        default=scenarios.SHARED_PREFIX,
        help="what the clients ask (default: one shared prompt)",
    )
    parser.add_argument(
        "--turns", type=int, default=scenarios.DEFAULT_TURNS, help="turns of a multi-turn chat"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=64, help="answer cap (the largest drawn, if varied)"
    )
    parser.add_argument("--prompt-words", type=int, default=0, help="pad the prompt to N words")
    parser.add_argument("--stagger", type=float, default=0.0, help="seconds between arrivals")
    parser.add_argument("--duration", type=float, default=300.0, help="time budget in seconds")
    args = parser.parse_args(argv)
    spec = LoadSpec(
        clients=args.clients,
        requests=args.requests,
        max_tokens=args.max_tokens,
        prompt=make_prompt(args.prompt_words),
        stagger_s=args.stagger,
        duration_s=args.duration,
        scenario=args.scenario,
        turns=args.turns,
    )
    result = run_load(settings.inference_url, KeyStore(settings), args.model, spec)
    print(format_summary(result.summary))
    for error in result.summary.errors:
        print(f"  error: {error}")
    return 1 if result.summary.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
