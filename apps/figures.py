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
    "Latency (ms)": ("queue ms", "handler call ms", "total ms"),
    "Tokens per second": ("generated tokens/s", "decode tokens/s (last request)"),
    "Time to first token (ms)": ("time to first token ms",),
}


def metrics_figure(frame: pd.DataFrame, title: str, columns: Sequence[str]) -> go.Figure:
    """One of the live view's charts: ``columns`` of a MetricsHistory table over time."""
    figure = go.Figure()
    for column in columns:
        if column in frame:
            values = frame[column].tolist()
            figure.add_trace(
                go.Scatter(x=frame["time"], y=values, name=column, mode=trace_mode(values))
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


def trace_mode(values: Sequence[float | None]) -> str:
    """Lines; lines and markers only for a series with a value no line reaches (a gap, or the
    end, on both sides), which a line alone would not show. A marker per point costs the browser
    more than the rest of a chart: with 360 points, four charts take about 2.5 times as long to
    draw (``python -m benchmarks.chart_draw``).

    >>> trace_mode([1.0, 2.0, None, 3.0, 4.0])
    'lines'
    >>> trace_mode([1.0, 2.0, None, 3.0, None])
    'lines+markers'
    >>> trace_mode([5.0])
    'lines+markers'
    """
    present = [not pd.isna(v) for v in values]  # None and NaN are gaps
    for i, here in enumerate(present):
        before = i > 0 and present[i - 1]
        after = i + 1 < len(present) and present[i + 1]
        if here and not before and not after:
            return "lines+markers"
    return "lines"


COMPARISON_TITLES = (
    "Aggregate tokens/s",
    "Time to first token (ms)",
    "Inter-token latency (ms)",
    "Worker memory, peak total (MB)",
)
PERCENTILES = "solid p50, dotted p95"
LEGEND_LINE_PX = 21


def comparison_figure(rows: Sequence[Row], title: str, limits: Sequence[Row] = ()) -> go.Figure:
    """Throughput, time to first token, inter-token latency and memory of served rows.

    Staggered cells are left out (their client count is an arrival pattern, not a level);
    ``limits`` (in-process figures) are drawn as horizontal lines on the throughput chart.
    Laid out to read at 700 pixels wide and more: short titles with room between the rows, the
    legend above the charts (one line per entry), the memory bars named by configuration key
    (the legend and the hover give the full label), every axis given the margin its labels need.
    """
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=COMPARISON_TITLES,
        horizontal_spacing=0.14,
        vertical_spacing=0.24,
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
                    name=f"{config}: {cells[0].label}",
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
                x=configs, y=[peak_total(rows, c, attr) for c in configs], name=name,
                marker_color=color, hovertext=labels,
            ),
            2,
            2,
        )  # fmt: skip
    ticks = sorted({r.clients for r in served})
    for row_i, col_i in ((1, 1), (1, 2), (2, 1)):
        fig.update_xaxes(
            title_text="concurrent clients", type="log", tickvals=ticks, row=row_i, col=col_i
        )
    for row_i, col_i in ((1, 2), (2, 1)):
        fig.update_yaxes(title_text=PERCENTILES, row=row_i, col=col_i)
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True, rangemode="tozero")
    fig.update_annotations(font_size=14)  # the subplot titles
    # The legend above the charts, one entry a line: it needs a known height, and the titles
    # of the upper charts sit below it.
    legend_px = LEGEND_LINE_PX * (len(configs) + len(bars))
    title_px = 40 if title else 0
    height = 640 + title_px + legend_px
    fig.update_layout(
        title={"text": title, "y": 1, "yref": "container", "yanchor": "top"} if title else None,
        height=height,
        barmode="group",
        margin={"l": 10, "r": 10, "t": title_px + legend_px + 60, "b": 10},
        legend={
            "orientation": "v",
            "tracegroupgap": 0,
            "x": 0,
            "xanchor": "left",
            "y": 1 - (title_px + 5) / height,
            "yref": "container",
            "yanchor": "top",
        },
    )
    return fig
