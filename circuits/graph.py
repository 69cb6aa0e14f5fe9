"""Attribution graphs: nodes, signed edges, pruning, edge checks and a lossless JSON file.

An attribution graph explains one scalar, the **root** (the Yes − No logit gap at the last
prompt token, or the "No" logit alone), by the nodes upstream of it. An edge ``s → t`` carries
a signed weight: the attribution of ``s`` to ``t``, i.e. how much of ``t``'s value (or of the
root, when ``t`` is the root) comes from ``s`` along the direct path between them. For the
steering graph of Macar et al. (2026; docs/protocols.md §7) that is concept vector → evidence
carriers → gates → "No" logit, with error nodes holding what the transcoders miss.

**Nodes** (:class:`Node`) have a *kind*, what they are: ``"concept"`` (the injected vector)
or ``"embedding"`` (a token), both inputs at layer −1; ``"feature"`` (a transcoder feature);
``"error"`` (a layer's reconstruction error); ``"logit"`` (an output, layer ``n_layers``).
They also have a *role*, what they do in the circuit: ``"concept"``, ``"carrier"``,
``"gate"``, ``"logit"``, ``"error"`` or ``"other"``. ``position = -1`` means summed over
positions.

**Flow** (:meth:`AttributionGraph.flow`) is a node's share of the root through all paths:
every node's incoming ``|weight|`` are normalised to sum to 1, the root's flow is 1, and a
node passes to each input its share of its own flow. It is circuit-tracer's indirect
influence (the row sums of ``(I − Â)⁻¹`` over the |adjacency| normalised by input) read at
the root, and it puts every node on one scale in [0, 1] whatever the units of the weights.

**Pruning** (:meth:`AttributionGraph.prune`), in this order:

1. drop the edges with ``|weight| < min_abs_weight``;
2. rank the rest by ``|weight|`` (ties keep the graph's order) and keep the first
   ``max_edges``;
3. keep only the edges whose target has a path to the root through kept edges (so every
   kept node lies on a path to the root);
4. if more than ``max_nodes`` nodes remain, keep the root, the inputs and the best of the
   others by ``rank_by`` (``"flow"`` computed on the *unpruned* graph, or ``"influence"``,
   ``|Node.influence|``, with ``None`` last), drop the edges that touch a dropped node, and
   apply step 3 again (so a graph can end with fewer than ``max_nodes`` nodes).

The root and the input nodes (concept, embedding) always stay, even with no edge left; other
logit nodes have no path to the root and go.

**Checking edges** (:meth:`AttributionGraph.verify_edges`): the weights are linear
predictions; ``measure(edge)`` performs the intervention (ablate the source, say, and read
the change in the target) and the Pearson ``r`` between predicted and measured over the
top-k edges says how far the graph can be trusted.

Example::

    from circuits.graph import AttributionGraph, Edge, Node

    nodes = [
        Node("concept", "concept", layer=-1, role="concept", label="bread"),
        Node("L3#17", "feature", layer=3, feature=17, role="carrier", activation=2.1),
        Node("L4#5", "feature", layer=4, feature=5, role="gate", activation=0.4),
        Node("no", "logit", layer=6, role="logit", label="Yes - No"),
    ]
    edges = [Edge("concept", "L3#17", 1.2), Edge("L3#17", "L4#5", -0.8), Edge("L4#5", "no", -2.0)]
    g = AttributionGraph(nodes, edges, {"model": "smollm2", "tokens": ["a", "b"]})
    g.prune(max_edges=2).figure().show()
    g.save_json("graph.json")
    g.to_viewer_json("viewer_data", slug="bread-l3-s4")  # `mechintro viewer viewer_data`
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from mechintro.io import atomic_write_text

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from circuits.viewer import FeatureExamples

KINDS = ("concept", "embedding", "feature", "error", "logit")
"""Node kinds; ``concept`` and ``embedding`` are the graph's inputs."""
INPUT_KINDS = frozenset({"concept", "embedding"})
ROLES = ("concept", "carrier", "gate", "logit", "error", "other")
"""Node roles in the introspection circuit, upstream first."""
FORMAT = "mechintro.attribution_graph"
VERSION = 1


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


