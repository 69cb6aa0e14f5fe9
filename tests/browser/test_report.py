"""The demo's report.html in a real browser, opened as a file with the network blocked: every
plotly figure draws (its div gets plotly's SVG) and no script fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def test_every_figure_of_the_report_draws_offline(browser: Any, demo_run: Path) -> None:
    page = browser.new_page()
    blocked: list[str] = []
    errors: list[str] = []

    def route(r: Any) -> None:  # a file:// page may read itself; nothing goes to a network
        if r.request.url.startswith("file://"):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto((demo_run / "report.html").resolve().as_uri(), wait_until="load")
    # plotly's HTML gives each figure a div.plotly-graph-div; drawn, it is a .js-plotly-plot
    # holding plotly's SVG
    n_figures = page.locator(".plotly-graph-div").count()
    assert n_figures > 0, "the report has no plotly figure"
    drawn = (
        "() => [...document.querySelectorAll('.plotly-graph-div')]"
        ".filter(d => d.classList.contains('js-plotly-plot') && d.querySelector('.main-svg'))"
        ".length"
    )
    page.wait_for_function(f"({drawn})() === {n_figures}", timeout=60_000)
    assert page.evaluate(drawn) == n_figures
    page.close()
    assert not blocked, f"the report asked the network for {blocked}"
    assert not errors, errors
