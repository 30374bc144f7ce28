"""How long chromium takes to draw the live view's four charts, as drawn and with a marker on
every point.

    .venv/bin/python -m benchmarks.chart_draw [--points 360] [--repeats 6]

Builds the four figures of ``apps.figures.metrics_figure`` from a full history of made-up
samples (360 points: 12 minutes at 2 s), then has Plotly draw them in headless chromium, timed
inside the page; prints the median of the repeats for each variant.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import plotly

if __package__ in (None, ""):  # run as a script: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from apps import figures
from apps.browser import chromium

DRAW_JS = """figures => {
    document.body.innerHTML = "";
    const started = performance.now();
    for (const figure of figures) {
        const div = document.createElement("div");
        div.style.width = "620px";
        document.body.appendChild(div);
        const parsed = JSON.parse(figure);
        Plotly.newPlot(div, parsed.data, parsed.layout);
    }
    document.body.offsetHeight;  // the layout, too
    return performance.now() - started;
}"""


def history(points: int, seed: int) -> pd.DataFrame:
    """A MetricsHistory-like table: every column of the charts, one row per 2 s."""
    rnd = random.Random(seed)
    start = datetime(2026, 1, 1)
    columns = [column for group in figures.CHARTS.values() for column in group]
    return pd.DataFrame(
        {
            "time": [start + timedelta(seconds=2 * i) for i in range(points)],
            **{column: [rnd.uniform(0, 100) for _ in range(points)] for column in columns},
        }
    )


def chart_json(frame: pd.DataFrame, markers: bool) -> list[str]:
    drawn = []
    for title, columns in figures.CHARTS.items():
        figure = figures.metrics_figure(frame, title, columns)
        if markers:
            figure.update_traces(mode="lines+markers")
        drawn.append(figure.to_json())
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.chart_draw", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--points", type=int, default=360, help="samples per chart")
    parser.add_argument("--repeats", type=int, default=6, help="draws per variant")
    args = parser.parse_args(argv)
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_content("<html><body></body></html>")
        page.add_script_tag(content=plotly_js.read_text(encoding="utf-8"))
        for label, markers in (("as drawn", False), ("a marker on every point", True)):
            times = [
                page.evaluate(DRAW_JS, chart_json(history(args.points, seed), markers))
                for seed in range(args.repeats)
            ]
            print(
                f"{label:24} {statistics.median(times):6.0f} ms to draw four charts of "
                f"{args.points} points (each draw: {', '.join(f'{t:.0f}' for t in times)})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
