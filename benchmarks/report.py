"""Figures of a benchmark run: table rows, the issue's target ratios, CSV, markdown and a chart.

Everything here is pure except the writers at the end: rows in, text or files out.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.loadgen import Summary

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


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(frozen=True)
class Row:
    """One measurement: a configuration under one load."""

    config: str
    label: str
    clients: int
    stagger_s: float
    batch_size: int
    max_batch_delay_ms: int
    workers: int
    threads: int
    continuous: bool
    summary: Summary
    worker_rss_mb: tuple[float, ...] = ()
    worker_pss_mb: tuple[float, ...] = ()
    cpu_workers_s: float | None = None  # CPU time used during the cell, by process group
    cpu_frontend_s: float | None = None
    cpu_client_s: float | None = None

    @property
    def rss_total_mb(self) -> float | None:
        return sum(self.worker_rss_mb) if self.worker_rss_mb else None

    @property
    def pss_total_mb(self) -> float | None:
        return sum(self.worker_pss_mb) if self.worker_pss_mb else None

    def as_csv(self) -> dict[str, object]:
        s = self.summary
        return {
            "config": self.config,
            "label": self.label,
            "clients": self.clients,
            "stagger_s": self.stagger_s,
            "batch_size": self.batch_size,
            "max_batch_delay_ms": self.max_batch_delay_ms,
            "workers": self.workers,
            "threads": self.threads,
            "continuous": self.continuous,
            "requests": s.requests,
            "failures": s.failures,
            "tokens": s.tokens,
            "wall_s": _round(s.wall_s, 3),
            "tokens_per_s": _round(s.tokens_per_s, 2),
            "ttft_p50_ms": _round(s.ttft_p50_ms, 1),
            "ttft_p95_ms": _round(s.ttft_p95_ms, 1),
            "itl_p50_ms": _round(s.itl_p50_ms, 2),
            "itl_p95_ms": _round(s.itl_p95_ms, 2),
            "stream_tps_p50": _round(s.stream_tps_p50, 2),
            "worker_rss_mb": ";".join(f"{m:.1f}" for m in self.worker_rss_mb),
            "rss_total_mb": _round(self.rss_total_mb, 1),
            "worker_pss_mb": ";".join(f"{m:.1f}" for m in self.worker_pss_mb),
            "pss_total_mb": _round(self.pss_total_mb, 1),
            "cpu_workers_s": _round(self.cpu_workers_s, 2),
            "cpu_frontend_s": _round(self.cpu_frontend_s, 2),
            "cpu_client_s": _round(self.cpu_client_s, 2),
            "errors": " | ".join(s.errors),
        }


_EMPTY = Summary(0, 0, 0, 0.0, None, None, None, None, None, None)


def mean_row(a: Row, b: Row) -> Row:
    """The mean of two measurements of one row, labelled with both tokens/s figures."""
    speeds = "/".join(_fmt(r.summary.tokens_per_s) for r in (a, b))
    return dataclasses.replace(
        a, label=f"{a.label} (mean of {speeds} tok/s)", summary=mean_summary(a.summary, b.summary)
    )


CSV_FIELDS = list(Row("", "", 1, 0.0, 1, 0, 1, 1, False, _EMPTY).as_csv().keys())


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


def peak_total(rows: Iterable[Row], config: str, attr: str) -> float | None:
    """The largest total worker memory (``rss_total_mb`` or ``pss_total_mb``) of a config."""
    totals = [getattr(r, attr) for r in rows if r.config == config]
    totals = [t for t in totals if t is not None]
    return max(totals) if totals else None


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
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.as_csv())
    return path


def write_chart(rows: Sequence[Row], path: Path, title: str) -> Path:
    """A self-contained Plotly HTML page: throughput, TTFT, inter-token latency, memory."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=(
            "Aggregate tokens/s",
            "Time to first token (ms; solid p50, dotted p95)",
            "Inter-token latency (ms; solid p50, dotted p95)",
            "Worker memory, peak total (MB)",
        ),
    )
    served = [r for r in rows if r.config not in (INPROC_SINGLE, INPROC_BATCH) and not r.stagger_s]
    configs = list(dict.fromkeys(r.config for r in served))
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for n, config in enumerate(configs):
        cells = sorted((r for r in served if r.config == config), key=lambda r: r.clients)
        color = palette[n % len(palette)]
        x = [r.clients for r in cells]
        label = cells[0].label
        series = (
            (1, 1, "tokens_per_s", "solid", True),
            (1, 2, "ttft_p50_ms", "solid", False),
            (1, 2, "ttft_p95_ms", "dot", False),
            (2, 1, "itl_p50_ms", "solid", False),
            (2, 1, "itl_p95_ms", "dot", False),
        )
        for row_i, col_i, attr, dash, legend in series:
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=[getattr(r.summary, attr) for r in cells],
                    mode="lines+markers",
                    name=label,
                    legendgroup=config,
                    showlegend=legend,
                    line={"color": color, "dash": dash},
                ),
                row=row_i,
                col=col_i,
            )
    for kind, dash in ((INPROC_SINGLE, "dash"), (INPROC_BATCH, "dashdot")):
        limit = next((r for r in rows if r.config == kind), None)
        if limit is not None and limit.summary.tokens_per_s is not None:
            fig.add_hline(
                y=limit.summary.tokens_per_s,
                line_dash=dash,
                line_color="grey",
                annotation_text=limit.label,
                row=1,
                col=1,
            )
    memory = [
        (c, peak_total(rows, c, "rss_total_mb"), peak_total(rows, c, "pss_total_mb"))
        for c in configs
    ]
    labels = [next(r.label for r in served if r.config == c) for c, _, _ in memory]
    fig.add_trace(
        go.Bar(x=labels, y=[m[1] for m in memory], name="RSS", marker_color="#7f7f7f"), 2, 2
    )
    fig.add_trace(
        go.Bar(x=labels, y=[m[2] for m in memory], name="PSS", marker_color="#bcbd22"), 2, 2
    )
    ticks = sorted({r.clients for r in served})
    for row_i, col_i in ((1, 1), (1, 2), (2, 1)):
        fig.update_xaxes(
            title_text="concurrent clients", type="log", tickvals=ticks, row=row_i, col=col_i
        )
    fig.update_layout(title=title, height=900, barmode="group")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(path, include_plotlyjs=True, full_html=True)
    return path
