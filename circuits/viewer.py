"""Show an attribution graph: a plotly figure, and the files a graph viewer reads.

**Figure** (:func:`figure`): one column per layer (inputs at -1, logits at ``n_layers``), in
each column the nodes by role (concept, carriers, gates, other, errors, logits) then feature
index; edges as lines, blue for positive and red for negative weights, thicker and more opaque
as ``|weight|`` grows (four bins of ``|weight| / max |weight|``); hovering a node shows its
label and numbers, hovering an edge's midpoint its weight.

**Viewer files** (:func:`to_viewer_json`): a folder that mechintro's own viewer
(``mechintro viewer DIR``, :mod:`circuits.viewer_server`) and circuit-tracer's frontend
(Hanna & Piotrowski, derived from Anthropic's attribution-graphs frontend) both read. The
graph JSON follows circuit-tracer's pydantic models field for field
(``circuit_tracer/frontend/graph_models.py`` ``Metadata``, ``QParams``, ``Node``; the
``circuit-tracer`` 0.5.0 wheel and safety-research/circuit-tracer at 21ab88a), written as its
``utils/create_graph_files.py`` writes them and read as its ``util-cg.js`` ``formatData`` and
``init-feature-examples.js`` ``loadFeature`` read them:

* ``{"metadata", "qParams", "nodes", "links"}``; links are ``{source, target, weight}`` by
  ``node_id``;
* ``metadata.prompt_tokens`` are the decoded tokens (``metadata["prompt_tokens"]`` of the
  graph, else its ``tokens``) and ``metadata.prompt`` the decoded prompt;
* node ids as circuit-tracer writes them: feature ``"{layer}_{feature}_{pos}"`` (its
  ``feature`` field is the Cantor pairing of layer and index, which the frontend unpairs,
  ``schema_version`` 1), error ``"{layer}_-1_{pos}"``, embedding ``"E_{token}_{pos}"``, logit
  ``"{n_layers + 1}_{token}_{pos}"`` with the node's token id and ``token_prob`` its
  probability (:attr:`Node.probability`); a logit node without a token (a logit difference)
  gets circuit-tracer's virtual index ``vocab_size + k`` (``metadata["vocab_size"]``; ``-1 -
  k`` when unknown);
* the injected concept is not a token: it is a ``"steering vector"`` node at the injection
  layer (``metadata["injection_layer"]``, else ``"E"``), id ``"{layer}_concept_{pos}"``, so
  the frontend keeps its own text (it rewrites an embedding node's as ``Emb: "token"``);
* ``influence`` is circuit-tracer's cumulative influence in [0, 1]
  (:func:`cumulative_influence`), what its frontend's pruning threshold compares; our signed
  node influence stays under each node's extra key ``mechintro`` (with our id, kind, role and
  label), which circuit-tracer ignores;
* ``jsNodeId`` = ``node_id``, the pydantic model's own default (the frontend keys pins,
  supernodes and the clicked node by it);
* a position of -1 (summed over positions) is shown at the last prompt token;
* roles survive as ``clerp`` text (``"gate L4 #123: label"``), as ``qParams.supernodes``
  (``[["gates", id, ...], ["evidence carriers", id, ...]]``, the frontend's
  ``[label, *node ids]``) and in ``pinnedIds``; ``clickedId`` is the root. circuit-tracer's
  frontend reads supernodes only from its URL (``?supernodes=`` with that JSON); mechintro's
  viewer opens with them drawn;
* ``metadata.scan`` is ``"custom-{name}"`` and ``transcoder_list[layer]`` the folder of that
  layer's feature files, ``./data/features/L{layer}`` (circuit-tracer's per-layer transcoder
  list; the frontend fetches ``{transcoder_list[layer]}/{feature}.json``, ``./data/`` being the
  folder served); each file is circuit-tracer's feature model (:class:`FeatureExamples`);
* ``graph-metadata.json`` is ``{"graphs": [metadata, ...]}`` with the ``Metadata`` fields
  only, one entry per slug, as ``add_graph_metadata`` writes it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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
    "concept": "steering vector",
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
FEATURES_DIR = "features"
"""The feature files' folder inside a viewer folder."""
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


