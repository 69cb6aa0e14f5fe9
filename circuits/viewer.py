"""Show an attribution graph: a plotly figure, and the files circuit-tracer's viewer reads.

**Figure** (:func:`figure`): one column per layer (inputs at -1, logits at ``n_layers``), in
each column the nodes by role (concept, carriers, gates, other, errors, logits) then feature
index; edges as lines, blue for positive and red for negative weights, thicker and more opaque
as ``|weight|`` grows (four bins of ``|weight| / max |weight|``); hovering a node shows its
label and numbers, hovering an edge's midpoint its weight.

**Viewer files** (:func:`to_viewer_json`): the graph JSON of circuit-tracer's frontend (Hanna
& Piotrowski, derived from Anthropic's attribution-graphs frontend), matched field for field
against ``circuit_tracer/frontend/graph_models.py`` (pydantic ``Metadata``, ``QParams``,
``Node``, ``Link``, ``Model``; safety-research/circuit-tracer at 196e2ce and 21ab88a),
``circuit_tracer/utils/create_graph_files.py`` (decoderesearch/circuit-tracer at 2f8eb2b),
``circuit_tracer/frontend/utils.py`` ``add_graph_metadata`` (read in the vibhusapra fork at
8b6d10a) and ``circuit_tracer/frontend/local_server.py`` (decoderesearch at 7683107); the
reading side was checked in the frontend's ``util-cg.js`` ``formatData``:

* ``{"metadata", "qParams", "nodes", "links"}``; links are ``{source, target, weight}`` by
  ``node_id``;
* node ids as circuit-tracer writes them: feature ``"{layer}_{feature}_{pos}"`` (its
  ``feature`` field is the Cantor pairing of layer and index, which the frontend unpairs),
  error ``"{layer}_-1_{pos}"``, embedding ``"E_{token}_{pos}"`` (the concept vector, not a
  token, gets token -1), logit ``"{n_layers + 1}_{token}_{pos}"``; a logit node whose
  ``feature`` is None (the Yes − No gap is not one token) gets circuit-tracer's virtual index
  ``vocab_size + k`` when ``metadata["vocab_size"]`` is known, else ``-1 - k``;
* ``jsNodeId`` = ``node_id``, the pydantic model's own default: circuit-tracer's own
  ``"{layer}_{feature}-0"`` merges one feature's nodes at different positions, and the
  frontend keys ``pinnedIds``, ``supernodes`` and ``clickedId`` by ``jsNodeId`` (Neuronpedia
  by ``node_id``), so equal ids serve both;
* a position of -1 (summed over positions) is shown at the last prompt token;
* the logit's ``clerp`` must read ``Output "…" (p=…)``: the frontend parses both parts.
  ``token_prob`` is 0 (a logit gap has no probability);
* roles survive as ``clerp`` text (``"gate L4 #123: label"``), as ``qParams.supernodes``
  (``[["gates", id, ...], ["evidence carriers", id, ...]]``, the frontend's
  ``[label, *node ids]``), and in ``pinnedIds`` (concept, carriers, gates, root);
  ``clickedId`` is the root. The frontend replaces the clerp of embedding and error nodes with
  ``Emb: "token"`` / ``Err: mlp "token"``;
* ``metadata`` has the model's fields (``slug``, ``scan``, ``transcoder_list``,
  ``prompt_tokens``, ``prompt``, ``node_threshold``, ``schema_version`` = 1), plus ``info``
  (the generator) and ``mechintro`` (our metadata) as extra keys, which the viewer ignores;
  ``graph-metadata.json`` is ``{"graphs": [metadata, ...]}`` with the model's fields only, one
  entry per slug, as ``add_graph_metadata`` writes it.

Serve the folder with ``circuit_tracer.frontend.local_server.serve(data_dir=path)``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechintro.io import atomic_write_text
from mechintro.plotting import plot_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from circuits.graph import AttributionGraph, Node

ROLE_ORDER = ("concept", "carrier", "gate", "other", "error", "logit")
"""Top-to-bottom order of the roles inside a layer's column."""
ROLE_COLOURS = {
    "concept": "#9467bd",
    "carrier": "#ff7f0e",
    "gate": "#d62728",
    "other": "#7f7f7f",
    "error": "#bcbd22",
    "logit": "#2ca02c",
}
ROLE_GROUPS = {"gate": "gates", "carrier": "evidence carriers"}
"""Roles that become a supernode in the viewer, and the supernode's label."""
FEATURE_TYPES = {
    "feature": "cross layer transcoder",
    "error": "mlp reconstruction error",
    "concept": "embedding",
    "embedding": "embedding",
    "logit": "logit",
}
"""Our node kind → circuit-tracer's ``feature_type``."""
METADATA_KEYS = (
    "slug",
    "scan",
    "transcoder_list",
    "prompt_tokens",
    "prompt",
    "node_threshold",
    "schema_version",
)
"""The fields of circuit-tracer's ``Metadata`` model, the ones ``graph-metadata.json`` lists."""
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_POS, _NEG = "#1f77b4", "#d62728"


