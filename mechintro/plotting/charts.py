"""Rates as curves and bars, replies as a table: a rate against strength, one line per
layer (or organism, model...) with its Wilson interval (:func:`dose_response`), a rate per
concept (:func:`concept_bars`) and example replies with their grades (:func:`examples_table`).
plotly is imported inside the functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from mechintro.plotting.labels import (
    LABELS,
    PALETTE,
    RATE_NAMES,
    label,
    need_columns,
    plot_number,
    plot_text,
    tick_text,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _interval(t: pd.DataFrame, metric: str) -> tuple[list[Any], list[Any], list[Any]]:
    """(rates, Wilson error bar above, below) of ``metric`` in ``t``'s rows (None = gap)."""
    ys = [plot_number(v) for v in t[metric]]
    lo = [plot_number(v) for v in t[f"{metric}_lo"]]
    hi = [plot_number(v) for v in t[f"{metric}_hi"]]
    up = [None if h is None or v is None else h - v for h, v in zip(hi, ys)]
    down = [None if lw is None or v is None else v - lw for lw, v in zip(lo, ys)]
    return ys, up, down


def _rate_hover(metric: str, head: str) -> str:
    name = label(metric)
    return (
        f"{head}<br>{name} %{{y:.3f}} [%{{customdata[0]:.3f}}, %{{customdata[1]:.3f}}]"
        "<br>k/n = %{customdata[2]}/%{customdata[3]}<extra></extra>"
    )


def dose_response(
    table: pd.DataFrame,
    metric: str = "tpr",
    *,
    x: str = "strength",
    color: str | None = "layer",
    interval: str = "band",
    show_fpr: bool = True,
) -> go.Figure:
    """``metric`` against ``x``, one line per value of ``color`` (layer, organism, model...),
    with the Wilson interval as a shaded band (``interval="band"``) or error bars
    (``"bars"``). With ``show_fpr`` and ``metric="tpr"``, each line's FPR (that of the
    controls matched to it) is drawn as a dashed level in its colour.

    Example::

        dose_response(rates(trials, by=["layer", "strength"], control_by=[]), "tpr")
    """
    import plotly.graph_objects as go

    if interval not in ("band", "bars"):
        raise ValueError(f"interval must be 'band' or 'bars', got {interval!r}")
    cols = [x, metric, f"{metric}_lo", f"{metric}_hi", f"k_{metric}", f"n_{metric}"]
    need_columns(table, cols + ([color] if color else []), "dose_response", "pass metrics.rates()")
    groups = [(None, table)] if color is None else list(table.groupby(color, sort=True))
    fig = go.Figure()
    for i, (key, g) in enumerate(groups):
        g = g.sort_values(x)
        c = PALETTE[i % len(PALETTE)]
        name = (
            label(metric)
            if key is None
            else (label(key) if str(key) in LABELS else f"{label(color)} {tick_text(key)}")
        )
        xs = [float(v) for v in g[x]]
        ys, up, down = _interval(g, metric)
        custom = g[[f"{metric}_lo", f"{metric}_hi", f"k_{metric}", f"n_{metric}"]]
        line = dict(name=name, legendgroup=name, line={"color": c})
        if interval == "band":
            ok = [(a, v + u, v - d) for a, v, u, d in zip(xs, ys, up, down) if u is not None]
            fig.add_scatter(
                x=[a for a, _, _ in ok] + [a for a, _, _ in ok][::-1],
                y=[h for _, h, _ in ok] + [lw for _, _, lw in ok][::-1],
                fill="toself",
                fillcolor=_rgba(c, 0.15),
                mode="lines",
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                legendgroup=name,
                name=f"{name} interval",
            )
        errors = {"type": "data", "array": up, "arrayminus": down}
        fig.add_scatter(
            x=xs,
            y=ys,
            mode="lines+markers",
            customdata=custom.to_numpy(float).tolist(),
            hovertemplate=_rate_hover(metric, f"{name}, {x} %{{x}}"),
            error_y=errors if interval == "bars" else None,
            **line,
        )
        fpr = plot_number(g["fpr"].iloc[0]) if show_fpr and metric == "tpr" and "fpr" in g else None
        if fpr is not None and xs:
            fig.add_scatter(
                x=[min(xs), max(xs)],
                y=[fpr, fpr],
                mode="lines",
                line={"dash": "dash", "color": c},
                name=f"FPR, {name}",
                legendgroup=name,
                hovertemplate=f"FPR of the controls {fpr:.3f}<extra></extra>",
            )
    fig.update_layout(
        title=f"{RATE_NAMES.get(metric, metric)} against {label(x)} (95% Wilson interval)",
        xaxis_title=label(x),
        yaxis={"title": {"text": label(metric)}, "range": [-0.02, 1.02]},
        template="plotly_white",
    )
    return fig


