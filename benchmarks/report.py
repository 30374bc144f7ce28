"""Figures of a benchmark run: table rows, the issue's target ratios, CSV, markdown and a chart.

Everything here is pure except the writers at the end: rows in, text or files out.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from apps.figures import comparison_figure
from tschat.bench.experiments import Row, csv_text, peak_total
from tschat.bench.loadgen import Summary

# Row kinds: the two in-process limits and the served cells.
INPROC_SINGLE = "inproc-single"
INPROC_BATCH = "inproc-batch"


def _mean(a: float | None, b: float | None) -> float | None:
    """Mean of two optional figures (the one present, if only one is).

    >>> _mean(1.0, 2.0), _mean(None, 3.0), _mean(None, None)
    (1.5, 3.0, None)
    """
    present = [v for v in (a, b) if v is not None]
    return sum(present) / len(present) if present else None


def mean_summary(a: Summary, b: Summary) -> Summary:
    """Two measurements of the same thing as one: counts added, figures averaged."""
    return Summary(
        requests=a.requests + b.requests,
        failures=a.failures + b.failures,
        tokens=a.tokens + b.tokens,
        wall_s=a.wall_s + b.wall_s,
        tokens_per_s=_mean(a.tokens_per_s, b.tokens_per_s),
        ttft_p50_ms=_mean(a.ttft_p50_ms, b.ttft_p50_ms),
        ttft_p95_ms=_mean(a.ttft_p95_ms, b.ttft_p95_ms),
        itl_p50_ms=_mean(a.itl_p50_ms, b.itl_p50_ms),
        itl_p95_ms=_mean(a.itl_p95_ms, b.itl_p95_ms),
        stream_tps_p50=_mean(a.stream_tps_p50, b.stream_tps_p50),
        errors=tuple(dict.fromkeys(a.errors + b.errors)),
    )


def mean_row(a: Row, b: Row) -> Row:
    """The mean of two measurements of one row, labelled with both tokens/s figures."""
    speeds = "/".join(_fmt(r.summary.tokens_per_s) for r in (a, b))
    return dataclasses.replace(
        a, label=f"{a.label} (mean of {speeds} tok/s)", summary=mean_summary(a.summary, b.summary)
    )


@dataclass(frozen=True)
class Target:
    """One of the issue's targets, evaluated on a run: ``value`` compared with ``limit``."""

    name: str
    value: float | None
    limit: float
    at_least: bool  # True: value >= limit passes; False: value <= limit passes
    unit: str = "x"
    detail: str = ""

    @property
    def passed(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def line(self) -> str:
        """One printed line.

        >>> Target("speedup", 2.345, 2.0, True).line()
        'PASS  speedup: 2.35x (target >= 2.00x)'
        >>> Target("ttft", None, 30.0, False, " ms").line()
        'FAIL  ttft: n/a (target <= 30.00 ms)'
        """
        value = "n/a" if self.value is None else f"{self.value:.2f}{self.unit}"
        op = ">=" if self.at_least else "<="
        text = f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {value} "
        text += f"(target {op} {self.limit:.2f}{self.unit})"
        return text + (f"  [{self.detail}]" if self.detail else "")


def _ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing or b is 0.

    >>> _ratio(3.0, 2.0), _ratio(None, 1.0), _ratio(1.0, 0.0)
    (1.5, None, None)
    """
    if a is None or b is None or b == 0:
        return None
    return a / b


def find(rows: Iterable[Row], config: str, clients: int, staggered: bool = False) -> Row | None:
    """The row of one configuration at one client count (steady or staggered arrivals)."""
    for row in rows:
        if row.config == config and row.clients == clients and (row.stagger_s > 0) == staggered:
            return row
    return None


def evaluate_targets(
    rows: Sequence[Row],
    *,
    single: str,
    two_workers: str,
    batched: Sequence[str],
    continuous: str | None,
    batch_clients: int = 8,
) -> list[Target]:
    """The issue's targets, as ratios within this run's rows.

    ``single`` is the 1-worker batch-1 config, ``two_workers`` the 2-worker one, ``batched``
    the configs meant to scale with clients (dynamic batch 8, continuous).
    """
    targets: list[Target] = []
    inproc_single = find(rows, INPROC_SINGLE, 1)
    inproc_batch = find(rows, INPROC_BATCH, batch_clients)
    served = find(rows, single, 1)
    if served is not None and inproc_single is not None:
        s, i = served.summary, inproc_single.summary
        targets.append(
            Target(
                "served single stream tokens/s vs in-process",
                _ratio(s.tokens_per_s, i.tokens_per_s),
                0.9,
                True,
                detail=f"{_fmt(s.tokens_per_s)} vs {_fmt(i.tokens_per_s)} tok/s",
            )
        )
        delta = (
            None
            if s.ttft_p50_ms is None or i.ttft_p50_ms is None
            else s.ttft_p50_ms - i.ttft_p50_ms
        )
        targets.append(
            Target(
                "served TTFT p50 above in-process, 1 client",
                delta,
                30.0,
                False,
                " ms",
                detail=f"{_fmt(s.ttft_p50_ms)} vs {_fmt(i.ttft_p50_ms)} ms",
            )
        )
    for config in batched:
        many, one = find(rows, config, batch_clients), find(rows, config, 1)
        if many is None:
            continue
        if one is not None:
            targets.append(
                Target(
                    f"{config}: {batch_clients} clients vs 1 client tokens/s",
                    _ratio(many.summary.tokens_per_s, one.summary.tokens_per_s),
                    2.0,
                    True,
                    detail=f"{_fmt(many.summary.tokens_per_s)} vs "
                    f"{_fmt(one.summary.tokens_per_s)} tok/s",
                )
            )
        if inproc_batch is not None:
            targets.append(
                Target(
                    f"{config}: {batch_clients} clients vs raw batched decode of {batch_clients}",
                    _ratio(many.summary.tokens_per_s, inproc_batch.summary.tokens_per_s),
                    0.85,
                    True,
                    detail=f"{_fmt(many.summary.tokens_per_s)} vs "
                    f"{_fmt(inproc_batch.summary.tokens_per_s)} tok/s",
                )
            )
    if continuous is not None:
        staggered = find(rows, continuous, batch_clients, staggered=True)
        if staggered is not None:
            p95 = staggered.summary.ttft_p95_ms
            targets.append(
                Target(
                    f"{continuous}: TTFT p95, {batch_clients} clients arriving "
                    f"{staggered.stagger_s:g} s apart",
                    None if p95 is None else p95 / 1000.0,
                    1.5,
                    False,
                    " s",
                )
            )
    for attr, what in (("rss_total_mb", "RSS"), ("pss_total_mb", "PSS")):
        two, one_worker = peak_total(rows, two_workers, attr), peak_total(rows, single, attr)
        if two is not None and one_worker is not None:
            targets.append(
                Target(
                    f"total {what} of 2 workers vs 1 worker",
                    _ratio(two, one_worker),
                    1.5,
                    False,
                    detail=f"{two:.0f} vs {one_worker:.0f} MB",
                )
            )
    return targets


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# ---------------------------------------------------------------- text


def machine_description() -> str:
    """CPU model and core count of this machine, for the record."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores, {platform.system()} {platform.release()}"


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a GitHub markdown table.

    >>> row = Row("b8", "batch 8", 8, 0.0, 8, 50, 1, 2, False,
    ...           Summary(16, 0, 1024, 8.0, 128.0, 40.0, 55.0, 9.0, 12.5, 60.0), (300.0,), (200.0,))
    >>> print(markdown_table([row]).splitlines()[2])
    | batch 8 | 8 | 128.0 | 40 | 55 | 9.0 | 12.5 | 0/16 | 300 | 200 |
    """
    head = (
        "| configuration | clients | tokens/s | TTFT p50 ms | TTFT p95 ms | ITL p50 ms "
        "| ITL p95 ms | failed | worker RSS MB | worker PSS MB |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        s = r.summary
        clients = f"{r.clients} (staggered {r.stagger_s:g} s)" if r.stagger_s else str(r.clients)
        lines.append(
            f"| {r.label} | {clients} | {_fmt(s.tokens_per_s)} | {_fmt(s.ttft_p50_ms, 0)} "
            f"| {_fmt(s.ttft_p95_ms, 0)} | {_fmt(s.itl_p50_ms)} | {_fmt(s.itl_p95_ms)} "
            f"| {s.failures}/{s.requests} "
            f"| {'+'.join(f'{m:.0f}' for m in r.worker_rss_mb) or '-'} "
            f"| {'+'.join(f'{m:.0f}' for m in r.worker_pss_mb) or '-'} |"
        )
    return "\n".join(lines)


def markdown_report(
    rows: Sequence[Row], targets: Sequence[Target], machine: str, command: str, notes: str = ""
) -> str:
    parts = [
        "# Benchmark figures",
        "",
        f"Machine: {machine}",
        "",
        f"Command: `{command}`",
        "",
        markdown_table(rows),
        "",
        "## Targets",
        "",
        *[f"- {t.line()}" for t in targets],
    ]
    if notes:
        parts += ["", notes]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- files


def write_csv(rows: Sequence[Row], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(csv_text(rows), encoding="utf-8")
    return path


def write_chart(rows: Sequence[Row], path: Path, title: str) -> Path:
    """A self-contained Plotly HTML page: throughput, TTFT, inter-token latency, memory."""
    limits = [r for r in rows if r.config in (INPROC_SINGLE, INPROC_BATCH)]
    served = [r for r in rows if r.config not in (INPROC_SINGLE, INPROC_BATCH)]
    fig = comparison_figure(served, title, limits)
    fig.update_layout(height=900)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path
