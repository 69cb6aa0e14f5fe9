"""Heatmaps over layer × strength: one rate with its Wilson interval (:func:`rate_heatmap`),
Godet's beliefs for the introspection and control questions side by side on one scale
centred on 0 (:func:`belief_heatmaps`, docs/protocols.md §5) and their specificity
(:func:`specificity_heatmap`). plotly is imported inside the functions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from mechintro.plotting.labels import (
    RATE_NAMES,
    label,
    need_columns,
    plot_number,
    plot_text,
    tick_text,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go


def _grid(df: pd.DataFrame, y: str, x: str, what: str) -> tuple[list[Any], list[Any]]:
    """The sorted y and x values of ``df``, refusing two rows for one cell."""
    if df.duplicated([y, x]).any():
        raise ValueError(
            f"{what}: several rows share one ({y}, {x}) cell; filter the table to one value of "
            "its other group columns first (e.g. one protocol or question)"
        )
    return sorted(df[y].dropna().unique()), sorted(df[x].dropna().unique())


def _matrix(
    df: pd.DataFrame, y: str, x: str, cols: Sequence[str], ys: list[Any], xs: list[Any]
) -> tuple[list[list[float | None]], list[list[list[float | None]]]]:
    """``z`` (``cols[0]`` per ``ys`` × ``xs`` cell) and ``customdata`` (the other ``cols``);
    a cell without a row is a gap."""
    cells = {(r[y], r[x]): r for _, r in df.iterrows()}
    z: list[list[float | None]] = []
    custom: list[list[list[float | None]]] = []
    gap: list[float | None] = [None] * (len(cols) - 1)
    for a in ys:
        rows = [cells.get((a, b)) for b in xs]
        z.append([None if r is None else plot_number(r[cols[0]]) for r in rows])
        custom.append(
            [list(gap) if r is None else [plot_number(r[c]) for c in cols[1:]] for r in rows]
        )
    return z, custom


def _axes(fig: Any, x: str, y: str, title: str) -> Any:
    fig.update_layout(
        title=title,
        xaxis={"title": {"text": label(x)}, "type": "category"},
        yaxis={"title": {"text": label(y)}, "type": "category"},
        template="plotly_white",
    )
    return fig


def _extent(z: Sequence[Sequence[float | None]]) -> float:
    """The largest |value|, for a diverging scale symmetric about 0 (1 if there is none)."""
    return max((abs(v) for r in z for v in r if v is not None), default=0.0) or 1.0


def rate_heatmap(
    table: pd.DataFrame,
    metric: str = "tpr",
    *,
    x: str = "strength",
    y: str = "layer",
    title: str | None = None,
) -> go.Figure:
    """``metric`` over ``y`` × ``x`` from ``metrics.rates(trials, by=[y, x])``.

    Cells show the rate and ``n``; the hover adds the Wilson interval and ``k/n``. A cell
    with no graded trial is a gap.

    Example::

        rate_heatmap(rates(trials, by=["layer", "strength"], control_by=[]), "tpr")
    """
    import plotly.graph_objects as go

    cols = [metric, f"{metric}_lo", f"{metric}_hi", f"k_{metric}", f"n_{metric}"]
    need_columns(table, [y, x, *cols], "rate_heatmap", f"pass metrics.rates(by=[{y!r}, {x!r}])")
    ys, xs = _grid(table, y, x, "rate_heatmap")
    z, custom = _matrix(table, y, x, cols, ys, xs)
    text = [
        [
            "" if c[3] is None else ("" if v is None else f"{v:.2f}<br>") + f"n={c[3]:.0f}"
            for v, c in zip(zr, cr)
        ]
        for zr, cr in zip(z, custom)
    ]
    name = label(metric)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[tick_text(v) for v in xs],
            y=[tick_text(v) for v in ys],
            customdata=custom,
            text=text,
            texttemplate="%{text}",
            zmin=0.0,
            zmax=1.0,
            colorscale="Viridis",
            colorbar={"title": {"text": name}},
            hovertemplate=(
                f"{label(y)} %{{y}}, {label(x)} %{{x}}<br>{name} %{{z:.3f}}"
                " [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                "<br>k/n = %{customdata[2]}/%{customdata[3]}<extra></extra>"
            ),
        )
    )
    default = f"{RATE_NAMES.get(metric, metric)}, 95% Wilson interval in the hover"
    return _axes(fig, x, y, title or default)


def _sides(
    readouts: pd.DataFrame, question: str, introspection: str
) -> list[tuple[str, pd.DataFrame]]:
    intro = readouts[readouts[question] == introspection]
    ctrl = readouts[readouts[question] != introspection]
    out = []
    if len(intro):
        out.append((f"introspection question<br>{plot_text(label(introspection))}", intro))
    if len(ctrl):
        names = sorted(map(str, ctrl[question].unique()))
        which = label(names[0]) if len(names) == 1 else f"{len(names)} questions, pooled"
        out.append((f"control question<br>{plot_text(which)}", ctrl))
    return out


def belief_heatmaps(
    readouts: pd.DataFrame,
    *,
    value: str = "delta_b",
    question: str = "question",
    introspection: str = "introspection",
    x: str = "strength",
    y: str = "layer",
) -> go.Figure:
    """Mean ``value`` per ``y`` × ``x`` for the introspection question and the control
    question(s), side by side on one diverging colour scale centred on 0 (Godet).

    ``readouts`` has one row per readout (``metrics.add_delta_b`` output): the rows whose
    ``question`` is ``introspection`` form the left panel, every other question (pooled)
    the right one. If the control side moves as much as the introspection side, the
    injection causes generic confusion, not introspection (docs/protocols.md §5). With one kind
    of question only, there is one panel.

    Example::

        belief_heatmaps(add_delta_b(readouts, keys=["question", "layer"]))
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    need_columns(readouts, [question, y, x, value], "belief_heatmaps", "pass add_delta_b(...) rows")
    sides = _sides(readouts.dropna(subset=[value]), question, introspection)
    if not sides:
        raise ValueError(f"belief_heatmaps: no rows with a {value!r} value")
    stats = [
        part.groupby([y, x])[value].agg(["mean", "sem", "count"]).reset_index() for _, part in sides
    ]
    ys = sorted(set().union(*(set(s[y]) for s in stats)))
    xs = sorted(set().union(*(set(s[x]) for s in stats)))
    grids = [_matrix(g, y, x, ["mean", "sem", "count"], ys, xs) for g in stats]
    fig = make_subplots(
        rows=1,
        cols=len(sides),
        shared_yaxes=True,
        subplot_titles=[name for name, _ in sides],
        horizontal_spacing=0.06,
    )
    for col, (z, custom) in enumerate(grids, start=1):
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=[tick_text(v) for v in xs],
                y=[tick_text(v) for v in ys],
                customdata=custom,
                coloraxis="coloraxis",
                texttemplate="%{z:.2f}",
                hovertemplate=(
                    f"{label(y)} %{{y}}, {label(x)} %{{x}}<br>mean {label(value)} %{{z:.3f}}"
                    " ± %{customdata[0]:.3f}"
                    " (s.e.m.)<br>n = %{customdata[1]}<extra></extra>"
                ),
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text=label(x), type="category", row=1, col=col)
    fig.update_yaxes(title_text=label(y), type="category", row=1, col=1)
    extent = max(_extent(z) for z, _ in grids)
    fig.update_layout(
        title=f"mean {label(value)} under injection: introspection vs control question",
        coloraxis={
            "colorscale": "RdBu_r",
            "cmid": 0.0,
            "cmin": -extent,
            "cmax": extent,
            "colorbar": {"title": {"text": "mean Δb" if value == "delta_b" else label(value)}},
        },
        margin={"t": 120},
        template="plotly_white",
    )
    return fig