@dataclass(frozen=True)
class Node:
    """One node of an attribution graph.

    Attributes:
        id: Unique within its graph.
        kind: One of :data:`KINDS`.
        layer: Transformer block; -1 for the inputs, ``n_layers`` for the logits.
        position: Token position, or -1 when summed over positions.
        feature: Transcoder feature index (the token id for an embedding or logit node).
        role: One of :data:`ROLES`.
        activation: The feature's activation (steered run), if known.
        label: Free text: a feature's description, the concept word, the logit's token.
        influence: The node's attribution to the root, if the builder computed one.
        probability: For a logit node: its token's probability at its position, if known
            (circuit-tracer's ``token_prob``).

    Numbers are coerced (``int``/``float``), so numpy or torch scalars are fine.
    """

    id: str
    kind: str
    layer: int
    position: int = -1
    feature: int | None = None
    role: str = "other"
    activation: float | None = None
    label: str = ""
    influence: float | None = None
    probability: float | None = None

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("a node needs a non-empty id")
        if self.kind not in KINDS:
            raise ValueError(f"node {self.id!r}: kind {self.kind!r} is not one of {KINDS}")
        if self.role not in ROLES:
            raise ValueError(f"node {self.id!r}: role {self.role!r} is not one of {ROLES}")
        if self.position < -1:
            raise ValueError(f"node {self.id!r}: position {self.position} (use -1 for all)")
        object.__setattr__(self, "layer", int(self.layer))
        object.__setattr__(self, "position", int(self.position))
        object.__setattr__(self, "feature", None if self.feature is None else int(self.feature))
        object.__setattr__(self, "activation", _opt_float(self.activation))
        object.__setattr__(self, "influence", _opt_float(self.influence))
        object.__setattr__(self, "probability", _opt_float(self.probability))


@dataclass(frozen=True)
class Edge:
    """A signed attribution of node ``source`` to node ``target`` (ids), finite."""

    source: str
    target: str
    weight: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", float(self.weight))
        if not math.isfinite(self.weight):
            raise ValueError(f"edge {self.source} -> {self.target}: weight {self.weight}")


def _edge_rank(edges: Sequence[Edge]) -> list[Edge]:
    """``edges`` by decreasing ``|weight|``; equal weights keep their order."""
    return sorted(edges, key=lambda e: -abs(e.weight))


