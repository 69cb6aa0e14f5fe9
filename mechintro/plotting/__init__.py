"""Plotly figures of sweep results, and one self-contained HTML report.

Every figure function takes a pandas DataFrame of the shape :mod:`mechintro.experiments.metrics` or
:func:`mechintro.experiments.sweeps.load_results` produces and returns a
``plotly.graph_objects.Figure`` (plotly is imported inside the functions, so importing this module
stays cheap):

* :func:`rate_heatmap`: one rate (TPR, FPR, introspection, identification) over layer ×
  strength, from ``metrics.rates(..., by=["layer", "strength"])``, its Wilson interval and
  counts in the hover;
* :func:`belief_heatmaps`: mean Δb per layer × strength for the introspection question and the
  control question(s) side by side on one colour scale centred on 0 (Godet's comparison,
  docs/protocols.md §5), from ``metrics.add_delta_b`` rows; :func:`specificity_heatmap` from
  ``metrics.specificity``;
* :func:`dose_response`: a rate against strength, one line per layer (or organism, model...)
  with interval bands or error bars;
* :func:`concept_bars`: a rate per concept with its interval, sorted;
* :func:`examples_table`: example replies with their grades (text HTML-escaped).

Every figure and summary table names things by one mapping, :data:`LABELS` (read with
:func:`label`), and writes an interval on one line (:func:`interval_text`). In a notebook,
:func:`use_static_images` makes every figure's output carry a PNG of it beside the
interactive figure, drawn offline by plotly.js in a headless Chromium (kaleido), so that
nbconvert's HTML and GitHub show it (:func:`show`, :func:`figure_bundle`, :func:`static_image`
for one figure; docs/figures.md §13).

:func:`html_report` puts headings, paragraphs, figures and tables into one HTML file that opens
offline (plotly.js inlined once, no CDN), everything that comes from data HTML-escaped; it and
:class:`Section`, :class:`Code` and :func:`frame_html` live in :mod:`mechintro.html_page` and
are re-exported here.

The figures live in :mod:`~mechintro.plotting.heatmaps` and :mod:`~mechintro.plotting.charts`,
the labels in :mod:`~mechintro.plotting.labels`, the static images in
:mod:`~mechintro.plotting.static`; every public name is importable from here.

Example::

    table = rates(trials, by=["layer", "strength"], control_by=[])
    html_report("Detection", [Section("TPR", [rate_heatmap(table, "tpr"), table])],
                path="report.html")
"""

from __future__ import annotations

from mechintro.html_page import Code, Section, frame_html, html_report
from mechintro.plotting.charts import concept_bars, dose_response, examples_table
from mechintro.plotting.heatmaps import belief_heatmaps, rate_heatmap, specificity_heatmap
from mechintro.plotting.labels import (
    LABELS,
    PALETTE,
    RATE_NAMES,
    interval_text,
    label,
    plot_text,
)
from mechintro.plotting.static import (
    BROWSERS,
    figure_bundle,
    show,
    static_image,
    use_static_images,
)

__all__ = [
    "BROWSERS",
    "LABELS",
    "PALETTE",
    "RATE_NAMES",
    "Code",
    "Section",
    "belief_heatmaps",
    "concept_bars",
    "dose_response",
    "examples_table",
    "figure_bundle",
    "frame_html",
    "html_report",
    "interval_text",
    "label",
    "plot_text",
    "rate_heatmap",
    "show",
    "specificity_heatmap",
    "static_image",
    "use_static_images",
]
