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

Example::

    table = rates(trials, by=["layer", "strength"], control_by=[])
    html_report("Detection", [Section("TPR", [rate_heatmap(table, "tpr"), table])],
                path="report.html")
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd

from mechintro.html_page import Code, Section, frame_html, html_report

if TYPE_CHECKING:
    import plotly.graph_objects as go

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

#: what each rate of ``mechintro.experiments.metrics.rates`` means, for titles and hovers
RATE_NAMES: dict[str, str] = {
    "tpr": "TPR = P(claim | injected)",
    "fpr": "FPR = P(claim | control)",
    "introspection_rate": "introspection = P(claim ∧ identified | injected)",
    "identification_given_claim": "identification = P(identified | claim, injected)",
    "forced_identification_rate": "forced identification = P(identified | prefill)",
}
#: the one mapping from the identifiers in results tables (metric and column names, Godet's
#: question ids) to the labels figures, legends and summary tables show; :func:`label` reads it
LABELS: dict[str, str] = {
    "tpr": "TPR",
    "fpr": "FPR",
    "introspection_rate": "introspection",
    "identification_given_claim": "identification | claim",
    "forced_identification_rate": "forced identification",
    "identification": "identification",
    "identification_category": "identification (category)",
    "control_flip_rate": "1+1=3 answer flips",
    "b": "b = logit(Yes) − logit(No)",
    "b_variants": "b, Yes/No spellings pooled",
    "delta_b": "Δb (belief shift)",
    "delta_b_variants": "Δb (belief shift), Yes/No spellings pooled",
    "n_injected": "n injected",
    "n_control": "n controls",
    "n_errors": "grading errors",
    "trial_number": "trial",
    "train": "train concepts",
    "heldout": "held-out concepts",
    "random": "random vectors",
    # Godet's two questions (mechintro.experiments.protocols.noise): the ids that name panels
    "introspection": "“Do you detect an injected thought?”",
    "one_plus_one_is_three": "“Do you believe that 1+1=3?”",
}
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def label(key: Any) -> str:
    """The human label of an identifier (:data:`LABELS`), else the identifier itself.

    Example::

        label("delta_b")  # 'Δb (belief shift)'
    """
    return LABELS.get(str(key), str(key))


def interval_text(value: Any, lo: Any, hi: Any, digits: int = 2) -> str:
    """``value [lo, hi]`` on one line (no-break spaces, so a table cell does not wrap it);
    "–" for a missing value, the value alone without bounds.

    Example::

        interval_text(0.62, 0.514, 0.72)  # '0.62\xa0[0.51,\xa00.72]'
    """
    v, a, b = _num(value), _num(lo), _num(hi)
    if v is None:
        return "–"
    if a is None or b is None:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f}\N{NO-BREAK SPACE}[{a:.{digits}f},\N{NO-BREAK SPACE}{b:.{digits}f}]"


def _tick(v: Any) -> str:
    """A tick or legend value: 3.0 → "3", NaN → "–"."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _num(v: Any) -> float | None:
    """A number for plotly's JSON (NaN → None, a gap)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def plot_text(text: Any) -> str:
    """``text`` escaped for plotly's labels and table cells (which read a subset of HTML)."""
    return html.escape(str(text)).replace("\n", "<br>")