def _tag(n: Node) -> str:
    """A node's name beside it in the figure: the feature (``L4 #689``), else its label."""
    if n.kind == "feature":
        return f"L{n.layer} #{n.feature}"
    if n.kind == "error":
        return f"error L{n.layer}"
    return plot_text(n.label or n.id)


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
                    mode="markers+text",
                    marker={"size": 13, "color": ROLE_COLOURS[role], "line": {"width": 1}},
                    text=[_tag(n) for n in nodes],
                    textposition="top center",
                    cliponaxis=False,
                    textfont={"size": 10},
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


def cumulative_influence(graph: AttributionGraph) -> dict[str, float]:
    """circuit-tracer's ``influence`` of every node, in [0, 1] (its ``prune_graph``).

    A node's influence is its share of the root through all paths, :meth:`AttributionGraph.flow`
    (0 for a logit node, the root included: nothing downstream depends on it). Nodes are
    sorted by it, largest first (ties in the graph's order), and each gets the running sum of
    the sorted influences divided by their total: the most influential node gets its own
    share, the least ones 1. Keeping the nodes whose value is at most ``t`` keeps the smallest
    set that carries a fraction ``t`` of the total influence, which is what the frontend's
    pruning threshold does.
    """
    flow = graph.flow()
    for n in graph.nodes:  # the logits: nothing downstream depends on them
        if n.kind == "logit":
            flow[n.id] = 0.0
    order = sorted(range(graph.n_nodes), key=lambda k: (-flow[graph.nodes[k].id], k))
    total = sum(flow.values())
    out: dict[str, float] = {}
    running = 0.0
    for k in order:
        node_id = graph.nodes[k].id
        running += flow[node_id]
        out[node_id] = running / total if total > 0 else 1.0
    return out


def _clerp(n: Node, meta: dict[str, Any]) -> str:
    if n.kind == "feature":
        head = f"{n.role if n.role != 'other' else 'feature'} L{n.layer} #{n.feature}"
        return f"{head}: {n.label}" if n.label else head
    if n.kind == "error":
        return f"error L{n.layer}: {n.label}" if n.label else f"error L{n.layer}"
    if n.kind == "logit":
        word = (n.label or n.id).replace('"', "'").replace("(p=", "(p =")
        return f'Output "{word}" (p={n.probability or 0.0:.3f})'
    if n.kind == "concept":
        where = meta.get("injection_layer")
        at = f" added at block {where}'s output" if where is not None else ""
        strength = meta.get("strength")
        finite = isinstance(strength, int | float) and math.isfinite(strength)
        times = f", strength {strength:g}" if finite else ""
        return f'Concept vector "{n.label or n.id}"{at}{times}'
    return n.label


def _viewer_node(
    n: Node, ctx: int, token: int, target: bool, meta: dict[str, Any]
) -> dict[str, Any]:
    """One node in circuit-tracer's ``Node`` fields (graph_models.py), ``influence`` left for
    the caller, and ours under ``mechintro``."""
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
    elif n.kind == "concept":
        at = meta.get("injection_layer")
        layer = "E" if at is None else str(int(at))
        node_id, feature = f"{layer}_concept_{ctx}", -1
    else:
        node_id, feature, layer = f"E_{token}_{ctx}", ctx, "E"
    return {
        "node_id": node_id,
        "feature": feature,
        "layer": layer,
        "ctx_idx": ctx,
        "feature_type": FEATURE_TYPES[n.kind],
        "token_prob": _json_num(n.probability) or 0.0,
        "is_target_logit": target,
        "run_idx": 0,
        "reverse_ctx_idx": 0,
        "jsNodeId": node_id,
        "clerp": _clerp(n, meta),
        "influence": None,
        "activation": _json_num(n.activation) if n.kind == "feature" else None,
        "mechintro": {
            "id": n.id,
            "kind": n.kind,
            "role": n.role,
            "label": n.label,
            "position": n.position,
            "influence": _json_num(n.influence),
        },
    }