def specificity_heatmap(table: pd.DataFrame, *, x: str = "strength", y: str = "layer") -> go.Figure:
    """``specificity`` = mean Δb(introspection) − mean Δb(control) per ``y`` × ``x``, from
    ``metrics.specificity``, on a diverging scale centred on 0 (near 0: generic confusion).

    Example::

        specificity_heatmap(specificity(add_delta_b(readouts)))
    """
    import plotly.graph_objects as go

    cols = ["specificity", "specificity_lo", "specificity_hi", "n_introspection", "n_control"]
    need_columns(table, [y, x, *cols], "specificity_heatmap", "pass metrics.specificity() output")
    ys, xs = _grid(table, y, x, "specificity_heatmap")
    z, custom = _matrix(table, y, x, cols, ys, xs)
    extent = _extent(z)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[tick_text(v) for v in xs],
            y=[tick_text(v) for v in ys],
            customdata=custom,
            texttemplate="%{z:.2f}",
            colorscale="RdBu_r",
            zmid=0.0,
            zmin=-extent,
            zmax=extent,
            colorbar={"title": {"text": "specificity"}},
            hovertemplate=(
                f"{label(y)} %{{y}}, {label(x)} %{{x}}<br>specificity %{{z:.3f}}"
                " [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                "<br>n = %{customdata[2]} introspection, %{customdata[3]} control"
                "<extra></extra>"
            ),
        )
    )
    title = "specificity = Δb(introspection) − Δb(control); near 0 = generic confusion"
    return _axes(fig, x, y, title)