def _need(df: pd.DataFrame, cols: Sequence[str], what: str, hint: str) -> None:
    missing = [c for c in cols if c not in df]
    if missing:
        raise ValueError(f"{what} needs columns {missing} (has {list(df.columns)}): {hint}")


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
        z.append([None if r is None else _num(r[cols[0]]) for r in rows])
        custom.append([list(gap) if r is None else [_num(r[c]) for c in cols[1:]] for r in rows])
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
    _need(table, [y, x, *cols], "rate_heatmap", f"pass metrics.rates(by=[{y!r}, {x!r}])")
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
            x=[_tick(v) for v in xs],
            y=[_tick(v) for v in ys],
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

    _need(readouts, [question, y, x, value], "belief_heatmaps", "pass add_delta_b(...) rows")
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
                x=[_tick(v) for v in xs],
                y=[_tick(v) for v in ys],
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
    _need(table, [y, x, *cols], "specificity_heatmap", "pass metrics.specificity() output")
    ys, xs = _grid(table, y, x, "specificity_heatmap")
    z, custom = _matrix(table, y, x, cols, ys, xs)
    extent = _extent(z)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[_tick(v) for v in xs],
            y=[_tick(v) for v in ys],
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


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _interval(t: pd.DataFrame, metric: str) -> tuple[list[Any], list[Any], list[Any]]:
    """(rates, Wilson error bar above, below) of ``metric`` in ``t``'s rows (None = gap)."""
    ys = [_num(v) for v in t[metric]]
    lo = [_num(v) for v in t[f"{metric}_lo"]]
    hi = [_num(v) for v in t[f"{metric}_hi"]]
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
    _need(table, cols + ([color] if color else []), "dose_response", "pass metrics.rates()")
    groups = [(None, table)] if color is None else list(table.groupby(color, sort=True))
    fig = go.Figure()
    for i, (key, g) in enumerate(groups):
        g = g.sort_values(x)
        c = PALETTE[i % len(PALETTE)]
        name = (
            label(metric)
            if key is None
            else (label(key) if str(key) in LABELS else f"{label(color)} {_tick(key)}")
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
        fpr = _num(g["fpr"].iloc[0]) if show_fpr and metric == "tpr" and "fpr" in g else None
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
    _need(table, cols, "concept_bars", f"pass metrics.rates(by=[{concept!r}])")
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
    _need(df, columns, "examples_table", "add the missing columns (e.g. a 'grade' column)")
    part = df[columns].head(max_rows)
    cells = [[plot_text(_tick(v)) for v in part[c]] for c in columns]
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


# ---------------------------------------------------------------------------------------------
# notebook figures that travel: the interactive figure and a static image of it (docs/figures.md
# §13)

#: browsers kaleido can draw in, by executable name, tried in this order before kaleido's own
#: search (which does not know Debian's ``chromium-headless-shell``)
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
_DRAWER: list[_Drawer] = []  # the one running browser of this process, once started
_WARNED: list[str] = []


class _Drawer:
    """One kaleido browser, open in a thread of its own (its asyncio loop there), serving
    every image of the process; each call waits at most ``timeout`` seconds, so a browser
    that fails to start or hangs raises here instead of blocking the caller."""

    def __init__(self, opts: dict[str, Any], timeout: float = 120.0) -> None:
        import asyncio
        import threading

        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True, name="kaleido").start()
        try:
            self.kaleido = self._run(self._open(opts))
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise

    @staticmethod
    async def _open(opts: dict[str, Any]) -> Any:
        import kaleido

        k = kaleido.Kaleido(**opts)
        await k.open()
        return k

    def _run(self, coroutine: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(self.timeout)

    def draw(self, spec: dict[str, Any], opts: dict[str, Any]) -> bytes:
        return bytes(self._run(self.kaleido.calc_fig(spec, opts=opts)))

    def close(self) -> None:
        try:
            self._run(self.kaleido.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)


def _drawer() -> _Drawer:
    """The process's browser, started on first use (stopped at exit): plotly.js from the
    installed plotly package and no MathJax, so the page fetches nothing from the network."""
    import atexit
    import shutil
    from pathlib import Path

    if _DRAWER:
        return _DRAWER[0]
    try:
        import kaleido  # noqa: F401
        import plotly
    except ImportError as e:
        raise RuntimeError(
            "static images need kaleido >= 1: pip install 'kaleido>=1' (docs/figures.md §13)"
        ) from e
    js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    opts: dict[str, Any] = {"plotlyjs": str(js), "mathjax": False, "n": 1}
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser:
        opts["path"] = browser
    try:
        drawer = _Drawer(opts)
    except Exception as e:  # kaleido's ChromeNotFoundError, a browser that does not start
        raise RuntimeError(
            f"kaleido could not start a browser to draw in ({type(e).__name__}: {e}); "
            "install a headless Chromium (Debian/Ubuntu: apt-get install "
            "chromium-headless-shell; elsewhere: plotly_get_chrome), see docs/figures.md §13"
        ) from e
    atexit.register(drawer.close)
    _DRAWER.append(drawer)
    return drawer


def _spec(fig: go.Figure | dict[str, Any]) -> dict[str, Any]:
    return fig if isinstance(fig, dict) else fig.to_dict()


def static_image(
    fig: go.Figure | dict[str, Any],
    format: str = "png",
    *,
    width: int | None = None,
    height: int | None = None,
    scale: float = 1.0,
) -> bytes:
    """``fig`` drawn as a PNG or SVG by plotly.js itself, offline, in a headless Chromium
    (kaleido); the size is the figure's own or plotly's default (700 × 500).

    The browser starts with the first image (about 2 s) and serves every later one (about
    0.2 s). Raises a ``RuntimeError`` naming the install step if kaleido or a browser is
    missing.

    Example::

        Path("tpr.png").write_bytes(static_image(dose_response(table, "tpr")))
    """
    import plotly.io as pio

    if format not in ("png", "svg"):
        raise ValueError(f"format must be 'png' or 'svg', got {format!r}")
    spec = _spec(fig)
    layout = spec.get("layout", {})
    opts = {
        "format": format,
        "width": width or layout.get("width") or pio.defaults.default_width,
        "height": height or layout.get("height") or pio.defaults.default_height,
        "scale": scale,
    }
    return _drawer().draw(spec, opts)


def figure_bundle(fig: go.Figure | dict[str, Any], format: str = "png") -> dict[str, Any]:
    """The display bundle of ``fig`` for a notebook: the interactive plotly figure
    (``application/vnd.plotly.v1+json``, drawn by JupyterLab, Notebook 7 and VS Code), a
    static image of it (``image/png`` or ``image/svg+xml``, what nbconvert's HTML and GitHub
    show) and a one-line text. Without kaleido or a browser the image is left out and a
    warning saying how to install them is logged once.
    """
    import base64
    import json
    import logging

    import plotly.io as pio

    spec = _spec(fig)
    title = (spec.get("layout", {}).get("title") or {}).get("text") or "figure"
    bundle: dict[str, Any] = {
        "application/vnd.plotly.v1+json": json.loads(pio.to_json(spec, validate=False)),
        "text/plain": f"<plotly figure: {title}>",
    }
    try:
        image = static_image(spec, format)
    except RuntimeError as e:
        if not _WARNED:
            _WARNED.append(str(e))
            logging.getLogger(__name__).warning("figures shown without a static image: %s", e)
        return bundle
    if format == "png":
        bundle["image/png"] = base64.b64encode(image).decode("ascii")
    else:
        bundle["image/svg+xml"] = image.decode("utf-8")
    return bundle


def show(fig: go.Figure, format: str = "png") -> None:
    """Display ``fig`` in a notebook with a static image beside it (:func:`figure_bundle`).

    Example::

        show(dose_response(table, "tpr"))
    """
    from IPython.display import display

    display(figure_bundle(fig, format), raw=True)


def use_static_images(format: str = "png") -> None:
    """From now on, every plotly figure a notebook cell shows (``fig`` as a cell's last line,
    ``fig.show()``, plotly express) carries a static image too (:func:`figure_bundle`):
    registers plotly renderer ``"mechintro"`` and makes it the default. Call it once, at the
    top of a notebook.

    Example::

        from mechintro.plotting import use_static_images
        use_static_images()
    """
    import plotly.io as pio
    from plotly.io.base_renderers import MimetypeRenderer

    class _Renderer(MimetypeRenderer):
        def to_mimebundle(self, fig_dict: dict[str, Any]) -> dict[str, Any]:
            return figure_bundle(fig_dict, format)

    pio.renderers["mechintro"] = _Renderer()
    pio.renderers.default = "mechintro"