def _layout(graph: AttributionGraph) -> dict[str, tuple[float, float]]:
    """Node id → (x, y): x the layer, y the rank inside the layer (centred on 0)."""
    columns: dict[int, list[Node]] = {}
    for n in graph.nodes:
        columns.setdefault(n.layer, []).append(n)
    pos: dict[str, tuple[float, float]] = {}
    for layer, col in columns.items():
        col.sort(
            key=lambda n: (
                ROLE_ORDER.index(n.role),
                -1 if n.feature is None else n.feature,
                n.position,
            )
        )
        for k, n in enumerate(col):
            pos[n.id] = (float(layer), (len(col) - 1) / 2 - k)
    return pos


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.4g}"


def _hover(n: Node) -> str:
    where = f"{n.kind} · layer {n.layer} · " + (
        "all positions" if n.position < 0 else f"pos {n.position}"
    )
    feature = "" if n.feature is None else f" · #{n.feature}"
    return "<br>".join(
        [
            f"<b>{plot_text(n.label or n.id)}</b>",
            f"{plot_text(n.id)} ({n.role})",
            where + feature,
            f"activation {_fmt(n.activation)} · influence {_fmt(n.influence)}",
        ]
    )


def figure(graph: AttributionGraph, title: str | None = None) -> go.Figure:
    """The graph as a plotly figure (module docstring); node traces, one per role, carry the
    node ids in ``customdata``."""
    import plotly.graph_objects as go

    xy = _layout(graph)
    fig = go.Figure()
    top = max((abs(e.weight) for e in graph.edges), default=0.0) or 1.0
    bins: dict[tuple[bool, int], tuple[list[float | None], list[float | None]]] = {}
    mid_x, mid_y, mid_text = [], [], []
    for e in graph.edges:
        (x0, y0), (x1, y1) = xy[e.source], xy[e.target]
        xs, ys = bins.setdefault((e.weight >= 0, min(3, int(4 * abs(e.weight) / top))), ([], []))
        xs += [x0, x1, None]
        ys += [y0, y1, None]
        mid_x.append((x0 + x1) / 2)
        mid_y.append((y0 + y1) / 2)
        mid_text.append(f"{plot_text(e.source)} → {plot_text(e.target)}<br>weight {e.weight:+.4g}")
    for (positive, b), (xs, ys) in sorted(bins.items()):
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"color": _POS if positive else _NEG, "width": 1 + 1.5 * b},
                opacity=0.3 + 0.2 * b,
                hoverinfo="skip",
                showlegend=False,
                name=f"{'+' if positive else '−'} edges, bin {b}",
            )
        )
    if mid_x:
        fig.add_trace(
            go.Scatter(
                x=mid_x,
                y=mid_y,
                mode="markers",
                marker={"size": 8, "opacity": 0},
                text=mid_text,
                hovertemplate="%{text}<extra></extra>",
                showlegend=False,
                name="edge weights",
            )
        )
    for role in ROLE_ORDER:
        nodes = [n for n in graph.nodes if n.role == role]
        if nodes:
            fig.add_trace(
                go.Scatter(
                    x=[xy[n.id][0] for n in nodes],
                    y=[xy[n.id][1] for n in nodes],
                    mode="markers",
                    marker={"size": 13, "color": ROLE_COLOURS[role], "line": {"width": 1}},
                    customdata=[n.id for n in nodes],
                    hovertext=[_hover(n) for n in nodes],
                    hoverinfo="text",
                    name=role,
                )
            )
    layers = sorted({n.layer for n in graph.nodes})
    names = {n.layer: "input" for n in graph.nodes if n.kind in ("concept", "embedding")}
    names.update({n.layer: "logit" for n in graph.nodes if n.kind == "logit"})
    fig.update_layout(
        title=title or graph.metadata.get("root_metric", "attribution graph"),
        template="plotly_white",
        xaxis={
            "title": {"text": "layer"},
            "tickvals": layers,
            "ticktext": [names.get(x, f"L{x}") for x in layers],
        },
        yaxis={"showticklabels": False, "zeroline": False},
    )
    return fig


