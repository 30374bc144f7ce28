"""Take screenshots/benchmark_peer.png from the chart page of a `make bench` run.

    .venv/bin/python scripts/screenshot_bench_chart.py benchmarks/results/peer-<time>.html
        [--output screenshots/benchmark_peer.png]

Opens the self-contained Plotly page that `python -m benchmarks.run` writes next to its CSV and
Markdown in headless chromium and saves what it draws, for the README.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apps.browser import chromium  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import ViewportSize

DEFAULT_OUTPUT = ROOT / "screenshots" / "benchmark_peer.png"
# The chart is 1200 x 750 (benchmarks/report.py), with a margin.
VIEWPORT: ViewportSize = {"width": 1240, "height": 790}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chart", type=Path, help="a peer-<time>.html from benchmarks/results/")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if not args.chart.is_file():
        parser.error(f"{args.chart} does not exist")
    with chromium() as browser:
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(args.chart.resolve().as_uri())
        page.wait_for_selector(".plotly .main-svg", timeout=30_000)
        args.output.parent.mkdir(parents=True, exist_ok=True)
        page.locator(".plotly").first.screenshot(path=str(args.output))
    print(f"Wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
