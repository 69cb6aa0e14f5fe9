"""Plotly figures of the circuit analyses, and the report section that gathers them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from mechintro.html_page import Section


def progressive_figure(df: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Detection rate against the number of top gates ablated (steered runs) and patched
    (unsteered runs), from :func:`circuits.interventions.progressive`."""
    import plotly.graph_objects as go

    fig = go.Figure()
    fig.add_scatter(x=df.k, y=df.ablated, mode="lines+markers", name="steered, top-K ablated")
    fig.add_scatter(x=df.k, y=df.patched, mode="lines+markers", name="unsteered, top-K patched")
    fig.add_hline(y=float(df.steered.iloc[0]), line_dash="dot", annotation_text="steered")
    fig.add_hline(y=float(df.unsteered.iloc[0]), line_dash="dot", annotation_text="unsteered")
    fig.update_layout(
        title=title or "Gate ablation and patching",
        xaxis_title="top-K gate features (most negative DLA first)",
        yaxis_title="detection rate (b > 0)",
        yaxis_range=[-0.05, 1.05],
        template="plotly_white",
    )
    return fig


def strength_figure(curves: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Each gate's mean activation over signed strengths, one line per feature, coloured by
    its class (:func:`circuits.gates.classify`): the inverted V of the suppressed ones."""
    import plotly.express as px

    df = curves.assign(gate=[f"L{L} #{f}" for L, f in zip(curves.layer, curves.feature)])
    df = df.sort_values(["gate", "strength"])
    color = "class" if "class" in df else None
    fig = px.line(
        df,
        x="strength",
        y="activation",
        color=color,
        line_group="gate",
        hover_name="gate",
        markers=True,
    )
    fig.update_layout(
        title=title or "Gate activations over signed strengths",
        xaxis_title="signed strength (× residual norm)",
        yaxis_title="activation at the last prompt token",
        template="plotly_white",
    )
    return fig


def verification_figure(df: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Predicted (edge weight) against measured (intervention) effect, by edge kind."""
    import plotly.express as px

    fig = px.scatter(df, x="predicted", y="measured", color="kind")
    lo = float(min(df.predicted.min(), df.measured.min()))
    hi = float(max(df.predicted.max(), df.measured.max()))
    fig.add_shape(type="line", x0=lo, y0=lo, x1=hi, y1=hi, line={"dash": "dot"})
    fig.update_layout(
        title=title or "Edges: predicted vs intervened effect",
        xaxis_title="predicted effect (edge weight)",
        yaxis_title="measured effect (intervention)",
        template="plotly_white",
    )
    return fig


def circuits_section(metrics: dict[str, Any], frames: dict[str, Any]) -> Section:
    """The report section of :func:`mechintro.organism.circuit.organism_circuits`."""
    from mechintro.plotting import Section

    abl, pat, g = metrics["gate_ablation"], metrics["gate_patching"], metrics["graph"]
    summary = (
        f"Gates (the most negative feature DLA to Yes − No per layer, unsteered; "
        f"{sum(metrics['gates_per_layer'].values())} features in layers "
        f"{', '.join(metrics['gates_per_layer'])}). Ablating them in steered runs (their "
        f"unsteered values restored) takes detection from {abl['steered']:.2f} to "
        f"{abl['ablated']:.2f} (relative drop {abl['relative_drop']:.2f}; Macar et al.: 0.29) "
        f"and leaves the 1+1=3 answer as it was in {abl['control_unchanged']:.0%} of rows; "
        f"patching their steered values into unsteered runs takes detection from "
        f"{pat['unsteered']:.2f} to {pat['patched']:.2f}. Steering graph of "
        f"'{g['concept']}': {g['n_nodes']} nodes, {g['n_edges']} edges; predicted vs "
        f"intervened edge effects correlate at r ≥ {g['edge_verification_r']:.3f} for every "
        f"kind of edge."
    )
    graph = frames["graph"].prune(max_nodes=20, max_edges=60)
    return Section(
        "Circuits: gates, carriers, the steering graph",
        [
            summary,
            progressive_figure(frames["progressive"]),
            strength_figure(frames["curves"]),
            graph.figure(title=f"Steering graph, '{g['concept']}' (pruned to 20 nodes)"),
            verification_figure(frames["verification"]),
            pd.DataFrame(
                [{"kind": k, "r": v} for k, v in g["edge_verification_r_by_kind"].items()]
            ),
        ],
    )