def _json_num(x: float | None) -> float | None:
    """A number for strict JSON (the browser's ``JSON.parse`` refuses NaN)."""
    return None if x is None or not math.isfinite(x) else x


def _strict(x: Any) -> Any:
    """``x`` with every non-finite float replaced by None, recursively."""
    if isinstance(x, float):
        return _json_num(x)
    if isinstance(x, dict):
        return {str(k): _strict(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_strict(v) for v in x]
    return x


def _cantor(x: int, y: int) -> int:
    return (x + y) * (x + y + 1) // 2 + y


def _clerp(n: Node) -> str:
    if n.kind == "feature":
        head = f"{n.role if n.role != 'other' else 'feature'} L{n.layer} #{n.feature}"
        return f"{head}: {n.label}" if n.label else head
    if n.kind == "error":
        return f"error L{n.layer}"
    return f"{n.role}: {n.label}" if n.label else n.role


def _viewer_node(n: Node, ctx: int, token: int, target: bool) -> dict[str, Any]:
    """One node in circuit-tracer's ``Node`` fields (graph_models.py)."""
    if n.kind == "feature":
        if n.feature is None:
            raise ValueError(f"feature node {n.id!r} has no feature index")
        node_id, feature, layer = (
            f"{n.layer}_{n.feature}_{ctx}",
            _cantor(n.layer, n.feature),
            str(n.layer),
        )
    elif n.kind == "error":
        node_id, feature, layer = f"{n.layer}_-1_{ctx}", -1, str(n.layer)
    elif n.kind == "logit":
        node_id, feature, layer = f"{n.layer + 1}_{token}_{ctx}", token, str(n.layer + 1)
    else:
        node_id, feature, layer = f"E_{token}_{ctx}", ctx, "E"
    if n.kind == "logit":
        word = (n.label or n.id).replace('"', "'").replace("(p=", "(p =")
        clerp = f'Output "{word}" (p={0.0:.3f})'
    else:
        clerp = _clerp(n)
    return {
        "node_id": node_id,
        "feature": feature,
        "layer": layer,
        "ctx_idx": ctx,
        "feature_type": FEATURE_TYPES[n.kind],
        "token_prob": 0.0,
        "is_target_logit": target,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": node_id,
        "clerp": clerp,
        "influence": _json_num(n.influence),
        "activation": _json_num(n.activation) if n.kind == "feature" else None,
    }


def viewer_dict(
    graph: AttributionGraph,
    slug: str,
    scan: str | None = None,
    node_threshold: float | None = None,
) -> dict[str, Any]:
    """The graph as circuit-tracer's ``Model`` (``metadata``, ``qParams``, ``nodes``,
    ``links``), strict-JSON ready.

    Args:
        graph: Needs ``metadata["tokens"]`` (one string per prompt position).
        slug: The graph's name in the viewer (letters, digits, ``.``, ``_``, ``-``).
        scan: The transcoder set's name in the viewer (it looks feature examples up by it);
            default ``metadata["scan"]``, else ``metadata["model"]``, else "".
        node_threshold: Recorded in the metadata (the viewer shows it), e.g. the pruning's.

    Raises:
        ValueError: A bad slug, no tokens, a position past the prompt, a feature node without
            a feature index, or two of our nodes that land on one viewer id.
    """
    if not _SLUG.fullmatch(slug):
        raise ValueError(f"slug {slug!r}: use letters, digits, '.', '_', '-' (it names a file)")
    meta = graph.metadata
    tokens = [str(t) for t in meta.get("tokens") or meta.get("prompt_tokens") or []]
    if not tokens:
        raise ValueError("the viewer needs metadata['tokens'], one string per prompt position")
    vocab = meta.get("vocab_size")
    ids: dict[str, str] = {}
    nodes, k_virtual = [], 0
    for n in graph.nodes:
        if n.position >= len(tokens):
            raise ValueError(f"node {n.id!r}: position {n.position} past the {len(tokens)} tokens")
        if n.kind == "logit" and n.feature is None:
            token = vocab + k_virtual if vocab is not None else -1 - k_virtual
            k_virtual += 1
        else:
            token = -1 if n.feature is None else n.feature
        ctx = n.position if n.position >= 0 else len(tokens) - 1
        v = _viewer_node(n, ctx, token, target=n.id == graph.root_id)
        if v["node_id"] in ids.values():
            other = next(i for i, j in ids.items() if j == v["node_id"])
            raise ValueError(
                f"nodes {other!r} and {n.id!r} are both {v['node_id']!r} in the viewer"
            )
        ids[n.id] = v["node_id"]
        nodes.append(v)
    links = [
        {"source": ids[e.source], "target": ids[e.target], "weight": e.weight} for e in graph.edges
    ]
    groups = [
        [label, *(ids[n.id] for n in graph.nodes if n.role == role)]
        for role, label in ROLE_GROUPS.items()
        if any(n.role == role for n in graph.nodes)
    ]
    pinned = [ids[n.id] for n in graph.nodes if n.role in ("concept", "carrier", "gate")]
    if ids[graph.root_id] not in pinned:
        pinned.append(ids[graph.root_id])
    default_scan = meta.get("scan") or meta.get("model") or ""
    metadata = {
        "slug": slug,
        "scan": str(scan if scan is not None else default_scan),
        "transcoder_list": [str(t) for t in meta.get("transcoder_list", [])],
        "prompt_tokens": tokens,
        "prompt": str(meta.get("prompt", "".join(tokens))),
        "node_threshold": None if node_threshold is None else float(node_threshold),
        "schema_version": 1,
        "info": {"generator": {"name": "mechintro circuits.viewer"}},
        "mechintro": _strict(meta),
    }
    q_params = {
        "pinnedIds": pinned,
        "supernodes": groups,
        "linkType": "both",
        "clickedId": ids[graph.root_id],
        "sg_pos": "",
    }
    return {"metadata": metadata, "qParams": q_params, "nodes": nodes, "links": links}


def to_viewer_json(
    graph: AttributionGraph,
    path: str | Path,
    slug: str,
    scan: str | None = None,
    node_threshold: float | None = None,
) -> Path:
    """Write ``path/{slug}.json`` (:func:`viewer_dict`) and put its metadata in
    ``path/graph-metadata.json`` (replacing an entry of the same slug), both atomically.

    Returns:
        The graph file's path.
    """
    data = viewer_dict(graph, slug, scan=scan, node_threshold=node_threshold)
    folder = Path(path)
    out = atomic_write_text(folder / f"{slug}.json", json.dumps(data, indent=1, allow_nan=False))
    index_path = folder / "graph-metadata.json"
    index = (
        json.loads(index_path.read_text(encoding="utf-8"))
        if index_path.exists()
        else {"graphs": []}
    )
    entry = {k: data["metadata"][k] for k in METADATA_KEYS}
    index["graphs"] = [g for g in index.get("graphs", []) if g.get("slug") != slug] + [entry]
    atomic_write_text(index_path, json.dumps(index, indent=2, allow_nan=False))
    return out