def pearson_r(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Pearson correlation of two equal-length sequences of at least 3 finite numbers.

    Returns NaN when either side has zero variance (the correlation is undefined: a measure
    that returns the same value for every edge says nothing about the weights).

    Raises:
        ValueError: Lengths differ, fewer than 3 pairs, or a value is not finite.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"pearson_r needs two 1-D sequences of one length, got {a.shape}, {b.shape}"
        )
    if len(a) < 3:
        raise ValueError(f"pearson_r needs at least 3 pairs, got {len(a)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("pearson_r needs finite values")
    da, db = a - a.mean(), b - b.mean()
    den = math.sqrt(float(da @ da) * float(db @ db))
    if den == 0.0:
        return float("nan")
    return float(np.clip(float(da @ db) / den, -1.0, 1.0))


@dataclass(frozen=True)
class EdgeCheck:
    """Predicted (edge weight) against measured (intervention) effects of the top edges.

    Attributes:
        table: One row per checked edge: ``source``, ``target``, ``predicted``, ``measured``.
        r: Pearson correlation over the rows whose measurement is finite; NaN when fewer than
            3 such rows remain or one side has zero variance.
        n: Rows that entered ``r``.
        sign_agreement: Fraction of those rows where predicted and measured share a sign
            (NaN when ``n`` is 0).
    """

    table: pd.DataFrame
    r: float
    n: int
    sign_agreement: float


def _plain_json(x: Any, where: str = "metadata") -> None:
    """Refuse values that JSON would not give back unchanged (tuples, non-str keys...)."""
    if isinstance(x, dict):
        for k, v in x.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: key {k!r} is not a string")
            _plain_json(v, f"{where}[{k!r}]")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            _plain_json(v, f"{where}[{i}]")
    elif x is not None and not isinstance(x, str | bool | int | float):
        raise ValueError(f"{where}: {type(x).__name__} does not round-trip through JSON")


@dataclass(frozen=True)
class AttributionGraph:
    """Nodes, signed edges between them, and what the graph was computed on.

    Args:
        nodes: Unique ids; stored as a tuple, in the given order.
        edges: Between existing nodes, no self-loops, one edge per ordered pair.
        metadata: Free JSON-like dict: ``model``, ``prompt``, ``tokens`` (one string per
            position; the viewer export needs it), ``concept``, ``strength``,
            ``injection_layer``, ``root_metric`` (e.g. "logit(Yes) - logit(No)")...
        root: Id of the logit node the graph explains; may be omitted when there is exactly
            one logit node.
    """

    nodes: Sequence[Node]
    edges: Sequence[Edge]
    metadata: dict[str, Any] = field(default_factory=dict)
    root: str | None = None
    _index: dict[str, Node] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "edges", tuple(self.edges))
        object.__setattr__(self, "metadata", dict(self.metadata))
        index: dict[str, Node] = {}
        for n in self.nodes:
            if n.id in index:
                raise ValueError(f"duplicate node id {n.id!r}")
            index[n.id] = n
        object.__setattr__(self, "_index", index)
        pairs = set()
        for e in self.edges:
            for end in (e.source, e.target):
                if end not in index:
                    raise ValueError(f"edge {e.source} -> {e.target}: no node {end!r}")
            if e.source == e.target:
                raise ValueError(f"self-loop on {e.source!r}")
            if (e.source, e.target) in pairs:
                raise ValueError(f"two edges {e.source} -> {e.target}")
            pairs.add((e.source, e.target))
        if self.root is None:
            logits = [n.id for n in self.nodes if n.kind == "logit"]
            if len(logits) != 1:
                raise ValueError(f"{len(logits)} logit nodes {logits}: say which is the root")
            object.__setattr__(self, "root", logits[0])
        elif self.root not in index or index[self.root].kind != "logit":
            raise ValueError(f"root {self.root!r} is not a logit node of the graph")

    @property
    def root_id(self) -> str:
        """The root's id (resolved at construction)."""
        assert self.root is not None
        return self.root

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def node(self, node_id: str) -> Node:
        """The node with id ``node_id`` (KeyError if absent)."""
        return self._index[node_id]

    def to_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``(nodes, edges)`` DataFrames: one row per node (the :class:`Node` fields) and one
        per edge (``source``, ``target``, ``weight``), in the graph's order."""
        node_cols = [f.name for f in fields(Node)]
        edge_cols = [f.name for f in fields(Edge)]
        nodes = pd.DataFrame([asdict(n) for n in self.nodes], columns=node_cols)
        edges = pd.DataFrame([asdict(e) for e in self.edges], columns=edge_cols)
        return nodes, edges

    def top_edges(self, k: int) -> list[Edge]:
        """The ``k`` edges of largest ``|weight|`` (ties in the graph's order)."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        return _edge_rank(self.edges)[:k]

    def _topological(self) -> list[str]:
        """Node ids, every edge's source before its target (ValueError on a cycle)."""
        indeg = {n.id: 0 for n in self.nodes}
        out: dict[str, list[str]] = {n.id: [] for n in self.nodes}
        for e in self.edges:
            indeg[e.target] += 1
            out[e.source].append(e.target)
        ready = [i for i, d in indeg.items() if d == 0]
        order: list[str] = []
        while ready:
            i = ready.pop()
            order.append(i)
            for t in out[i]:
                indeg[t] -= 1
                if indeg[t] == 0:
                    ready.append(t)
        if len(order) != len(indeg):
            raise ValueError("the graph has a cycle; flow is defined on acyclic graphs only")
        return order

    def flow(self) -> dict[str, float]:
        """Each node's share of the root through all paths, in [0, 1] (module docstring)."""
        in_abs: dict[str, float] = {n.id: 0.0 for n in self.nodes}
        for e in self.edges:
            in_abs[e.target] += abs(e.weight)
        by_source: dict[str, list[Edge]] = {n.id: [] for n in self.nodes}
        for e in self.edges:
            by_source[e.source].append(e)
        flow = {n.id: 0.0 for n in self.nodes}
        flow[self.root_id] = 1.0
        for i in reversed(self._topological()):
            if i == self.root_id:
                continue
            flow[i] = sum(
                abs(e.weight) / in_abs[e.target] * flow[e.target]
                for e in by_source[i]
                if in_abs[e.target] > 0
            )
        return flow

    def _toward_root(self, edges: Iterable[Edge]) -> list[Edge]:
        """The ``edges`` whose target reaches the root through ``edges`` (order kept)."""
        edges = list(edges)
        into: dict[str, list[Edge]] = {}
        for e in edges:
            into.setdefault(e.target, []).append(e)
        reached, stack = {self.root_id}, [self.root_id]
        while stack:
            for e in into.get(stack.pop(), []):
                if e.source not in reached:
                    reached.add(e.source)
                    stack.append(e.source)
        return [e for e in edges if e.target in reached]

    def prune(
        self,
        min_abs_weight: float = 0.0,
        max_nodes: int | None = None,
        max_edges: int | None = None,
        rank_by: Literal["flow", "influence"] = "flow",
    ) -> AttributionGraph:
        """A smaller graph on the paths to the root (the rule is in the module docstring).

        Nodes and edges keep their order and fields; ``metadata["pruning"]`` records the
        arguments.

        Raises:
            ValueError: A negative threshold or count, ``max_nodes`` below the number of
                nodes that always stay (root and inputs), or an unknown ``rank_by``.
        """
        if min_abs_weight < 0 or (max_edges is not None and max_edges < 0):
            raise ValueError("min_abs_weight and max_edges must be >= 0")
        if rank_by not in ("flow", "influence"):
            raise ValueError(f"rank_by must be 'flow' or 'influence', got {rank_by!r}")
        keep = {self.root_id} | {n.id for n in self.nodes if n.kind in INPUT_KINDS}
        if max_nodes is not None and max_nodes < len(keep):
            raise ValueError(f"max_nodes={max_nodes} < {len(keep)} nodes that always stay")
        ranked = _edge_rank([e for e in self.edges if abs(e.weight) >= min_abs_weight])
        chosen = set(ranked if max_edges is None else ranked[:max_edges])
        edges = self._toward_root(e for e in self.edges if e in chosen)
        nodes = keep | {i for e in edges for i in (e.source, e.target)}
        if max_nodes is not None and len(nodes) > max_nodes:
            if rank_by == "flow":
                score = self.flow()
            else:
                score = {
                    n.id: abs(n.influence) if n.influence is not None else -1.0 for n in self.nodes
                }
            order = {n.id: k for k, n in enumerate(self.nodes)}
            others = sorted(nodes - keep, key=lambda i: (-score[i], order[i]))
            nodes = keep | set(others[: max_nodes - len(keep)])
            edges = self._toward_root(e for e in edges if e.source in nodes and e.target in nodes)
            nodes = keep | {i for e in edges for i in (e.source, e.target)}
        pruning = {
            "min_abs_weight": min_abs_weight,
            "max_nodes": max_nodes,
            "max_edges": max_edges,
            "rank_by": rank_by,
        }
        return AttributionGraph(
            nodes=[n for n in self.nodes if n.id in nodes],
            edges=edges,
            metadata={**self.metadata, "pruning": pruning},
            root=self.root,
        )

    def verify_edges(self, measure: Callable[[Edge], float], k: int = 20) -> EdgeCheck:
        """Compare the top-``k`` edges' weights (by ``|weight|``) with ``measure(edge)``.

        ``measure`` performs an intervention and returns the effect it observes, in the
        weights' units (e.g. ablate the source feature to its unsteered value and return the
        change in the target's pre-activation). A NaN or infinite measurement is kept in the
        table and left out of ``r``.

        Raises:
            ValueError: Fewer than 3 edges would be checked (``k < 3`` or a smaller graph):
                a correlation needs 3 points, and this is known before running ``measure``.
        """
        edges = self.top_edges(k)
        if len(edges) < 3:
            raise ValueError(f"verify_edges needs at least 3 edges to correlate, got {len(edges)}")
        measured = [float(measure(e)) for e in edges]
        table = pd.DataFrame(
            {
                "source": [e.source for e in edges],
                "target": [e.target for e in edges],
                "predicted": [e.weight for e in edges],
                "measured": measured,
            }
        )
        ok = np.isfinite(table["measured"].to_numpy())
        pred, meas = table["predicted"].to_numpy()[ok], table["measured"].to_numpy()[ok]
        n = int(ok.sum())
        r = pearson_r(pred, meas) if n >= 3 else float("nan")
        agree = float(np.mean(np.sign(pred) == np.sign(meas))) if n else float("nan")
        return EdgeCheck(table=table, r=r, n=n, sign_agreement=agree)

    def figure(self, title: str | None = None) -> go.Figure:
        """A plotly figure: layers left to right, roles top to bottom (see
        :func:`circuits.viewer.figure`)."""
        from circuits.viewer import figure

        return figure(self, title=title)

    def to_viewer_json(
        self,
        path: str | Path,
        slug: str,
        scan: str | None = None,
        node_threshold: float | None = None,
        features: Iterable[FeatureExamples] = (),
    ) -> Path:
        """Write ``path/{slug}.json`` for the graph viewers (mechintro's and circuit-tracer's),
        index it in ``path/graph-metadata.json`` and write the ``features``' example files
        (see :func:`circuits.viewer.to_viewer_json`)."""
        from circuits.viewer import to_viewer_json

        return to_viewer_json(
            self, path, slug, scan=scan, node_threshold=node_threshold, features=features
        )

    def to_dict(self) -> dict[str, Any]:
        """The lossless JSON-ready form that :meth:`from_dict` reads back."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "root": self.root,
            "metadata": self.metadata,
            "nodes": [asdict(n) for n in self.nodes],
            "edges": [asdict(e) for e in self.edges],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttributionGraph:
        """Rebuild a graph from :meth:`to_dict`'s output (ValueError on another format)."""
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise ValueError(
                f"not a {FORMAT} v{VERSION} file: format={data.get('format')!r}, "
                f"version={data.get('version')!r}"
            )
        return cls(
            nodes=[Node(**n) for n in data["nodes"]],
            edges=[Edge(**e) for e in data["edges"]],
            metadata=data["metadata"],
            root=data["root"],
        )

    def save_json(self, path: str | Path) -> Path:
        """Write the graph to ``path`` atomically, losslessly (floats by shortest repr).

        Raises:
            ValueError: ``metadata`` holds something JSON would change (a tuple, a non-str
                key, an object).
        """
        _plain_json(self.metadata)
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load_json(cls, path: str | Path) -> AttributionGraph:
        """Read a graph written by :meth:`save_json`."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
