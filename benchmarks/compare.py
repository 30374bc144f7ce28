"""Two benchmark runs side by side (e.g. the CPU and the CUDA build), from their CSV files.

    python -m benchmarks.compare RUN_A RUN_B --labels cpu,cuda

RUN_A and RUN_B are CSV files written by ``python -m benchmarks.run`` or folders holding them
(the newest ``peer-*.csv`` is read). Each row of the same server, scenario and client count is
printed with both figures and the ratio B / A.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

KEY = ("server", "scenario", "clients")
FIGURES = (("tokens_per_s", "tok/s", 1), ("ttft_p50_ms", "TTFT p50 ms", 0))


def read_run(path: Path) -> list[dict[str, str]]:
    """The rows of a run's CSV; a folder means its newest peer-*.csv."""
    if path.is_dir():
        found = sorted(path.glob("peer-*.csv"))
        if not found:
            raise SystemExit(f"no peer-*.csv in {path}")
        path = found[-1]
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def compare_table(
    a: Sequence[dict[str, str]], b: Sequence[dict[str, str]], labels: tuple[str, str]
) -> str:
    """A markdown table of the rows both runs measured.

    >>> a = [{"server": "tschat", "scenario": "distinct", "clients": "8", "label": "tschat",
    ...       "tokens_per_s": "100.0", "ttft_p50_ms": "300"}]
    >>> b = [dict(a[0], tokens_per_s="250.0", ttft_p50_ms="60")]
    >>> print(compare_table(a, b, ("cpu", "cuda")).splitlines()[-1])
    | tschat | distinct | 8 | 100.0 | 250.0 | 2.50 | 300 | 60 | 0.20 |
    """
    x, y = labels
    head = "| server | scenario | clients"
    for _, name, _ in FIGURES:
        head += f" | {name} {x} | {name} {y} | {y}/{x}"
    lines = [head + " |", "|" + "---|" * (head.count("|"))]
    by_key = {tuple(row[k] for k in KEY): row for row in b}
    for row in a:
        other = by_key.get(tuple(row[k] for k in KEY))
        if other is None:
            continue
        cells = [row["label"] if row["server"].startswith("inproc") else row["server"]]
        cells += [row["scenario"], row["clients"]]
        for field, _, digits in FIGURES:
            first, second = _number(row.get(field)), _number(other.get(field))
            ratio = "-" if not first or second is None else f"{second / first:.2f}"
            cells += [
                "-" if first is None else f"{first:.{digits}f}",
                "-" if second is None else f"{second:.{digits}f}",
                ratio,
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__)
    parser.add_argument("first", type=Path, help="a run's CSV, or a folder of runs")
    parser.add_argument("second", type=Path, help="the other run's CSV, or a folder")
    parser.add_argument("--labels", default="A,B", help="names of the two runs (default A,B)")
    args = parser.parse_args(argv)
    labels = tuple(args.labels.split(","))
    if len(labels) != 2:
        raise SystemExit("--labels takes two names, e.g. cpu,cuda")
    print(compare_table(read_run(args.first), read_run(args.second), (labels[0], labels[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
