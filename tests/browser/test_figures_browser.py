"""The console's figures, drawn by Plotly in chromium.

The Experiments comparison, at the widths the console gives it: at a 1280-pixel window the
console draws the chart across its main column (about 780 pixels beside the sidebar); the figure
must read there: no subplot title runs into another, into the legend or into an axis' labels,
and every label lies inside the chart's box (none clipped). The live view's charts: lines, and
a value between two gaps still shows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd
import pytest

from apps.figures import COMPARISON_TITLES, comparison_figure, metrics_figure
from tschat.bench.experiments import Row, ServedConfig, standard_configs
from tschat.bench.loadgen import Summary

if TYPE_CHECKING:
    from playwright.sync_api import Browser

pytestmark = pytest.mark.browser

# Every text a reader needs, by what it is, with its box in the page.
BOXES_JS = """
() => {
  const box = (e) => { const r = e.getBoundingClientRect();
    return {text: e.textContent, left: r.left, top: r.top, right: r.right, bottom: r.bottom}; };
  const all = (selector) => [...document.querySelectorAll(selector)].map(box);
  return {
    chart: box(document.querySelector(".svg-container")),
    titles: all(".infolayer .annotation"),
    legend: all(".infolayer .legend .traces text"),
    ticks: all(".xaxislayer-above text, .yaxislayer-above text"),
    axis_titles: all('g[class^="g-x"] text, g[class^="g-y"] text'),
  };
}
"""


def _rows() -> list[Row]:
    """An experiment as the console shows it: the five presets and one added configuration,
    at every client count it offers."""
    configs = [*standard_configs(2, 8), ServedConfig.build(2, 10, 1, 2)]
    rows = []
    for n, config in enumerate(configs):
        for clients in (1, 2, 4, 8, 16, 32):
            tps = 90.0 + 20 * n + 6 * clients
            summary = Summary(clients, 0, 64 * clients, 4.0, tps, 40.0 * clients,
                              95.0 * clients, 9.0 + n, 30.0 + n, 80.0)  # fmt: skip
            rows.append(
                Row(config.key, config.label, clients, 0.0, config.batch_size,
                    config.max_batch_delay_ms, config.workers, config.threads, config.continuous,
                    summary, (310.0 + 5 * clients,) * config.workers,
                    (200.0 + 5 * clients,) * config.workers)
            )  # fmt: skip
    return rows


def _overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return (
        a["left"] < b["right"]
        and b["left"] < a["right"]
        and a["top"] < b["bottom"]
        and b["top"] < a["bottom"]
    )


def _inside(inner: dict[str, Any], outer: dict[str, Any]) -> bool:
    return (
        inner["left"] >= outer["left"] - 0.5
        and inner["right"] <= outer["right"] + 0.5
        and inner["top"] >= outer["top"] - 0.5
        and inner["bottom"] <= outer["bottom"] + 0.5
    )


@pytest.mark.parametrize("width", [720, 1200])
def test_comparison_titles_and_labels_do_not_collide(browser: Browser, width: int) -> None:
    figure = comparison_figure(_rows(), "")
    html = figure.to_html(include_plotlyjs=True, full_html=True, default_width=f"{width}px")
    page = browser.new_page(viewport={"width": width + 40, "height": 1000})
    try:
        page.set_content(html)
        page.locator(".infolayer .annotation").first.wait_for()
        boxes = page.evaluate(BOXES_JS)
    finally:
        page.close()
    titles = boxes["titles"]
    assert [t["text"] for t in titles] == list(COMPARISON_TITLES)
    for i, first in enumerate(titles):
        for second in titles[i + 1 :]:
            assert not _overlap(first, second), (first, second)
    labels = boxes["ticks"] + boxes["axis_titles"] + boxes["legend"]
    assert len(boxes["ticks"]) > 20 and boxes["legend"]
    for title in titles:
        for label in labels:
            assert not _overlap(title, label), (title, label)
    for label in [*labels, *titles]:
        assert _inside(label, boxes["chart"]), (label, boxes["chart"])


def test_live_chart_draws_lines_and_shows_a_value_between_gaps(browser: Browser) -> None:
    times = pd.date_range("2026-01-01", periods=6, freq="2s")
    frame = pd.DataFrame(
        {
            "time": times,
            "queue ms": [5.0, 6.0, 7.0, 6.0, 5.0, 6.0],  # every sample: a line
            "handler call ms": [None, None, 40.0, None, None, None],  # one request, then nothing
        }
    )
    figure = metrics_figure(frame, "Latency (ms)", ("queue ms", "handler call ms"))
    page = browser.new_page(viewport={"width": 700, "height": 400})
    try:
        page.set_content(figure.to_html(include_plotlyjs=True, full_html=True))
        traces = page.locator(".scatterlayer .trace")
        traces.first.wait_for()
        full, lone = traces.nth(0), traces.nth(1)
        assert full.locator("path.js-line").count() == 1
        assert full.locator(".points path").count() == 0  # no marker per point
        assert lone.locator(".points path").count() == 1  # the lone value, as a marker
    finally:
        page.close()