def feature_folder(layer: int) -> str:
    """Where a layer's feature files lie, as the viewers fetch them (``./data/`` is the folder
    ``graph-metadata.json`` is in): ``./data/features/L{layer}``."""
    return f"./data/{FEATURES_DIR}/L{layer}"


def viewer_dict(
    graph: AttributionGraph,
    slug: str,
    scan: str | None = None,
    node_threshold: float | None = None,
) -> dict[str, Any]:
    """The graph as circuit-tracer's ``Model`` (``metadata``, ``qParams``, ``nodes``,
    ``links``), strict-JSON ready (module docstring).

    Args:
        graph: Needs ``metadata["prompt_tokens"]`` (decoded, one string per prompt position)
            or ``metadata["tokens"]``; ``metadata["prompt"]`` (the decoded prompt) is used when
            given, else the tokens joined.
        slug: The graph's name in the viewer (letters, digits, ``.``, ``_``, ``-``).
        scan: The transcoder set's name; written as ``"custom-{scan}"``, circuit-tracer's mark
            of a per-layer transcoder list (default ``metadata["scan"]``, else
            ``metadata["model"]``, else "transcoders").
        node_threshold: Written to the metadata; circuit-tracer's frontend then hides the
            nodes whose cumulative influence is above it.

    Raises:
        ValueError: A bad slug, no tokens, a position past the prompt, a feature node without
            a feature index, or two of our nodes that land on one viewer id.
    """
    if not _SLUG.fullmatch(slug):
        raise ValueError(f"slug {slug!r}: use letters, digits, '.', '_', '-' (it names a file)")
    meta = graph.metadata
    tokens = [str(t) for t in meta.get("prompt_tokens") or meta.get("tokens") or []]
    if not tokens:
        raise ValueError(
            "the viewer needs metadata['prompt_tokens'] (or 'tokens'), one string per prompt "
            "position"
        )
    vocab = meta.get("vocab_size")
    influence = cumulative_influence(graph)
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
        v = _viewer_node(n, ctx, token, target=n.id == graph.root_id, meta=meta)
        v["influence"] = influence[n.id]
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
    name = scan if scan is not None else (meta.get("scan") or meta.get("model") or "transcoders")
    layers = [n.layer for n in graph.nodes if n.kind == "feature"]
    metadata = {
        "slug": slug,
        "scan": f"custom-{name}",
        "transcoder_list": [feature_folder(L) for L in range(max(layers) + 1 if layers else 0)],
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


def _write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=1, allow_nan=False) + "\n")


def to_viewer_json(
    graph: AttributionGraph,
    path: str | Path,
    slug: str,
    scan: str | None = None,
    node_threshold: float | None = None,
    features: Iterable[FeatureExamples] = (),
) -> Path:
    """Write ``path/{slug}.json`` (:func:`viewer_dict`), put its metadata in
    ``path/graph-metadata.json`` (replacing an entry of the same slug), and write each of
    ``features`` as ``path/features/L{layer}/{cantor(layer, feature)}.json``
    (:meth:`FeatureExamples.to_dict`), all atomically.

    Returns:
        The graph file's path.
    """
    data = viewer_dict(graph, slug, scan=scan, node_threshold=node_threshold)
    folder = Path(path)
    for f in features:
        _write_json(folder / FEATURES_DIR / f"L{f.layer}" / f"{f.file_index}.json", f.to_dict())
    out = _write_json(folder / f"{slug}.json", data)
    index_path = folder / "graph-metadata.json"
    index = (
        json.loads(index_path.read_text(encoding="utf-8"))
        if index_path.exists()
        else {"graphs": []}
    )
    entry = {k: data["metadata"][k] for k in METADATA_KEYS}
    index["graphs"] = [g for g in index.get("graphs", []) if g.get("slug") != slug] + [entry]
    _write_json(index_path, index)
    return out


