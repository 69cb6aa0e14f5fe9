"""Plotly figures and a self-contained HTML report."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import Any

import pandas as pd


def belief_figure(noise: Sequence[dict[str, Any]]) -> Any:
    """Mean Δb per strength for the introspection and the control question, side by side."""
    import plotly.graph_objects as go

    df = pd.DataFrame(noise)
    df = df[df["strength"] != 0]
    mean = df.groupby(["question", "strength"])["delta_b"].agg(["mean", "sem"]).reset_index()
    fig = go.Figure()
    for q, color in (("introspection", "#1f77b4"), ("control", "#d62728")):
        part = mean[mean["question"] == q]
        fig.add_bar(
            x=[str(s) for s in part["strength"]],
            y=part["mean"],
            name=q,
            marker_color=color,
            error_y={"type": "data", "array": part["sem"].fillna(0).tolist()},
        )
    fig.update_layout(
        title="Δb = Δ[logit(Yes) − logit(No)] under injection (mean ± s.e.m. over concepts)",
        xaxis_title="strength",
        yaxis_title="Δb",
        barmode="group",
        template="plotly_white",
    )
    return fig


def _table(rows: Sequence[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in cols) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def demo_report(
    metrics: dict[str, Any], trials: Sequence[dict[str, Any]], noise: Sequence[dict[str, Any]]
) -> str:
    """One HTML page, plotly.js inlined: readable offline."""
    fig = belief_figure(noise).to_html(full_html=False, include_plotlyjs=True)
    summary = {k: metrics[k] for k in ("model", "injection_layer", "parity", "by_strength")}
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>mechintro demo</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px}}
pre{{background:#f6f6f6;padding:1em}}</style></head><body>
<h1>mechintro demo</h1>
<p>Model {html.escape(metrics["model"]["name"])}, injection at the output of block
{metrics["injection_layer"]}, wall time {metrics["wall_seconds"]:.1f} s.</p>
<h2>Noise control (Godet)</h2>{fig}
<h2>Summary</h2><pre>{html.escape(json.dumps(summary, indent=2))}</pre>
<h2>Detection trials (greedy replies)</h2>{_table(trials)}
</body></html>"""
