"""Figures carry the data they are given (checked in the figure object) under human labels,
notebooks get a static image of each, and the HTML report is self-contained and escapes
everything that comes from data."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from browsers import need_image_renderer

from mechintro.experiments.metrics import add_delta_b, rates, specificity
from mechintro.plotting import (
    Code,
    Section,
    belief_heatmaps,
    concept_bars,
    dose_response,
    examples_table,
    figure_bundle,
    html_report,
    interval_text,
    label,
    rate_heatmap,
    specificity_heatmap,
    use_static_images,
)

LAYERS, STRENGTHS, CONCEPTS = (1, 2), (2.0, 4.0), ("Dust", "Peace", "<b>Bread</b>")


def graded_trials() -> pd.DataFrame:
    """Injected trials whose detection rate rises with layer and strength, plus controls."""
    rows = []
    for L in LAYERS:
        for s in STRENGTHS:
            for ci, c in enumerate(CONCEPTS):
                for n in range(4):
                    yes = n < L + int(s) // 2 - 1 + (ci == 0)
                    ident = "YES" if yes and n % 2 == 0 else ("NO" if yes else None)
                    det = "YES" if yes else "NO"
                    rows.append(
                        dict(
                            layer=L,
                            strength=s,
                            concept=c,
                            injected=True,
                            detection=det,
                            identification=ident,
                        )
                    )
    for n in range(10):
        rows.append(
            dict(
                layer=None,
                strength=0.0,
                concept=None,
                injected=False,
                detection="YES" if n == 0 else "NO",
                identification=None,
            )
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def cells() -> pd.DataFrame:
    return rates(graded_trials(), by=["layer", "strength"], control_by=[])


def readouts() -> pd.DataFrame:
    rows = []
    for q, slope in (("introspection", 1.0), ("one_plus_one", 0.5)):
        for L in LAYERS:
            for s in (0.0, *STRENGTHS):
                for v in ("a", "b"):
                    b = slope * s * L + (0.1 if v == "a" else -0.1) + (q == "introspection")
                    rows.append(dict(question=q, layer=L, strength=s, vector=v, b=b))
    return add_delta_b(pd.DataFrame(rows), keys=["question", "layer", "vector"])


# ---------------------------------------------------------------------------------------------
# figures


def test_rate_heatmap_holds_rates_intervals_and_counts(cells):
    fig = rate_heatmap(cells, "tpr")
    (hm,) = fig.data
    assert hm.type == "heatmap"
    assert list(hm.x) == ["2", "4"] and list(hm.y) == ["1", "2"]
    assert fig.layout.xaxis.title.text == "strength" and fig.layout.yaxis.title.text == "layer"
    assert (hm.zmin, hm.zmax) == (0.0, 1.0)
    for i, L in enumerate(LAYERS):
        for j, s in enumerate(STRENGTHS):
            row = cells[(cells.layer == L) & (cells.strength == s)].iloc[0]
            assert hm.z[i][j] == pytest.approx(row.tpr)
            lo, hi, k, n = hm.customdata[i][j]
            assert (lo, hi) == pytest.approx((row.tpr_lo, row.tpr_hi))
            assert (k, n) == (row.k_tpr, row.n_tpr) == (row.k_tpr, 12)
    assert "customdata[3]" in hm.hovertemplate and "TPR" in hm.hovertemplate


def test_rate_heatmap_gap_for_an_ungraded_cell_and_clear_errors(cells):
    fig = rate_heatmap(cells[~((cells.layer == 2) & (cells.strength == 4.0))], "introspection_rate")
    assert fig.data[0].z[1][1] is None
    assert fig.data[0].z[0][0] == pytest.approx(cells.introspection_rate.iloc[0])
    with pytest.raises(ValueError, match="several rows share one"):
        rate_heatmap(pd.concat([cells, cells]), "tpr")
    with pytest.raises(ValueError, match=r"metrics\.rates"):
        rate_heatmap(cells.drop(columns="n_tpr"), "tpr")


def test_belief_heatmaps_side_by_side_on_one_scale_centred_on_zero():
    df = readouts()
    fig = belief_heatmaps(df)
    assert [t.type for t in fig.data] == ["heatmap", "heatmap"]
    assert {t.coloraxis for t in fig.data} == {"coloraxis"}
    ca = fig.layout.coloraxis
    assert ca.cmid == 0 and ca.cmin == -ca.cmax
    titles = [a.text for a in fig.layout.annotations]
    assert "introspection" in titles[0] and "one_plus_one" in titles[1]
    means = df.groupby(["question", "layer", "strength"]).delta_b.mean()
    for t, q in zip(fig.data, ("introspection", "one_plus_one")):
        assert list(t.x) == ["0", "2", "4"] and list(t.y) == ["1", "2"]
        for i, L in enumerate(LAYERS):
            for j, s in enumerate((0.0, *STRENGTHS)):
                assert t.z[i][j] == pytest.approx(means[(q, L, s)])
                assert t.customdata[i][j][1] == 2  # n readouts (two vectors)
    assert ca.cmax == pytest.approx(max(abs(means)))
    one = belief_heatmaps(df[df.question == "introspection"])
    assert len(one.data) == 1


def test_specificity_heatmap_diverges_from_zero():
    spec = specificity(readouts(), by=("layer", "strength"))
    fig = specificity_heatmap(spec)
    (hm,) = fig.data
    assert hm.zmid == 0 and hm.zmin == -hm.zmax
    row = spec[(spec.layer == 2) & (spec.strength == 4.0)].iloc[0]
    assert hm.z[1][2] == pytest.approx(row.specificity) == pytest.approx(0.5 * 4 * 2)
    assert hm.customdata[1][2][2:] == [2, 2]


@pytest.mark.parametrize("interval", ["band", "bars"])
def test_dose_response_one_line_per_layer_with_intervals(cells, interval):
    fig = dose_response(cells, "tpr", interval=interval)
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["layer 1", "layer 2"]
    for t, L in zip(lines, LAYERS):
        part = cells[cells.layer == L].sort_values("strength")
        assert list(t.x) == list(part.strength)
        assert list(t.y) == pytest.approx(list(part.tpr))
        if interval == "bars":
            assert list(t.error_y.array) == pytest.approx(list(part.tpr_hi - part.tpr))
            assert list(t.error_y.arrayminus) == pytest.approx(list(part.tpr - part.tpr_lo))
    bands = [t for t in fig.data if t.fill == "toself"]
    assert len(bands) == (2 if interval == "band" else 0)
    if bands:
        part = cells[cells.layer == 1].sort_values("strength")
        assert list(bands[0].y) == pytest.approx([*part.tpr_hi, *part.tpr_lo[::-1]])
    fpr = [t for t in fig.data if t.name and t.name.startswith("FPR")]
    assert len(fpr) == 2 and fpr[0].y[0] == pytest.approx(0.1)  # 1 of 10 controls
    assert fpr[0].line.dash == "dash"
    with pytest.raises(ValueError, match="band"):
        dose_response(cells, interval="shade")


def test_dose_response_per_organism():
    a = rates(graded_trials(), by=["layer", "strength"], control_by=[]).assign(organism="base")
    b = a.assign(organism="introspective", tpr=a.tpr / 2)
    fig = dose_response(pd.concat([a, b]).query("layer == 1"), color="organism", show_fpr=False)
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["organism base", "organism introspective"]
    assert lines[1].y[0] == pytest.approx(lines[0].y[0] / 2)


def test_concept_bars_sorted_with_intervals_and_escaped_names():
    table = rates(graded_trials(), by=["concept"], control_by=[])
    fig = concept_bars(table, "tpr")
    (bar,) = fig.data
    assert list(bar.y) == sorted(bar.y, reverse=True)
    assert "&lt;b&gt;Bread&lt;/b&gt;" in bar.x
    top = table.sort_values("tpr", ascending=False, kind="stable").iloc[0]
    assert bar.y[0] == pytest.approx(top.tpr)
    assert bar.error_y.array[0] == pytest.approx(top.tpr_hi - top.tpr)
    assert bar.customdata[0][3] == top.n_tpr == 16
    nan = table.assign(tpr=[math.nan, *table.tpr[1:]])
    assert concept_bars(nan, "tpr").data[0].y[-1] is None  # ungraded last


def test_examples_table_escapes_replies():
    df = pd.DataFrame(
        {
            "concept": ["Dust", None],
            "strength": [4.0, 0.0],
            "reply": ["<script>alert(1)</script>\nsecond line", "No."],
            "grade": ["detection YES", "detection NO"],
        }
    )
    fig = examples_table(df)
    (table,) = fig.data
    assert table.type == "table"
    reply = table.cells.values[2][0]
    assert "<script>" not in reply and "&lt;script&gt;" in reply and "<br>" in reply
    assert list(table.cells.values[1]) == ["4", "0"] and table.cells.values[0][1] == "–"
    assert len(examples_table(pd.concat([df] * 10), max_rows=5).data[0].cells.values[0]) == 5


# ---------------------------------------------------------------------------------------------
# the HTML page


def test_html_report_is_self_contained_escaped_and_atomic(cells, tmp_path):
    from plotly.offline import get_plotlyjs

    evil = "<img src=x onerror=alert(1)>"
    table = pd.DataFrame({"concept": [evil], "rate": [0.123456]})
    path = tmp_path / "sub" / "r.html"
    page = html_report(
        f"title {evil}",
        [
            Section("Rates & <things>", [f"para {evil}", rate_heatmap(cells), table]),
            Section("More", [Code(f"x = '{evil}'"), dose_response(cells)]),
        ],
        path=path,
        footer=evil,
    )
    assert path.read_text("utf-8") == page
    assert [p.name for p in path.parent.iterdir()] == ["r.html"]  # no temp file left
    assert (
        evil not in page and page.count("&lt;img src=x onerror=alert(1)&gt;") == 6
    )  # title, h1, p, td, pre, footer
    assert "Rates &amp; &lt;things&gt;" in page
    assert "<script src" not in page.lower() and "cdn.plot.ly/plotly" not in page
    assert page.count(get_plotlyjs()[:200]) == 1  # plotly.js once, inline
    assert page.count('class="plotly-graph-div"') == 2
    assert '<td class="num">0.1235</td>' in page
    no_fig = html_report("t", [Section("s", ["text"])])
    assert "<script" not in no_fig
    with pytest.raises(TypeError, match="DataFrame or a plotly Figure"):
        html_report("t", [Section("s", [object()])])


# ---------------------------------------------------------------------------------------------
# labels, and the static image beside each notebook figure


def test_figures_and_tables_show_labels_not_identifiers(cells):
    from mechintro.app.report import format_rates
    from mechintro.experiments.protocols.noise import INTROSPECTION, ONE_PLUS_ONE

    for q in (INTROSPECTION, ONE_PLUS_ONE):
        assert q.text in label(q.id)
    df = readouts().replace({"question": {"one_plus_one": ONE_PLUS_ONE.id}})
    fig = belief_heatmaps(df)
    titles = [a.text for a in fig.layout.annotations]
    assert INTROSPECTION.text in titles[0] and ONE_PLUS_ONE.text in titles[1]
    assert not any(ONE_PLUS_ONE.id in t for t in titles)
    assert all("delta_b" not in t.hovertemplate and "Δb" in t.hovertemplate for t in fig.data)
    assert "delta_b" not in fig.layout.title.text
    # every trace of a dose-response figure is a line or a labelled line with markers: the
    # interval bands draw no markers of their own
    dose = dose_response(cells.assign(split=["train", "heldout"] * 2), color="split")
    assert {t.mode for t in dose.data} == {"lines", "lines+markers"}
    assert [t.name for t in dose.data if t.mode == "lines+markers"] == [
        "held-out concepts",
        "train concepts",
    ]
    table = format_rates(cells, ["layer", "strength"])
    assert {"TPR", "FPR", "grading errors"} <= set(table.columns)
    assert all(" " not in v for v in table["TPR"])  # one line: no-break spaces only


def test_interval_text_on_one_line():
    assert interval_text(0.6249, 0.514, 0.72) == "0.62\xa0[0.51,\xa00.72]"
    assert interval_text(0.5, None, None) == "0.50"
    assert interval_text(math.nan, 0.1, 0.2) == "–"
    assert interval_text(0.12345, 0.1, 0.2, digits=3) == "0.123\xa0[0.100,\xa00.200]"


def test_figure_bundle_carries_the_interactive_figure_and_a_static_image(cells):
    import base64
    import struct

    fig = rate_heatmap(cells).update_layout(width=400, height=300)
    need_image_renderer()
    bundle = figure_bundle(fig)
    assert bundle["application/vnd.plotly.v1+json"]["data"][0]["type"] == "heatmap"
    png = base64.b64decode(bundle["image/png"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (400, 300)  # IHDR: the figure's own size
    svg = figure_bundle(fig, "svg")["image/svg+xml"]
    assert svg.startswith("<svg") and 'width="400"' in svg and "TPR" in svg
    with pytest.raises(ValueError, match="'png' or 'svg'"):
        figure_bundle(fig, "gif")


def test_use_static_images_makes_every_figure_carry_a_png(cells):
    import plotly.io as pio

    need_image_renderer()
    before = pio.renderers.default
    try:
        use_static_images()
        bundle = dose_response(cells)._repr_mimebundle_()
    finally:
        pio.renderers.default = before
    assert {"application/vnd.plotly.v1+json", "image/png"} <= set(bundle)


def test_demo_headline_table_one_line_intervals_under_labels():
    from mechintro.organism.report import headline_table

    split = {
        "tpr": 0.625,
        "tpr_ci": [0.514, 0.72],
        "fpr": 0.0,
        "fpr_ci": [0.0, 0.05],
        "identification": None,
        "identification_category": 0.5,
        "control_flip_rate": 0.25,
        "n_injected": 40,
    }
    metrics = {o: {"best_strength": 0.5, "heldout": split} for o in ("base", "introspective")}
    table = headline_table(metrics)
    assert list(table.columns) == [
        "organism",
        "split",
        "strength",
        "TPR",
        "FPR",
        "identification",
        "identification (category)",
        "1+1=3 answer flips",
        "n injected",
    ]
    row = table.iloc[0]
    assert row["split"] == "held-out concepts" and row["n injected"] == 40
    assert row["TPR"] == "0.62\xa0[0.51,\xa00.72]" and row["identification"] == "–"
    assert row["identification (category)"] == "0.50"


def test_without_a_browser_figures_stay_interactive_and_the_fix_is_logged(tmp_path):
    import os
    import subprocess
    import sys

    script = (
        "import logging, plotly.graph_objects as go\n"
        "from mechintro.plotting import figure_bundle\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "fig = go.Figure(go.Bar(y=[1, 2]))\n"
        "print(sorted(figure_bundle(fig)), sorted(figure_bundle(fig)))\n"
    )
    env = {**os.environ, "PATH": str(tmp_path), "BROWSER_PATH": str(tmp_path / "no-chrome")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    keys = "['application/vnd.plotly.v1+json', 'text/plain']"
    assert done.stdout.strip() == f"{keys} {keys}"
    assert done.stderr.count("without a static image") == 1  # warned once
    assert "chromium-headless-shell" in done.stderr