def concept_bars(
    table: pd.DataFrame, metric: str = "tpr", *, concept: str = "concept", descending: bool = True
) -> go.Figure:
    """``metric`` per concept with its Wilson interval, sorted (ungraded concepts last).

    Example::

        concept_bars(rates(trials, by=["concept"], control_by=[]), "introspection_rate")
    """
    import plotly.graph_objects as go

    cols = [concept, metric, f"{metric}_lo", f"{metric}_hi", f"k_{metric}", f"n_{metric}"]
    need_columns(table, cols, "concept_bars", f"pass metrics.rates(by=[{concept!r}])")
    if table[concept].duplicated().any():
        raise ValueError("concept_bars: a concept has several rows; group by the concept alone")
    t = table.assign(_v=table[metric].astype(float))
    t = t.sort_values("_v", ascending=not descending, na_position="last", kind="stable")
    ys, up, down = _interval(t, metric)
    custom = t[[f"{metric}_lo", f"{metric}_hi", f"k_{metric}", f"n_{metric}"]]
    fig = go.Figure(
        go.Bar(
            x=[plot_text(c) for c in t[concept]],
            y=ys,
            marker_color=PALETTE[0],
            error_y={"type": "data", "array": up, "arrayminus": down},
            customdata=custom.to_numpy(float).tolist(),
            hovertemplate=_rate_hover(metric, "%{x}"),
        )
    )
    fig.update_layout(
        title=f"{RATE_NAMES.get(metric, metric)} per concept (95% Wilson interval)",
        xaxis={"title": {"text": label(concept)}, "type": "category"},
        yaxis={"title": {"text": label(metric)}, "range": [0, 1.05]},
        template="plotly_white",
    )
    return fig


def examples_table(
    df: pd.DataFrame,
    columns: Sequence[str] = ("concept", "strength", "reply", "grade"),
    *,
    max_rows: int = 50,
    title: str = "Example replies",
) -> go.Figure:
    """A table figure of ``columns`` for the first ``max_rows`` rows, text HTML-escaped (a
    reply that contains ``<b>`` shows ``<b>``, not bold text).

    Example::

        examples_table(trials.assign(grade=trials.detection), max_rows=20)
    """
    import plotly.graph_objects as go

    columns = list(columns)
    need_columns(df, columns, "examples_table", "add the missing columns (e.g. a 'grade' column)")
    part = df[columns].head(max_rows)
    cells = [[plot_text(tick_text(v)) for v in part[c]] for c in columns]
    widths = [6 if c == "reply" else 1 for c in columns]
    fig = go.Figure(
        go.Table(
            columnwidth=widths,
            header={"values": [f"<b>{plot_text(label(c))}</b>" for c in columns], "align": "left"},
            cells={"values": cells, "align": "left"},
        )
    )
    shown = f"{len(part)} of {len(df)}" if len(df) > len(part) else str(len(part))
    fig.update_layout(
        title=f"{plot_text(title)} ({shown} rows)",
        height=min(1400, 160 + 70 * len(part)),
        template="plotly_white",
    )
    return fig
