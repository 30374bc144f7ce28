"""Plotly figures of the console: the live view's metrics and the comparison of experiments."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tschat.bench.experiments import Row, peak_total

# Columns of MetricsHistory.rows(), grouped as the console charts them.
CHARTS: dict[str, tuple[str, ...]] = {
    "Requests per second": ("requests/s",),
    "Latency per request (ms)": ("queue ms", "handler ms", "total ms"),
    "Tokens per second": ("generated tokens/s", "decode tokens/s (last request)"),
    "Time to first token (ms)": ("time to first token ms",),
}


def metrics_figure(frame: pd.DataFrame, title: str, columns: Sequence[str]) -> go.Figure:
    """One of the live view's charts: ``columns`` of a MetricsHistory table over time."""
    figure = go.Figure()
    for column in columns:
        if column in frame:
            figure.add_trace(
                go.Scatter(x=frame["time"], y=frame[column], name=column, mode="lines+markers")
            )
    figure.update_layout(
        title=title,
        height=260,
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        showlegend=len(columns) > 1,
        legend={"orientation": "h", "y": -0.25},
        yaxis={"rangemode": "tozero"},
    )
    return figure


def comparison_figure(rows: Sequence[Row], title: str, limits: Sequence[Row] = ()) -> go.Figure:
    """Throughput, time to first token, inter-token latency and memory of served rows.

    Staggered cells are left out (their client count is an arrival pattern, not a level);
    ``limits`` (in-process figures) are drawn as horizontal lines on the throughput chart.
    """
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
    served = [r for r in rows if not r.stagger_s]
    configs = list(dict.fromkeys(r.config for r in served))
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for n, config in enumerate(configs):
        cells = sorted((r for r in served if r.config == config), key=lambda r: r.clients)
        color = palette[n % len(palette)]
        x = [r.clients for r in cells]
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
                    name=cells[0].label,
                    legendgroup=config,
                    showlegend=legend,
                    line={"color": color, "dash": dash},
                ),
                row=row_i,
                col=col_i,
            )
    for limit, dash in zip(limits, ("dash", "dashdot", "dot"), strict=False):
        if limit.summary.tokens_per_s is not None:
            fig.add_hline(
                y=limit.summary.tokens_per_s,
                line_dash=dash,
                line_color="grey",
                annotation_text=limit.label,
                row=1,
                col=1,
            )
    labels = [next(r.label for r in served if r.config == c) for c in configs]
    bars = (("rss_total_mb", "RSS", "#7f7f7f"), ("pss_total_mb", "PSS", "#bcbd22"))
    for attr, name, color in bars:
        fig.add_trace(
            go.Bar(
                x=labels, y=[peak_total(rows, c, attr) for c in configs], name=name,
                marker_color=color,
            ),
            2,
            2,
        )  # fmt: skip
    ticks = sorted({r.clients for r in served})
    for row_i, col_i in ((1, 1), (1, 2), (2, 1)):
        fig.update_xaxes(
            title_text="concurrent clients", type="log", tickvals=ticks, row=row_i, col=col_i
        )
    fig.update_layout(title=title, height=800, barmode="group")
    return fig