# ---------------------------------------------------------------------------------------------
# feature files


@dataclass(frozen=True)
class Example:
    """One context in which a feature fires: ``tokens`` (decoded), the feature's activation
    at each (``acts``), and ``peak``, the index of the token the context was chosen for."""

    tokens: Sequence[str]
    acts: Sequence[float]
    peak: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "tokens", tuple(str(t) for t in self.tokens))
        object.__setattr__(self, "acts", tuple(float(a) for a in self.acts))
        object.__setattr__(self, "peak", int(self.peak))
        if len(self.tokens) != len(self.acts) or not 0 <= self.peak < len(self.tokens):
            raise ValueError(
                f"an example needs one activation per token and its peak among them: "
                f"{len(self.tokens)} tokens, {len(self.acts)} activations, peak {self.peak}"
            )

    @property
    def activation(self) -> float:
        return self.acts[self.peak]


@dataclass(frozen=True)
class FeatureExamples:
    """What the viewers show for one transcoder feature: its top-activating contexts, in
    named sections (e.g. plain prompts and steered ones), and its activation statistics.

    Attributes:
        layer, feature: The feature (``feature`` indexes its layer's transcoder).
        transcoder: The transcoder's name (circuit-tracer's ``transcoder_id``).
        sections: Section name → examples, strongest first.
        top_logits, bottom_logits: Decoded tokens the feature's decoder direction promotes
            and suppresses most through the unembedding.
        activations: The feature's nonzero activations over every token seen (for the
            quantiles and the histogram).
        n_tokens: How many tokens were seen (``activation_frequency`` is ``len(activations)
            / n_tokens``).
    """

    layer: int
    feature: int
    transcoder: str
    sections: dict[str, tuple[Example, ...]]
    top_logits: tuple[str, ...] = ()
    bottom_logits: tuple[str, ...] = ()
    activations: tuple[float, ...] = ()
    n_tokens: int = 0

    @property
    def file_index(self) -> int:
        """The feature's index in circuit-tracer's graph JSON and its file name: the Cantor
        pairing of layer and feature."""
        return _cantor(self.layer, self.feature)

    def to_dict(self, bins: int = 20) -> dict[str, Any]:
        """circuit-tracer's feature file (``frontend/feature_models.py`` ``Model``): the
        sections as ``examples_quantiles``, ``quantile_values`` the 1st..100th percentiles of
        the nonzero activations, ``histogram`` their counts in ``bins`` equal bins over
        ``[0, act_max]`` (the activations of a ReLU-type transcoder start at 0); ``mechintro``
        adds the layer and the feature."""
        acts = sorted(self.activations)
        peaks = [e.activation for ex in self.sections.values() for e in ex]
        act_min, act_max = 0.0, max([*acts, *peaks], default=0.0)
        quantiles = (
            [acts[min(len(acts) - 1, math.ceil(q / 100 * len(acts)) - 1)] for q in range(1, 101)]
            if acts
            else []
        )
        width = (act_max - act_min) / bins if act_max > act_min else 1.0
        histogram = [0.0] * bins
        for a in acts:
            histogram[min(bins - 1, int((a - act_min) / width))] += 1
        return _strict(
            {
                "transcoder_id": self.transcoder,
                "index": self.feature,
                "examples_quantiles": [
                    {
                        "quantile_name": name,
                        "examples": [
                            {
                                "tokens_acts_list": list(e.acts),
                                "train_token_ind": e.peak,
                                "is_repeated_datapoint": False,
                                "tokens": list(e.tokens),
                            }
                            for e in examples
                        ],
                    }
                    for name, examples in self.sections.items()
                ],
                "top_logits": list(self.top_logits),
                "bottom_logits": list(self.bottom_logits),
                "act_min": act_min,
                "act_max": act_max,
                "quantile_values": quantiles,
                "histogram": histogram,
                "activation_frequency": len(acts) / self.n_tokens if self.n_tokens else 0.0,
                "mechintro": {"layer": self.layer, "feature": self.feature},
            }
        )
