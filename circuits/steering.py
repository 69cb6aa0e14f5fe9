"""Steering attribution and the steering graph (Macar et al. 2026; docs/protocols.md §7).

The root is ``L = mean logit(Yes variants) − mean logit(No variants)`` at the last prompt
token; the input is the injection strength ``s`` (the concept vector added at block
``layer``'s output, ``s`` in units of the residual norm). For every transcoder feature ``f``
at every position ``t`` after the injection layer:

* ``GA(f, t) = ∂L/∂a_{f,t}`` — the gradient of the root with respect to the feature's
  activation, i.e. ``∂L/∂y_t · W_dec[f]`` (one backward pass);
* ``SG(f, t) = da_{f,t}/ds`` — how steering moves the feature: ``(dx_t/ds)·W_enc[:, f]`` for
  an active feature, 0 otherwise (one forward pass in forward-mode AD, a JVP in ``s``);
* ``SA(f, t) = ∫₀^{s*} GA · SG ds`` — the trapezoid rule over ``n_points`` strengths (21 by
  default), all of them rows of one batch, so the whole integral is one forward with dual
  numbers and one forward and backward.

Derivatives are those of the *replacement model*: the transcoders' error terms are held at
their values (circuit-tracer's convention), and a JumpReLU's jump contributes nothing. The
**error node** is what the features do not account for: ``L(s*) − L(0) − Σ SA``; it also
absorbs paths counted twice (a path through features of two layers appears in both
layers' SA, as in Macar et al.'s definition).

:func:`steering_graph` keeps the features with the largest ``|SA|`` and joins them with the
part of the steering's effect that flows along each edge: concept → feature (the change of
the activation, ``Δa = ∫ SG ds``), feature → later feature (``Δa_f · ∂pre_g/∂a_f`` at
``s*``, through every path between them), feature → root (``Δa_f · GA`` at ``s*``: the
first-order effect of undoing that change, where ``SA``, the node's influence, integrates
it along the way from 0), and the error node → root. Every weight predicts an
intervention that :func:`edge_measure` performs for
:meth:`~circuits.graph.AttributionGraph.verify_edges`: remove the injection (concept
edges), or hold the source feature at its unsteered value at its position and read the
target's change (Macar et al.'s ablation, one feature at a time).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
import torch.autograd.forward_ad as fwad
from torch import Tensor

from circuits.graph import AttributionGraph, Edge, Node
from circuits.trace import FeatureSet, Trace, forward, trace, transcoder_layers
from mechintro.analysis.dla import LogitDirection, logit_direction
from mechintro.inject import Injection, injected
from mechintro.models import TLModel, n_layers, tokenizer_of
from mechintro.prompts import PromptLike, as_prompt_batch

#: the first strength point: 0 exactly would switch the injection off for that row (a
#: strength-0 row is never steered, to keep zero-strength runs bit-identical), which would
#: also switch off its derivative
S_EPS = 1e-6


@dataclass(frozen=True, eq=False)
class SteeringAttribution:
    """Integrated steering attribution of one prompt and one concept vector.

    ``features``: one row per active (layer, position, feature) with ``sa``, ``sg`` (``∫ SG
    ds``), ``ga`` (``GA`` at ``s*``), ``activation`` (at ``s*``) and ``activation0`` (at
    ``s ≈ 0``); ``delta``: ``L(s*) − L(0)``; ``derivative``: ``∫ dL/ds`` of the replacement
    model; ``error``: ``delta − Σ sa``."""

    features: pd.DataFrame
    delta: float
    derivative: float
    error: float
    strength: float
    strengths: list[float]
    root: list[float]  # L at every strength point
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def explained(self) -> float:
        return float(self.features.sa.sum())


def _trapezoid(y: Tensor, dx: float) -> Tensor:
    """∫ over the first dimension of ``y`` sampled every ``dx``."""
    return (y[:-1] + y[1:]).sum(0) * dx / 2


def steering_attribution(
    model: TLModel,
    transcoders: Any,
    batch: PromptLike,
    vector: Tensor,
    *,
    layer: int,
    strength: float,
    resid_norm: float,
    n_points: int = 21,
    mode: str = "from-trial",
    direction: LogitDirection | None = None,
) -> SteeringAttribution:
    """SA of every feature after ``layer`` for the one-row ``batch`` steered by ``vector`` up
    to ``strength`` (× ``resid_norm``), integrated over ``n_points`` strengths."""
    batch = as_prompt_batch(getattr(model, "tokenizer", None), batch)
    if len(batch) != 1:
        raise ValueError(f"give one prompt (a batch of 1 row), got {len(batch)} rows")
    if n_points < 2:
        raise ValueError("n_points must be >= 2 (the trapezoid rule needs two ends)")
    if not (math.isfinite(strength) and strength > 0):
        raise ValueError(f"strength must be > 0, got {strength}")
    tcs = transcoder_layers(model, transcoders, after=layer)
    # injections keep their vectors on the CPU and move them to each activation's device;
    # the strengths (dual numbers, or leaves of the backward pass) live there too
    vector = torch.as_tensor(vector).detach().cpu()
    grid = torch.linspace(0.0, float(strength), n_points)
    grid[0] = S_EPS * float(strength)
    rows = batch.rows([0] * n_points)
    with fwad.dual_level():  # forward mode: SG and dL/ds (no backward through dual numbers)
        s = fwad.make_dual(grid, torch.ones(n_points))
        inj = Injection(layer, vector, s, mode=mode, unit="resid-norm", resid_norm=resid_norm)
        tr = trace(model, tcs, rows, injection=inj, direction=direction)
        gap, dgap = fwad.unpack_dual(tr.gap)
        sg = {L: fwad.unpack_dual(tr.pre[L]).tangent for L in tcs}
        acts = {L: fwad.unpack_dual(tr.acts[L]).primal for L in tcs}
    layers = sorted(tcs)
    with torch.enable_grad():  # also under a caller's no_grad: the injection must carry it
        strengths = grid.clone().requires_grad_()
        inj = Injection(
            layer, vector, strengths, mode=mode, unit="resid-norm", resid_norm=resid_norm
        )
        tr = trace(model, tcs, rows, injection=inj, direction=direction, grad=True)
        ga = dict(zip(layers, torch.autograd.grad(tr.gap.sum(), [tr.acts[L] for L in layers])))
    dx = float(strength) / (n_points - 1)
    frames = []
    for L in layers:
        active = acts[L] > 0
        sg_L = torch.where(active, sg[L], torch.zeros_like(sg[L])).detach()
        sa = _trapezoid(ga[L].detach() * sg_L, dx)  # [pos, d_sae]
        sg_int = _trapezoid(sg_L, dx)
        t_idx, f_idx = torch.nonzero(active.any(0), as_tuple=True)
        frames.append(
            pd.DataFrame(
                {
                    "layer": L,
                    "position": t_idx.cpu().numpy(),
                    "feature": f_idx.cpu().numpy(),
                    "sa": sa[t_idx, f_idx].cpu().numpy(),
                    "sg": sg_int[t_idx, f_idx].cpu().numpy(),
                    "ga": ga[L][-1, t_idx, f_idx].detach().cpu().numpy(),
                    "activation": acts[L][-1, t_idx, f_idx].detach().cpu().numpy(),
                    "activation0": acts[L][0, t_idx, f_idx].detach().cpu().numpy(),
                }
            )
        )
    features = pd.concat(frames, ignore_index=True)
    root = gap.detach().cpu()
    delta = float(root[-1] - root[0])
    return SteeringAttribution(
        features=features,
        delta=delta,
        derivative=float(_trapezoid(dgap.detach().cpu(), dx)),
        error=delta - float(features.sa.sum()),
        strength=float(strength),
        strengths=grid.tolist(),
        root=root.tolist(),
        meta={"layer": layer, "mode": mode, "n_points": n_points, "resid_norm": resid_norm},
    )


# ---------------------------------------------------------------------------------------------
# the graph


def _fid(layer: int, position: int, feature: int) -> str:
    return f"L{layer}#{feature}@{position}"


def steering_graph(
    model: TLModel,
    transcoders: Any,
    batch: PromptLike,
    vector: Tensor,
    *,
    layer: int,
    strength: float,
    resid_norm: float,
    n_features: int = 24,
    gates: FeatureSet | None = None,
    concept: str = "concept",
    n_points: int = 21,
    mode: str = "from-trial",
    direction: LogitDirection | None = None,
) -> tuple[AttributionGraph, SteeringAttribution]:
    """The steering graph of one prompt and concept: the ``n_features`` features with the
    largest ``|SA|``, their edges (module docstring), roles (``gate`` for members of
    ``gates``; ``carrier`` for a feature that steering turns up and that has a negative edge
    into a gate; else ``other``) and the error node. Returns the graph and the attribution
    it came from."""
    batch = as_prompt_batch(getattr(model, "tokenizer", None), batch)
    if len(batch) != 1 or not bool(batch.attention_mask.all()):
        raise ValueError("steering_graph needs one unpadded prompt (a batch of 1 row)")
    sa = steering_attribution(
        model,
        transcoders,
        batch,
        vector,
        layer=layer,
        strength=strength,
        resid_norm=resid_norm,
        n_points=n_points,
        mode=mode,
        direction=direction,
    )
    tcs = transcoder_layers(model, transcoders, after=layer)
    top = sa.features.reindex(sa.features.sa.abs().sort_values(ascending=False).index)
    top = top.head(n_features).reset_index(drop=True)
    vector = torch.as_tensor(vector).detach().cpu()
    with torch.enable_grad():
        s_star = torch.tensor(float(strength), requires_grad=True)
        inj = Injection(layer, vector, s_star, mode=mode, unit="resid-norm", resid_norm=resid_norm)
        tr = trace(model, tcs, batch, injection=inj, direction=direction, grad=True)
    keys = [(int(r.layer), int(r.position), int(r.feature)) for r in top.itertuples()]
    edges: list[Edge] = []
    gate_set = {(L, f) for L, fs in (gates or {}).items() for f in fs}
    for L2, t2, g in keys:
        sources = [(j, k) for j, k in enumerate(keys) if k[0] < L2 and k[1] <= t2]
        if not sources:
            continue
        src_layers = sorted({k[0] for _, k in sources})
        grads = torch.autograd.grad(
            tr.pre[L2][0, t2, g], [tr.acts[L] for L in src_layers], retain_graph=True
        )
        by_layer = dict(zip(src_layers, grads))
        for j, (L1, t1, f) in sources:
            w = float(top.sg[j]) * float(by_layer[L1][0, t1, f])
            edges.append(Edge(_fid(L1, t1, f), _fid(L2, t2, g), w))
    grows = {_fid(*k) for k, sg in zip(keys, top.sg) if sg > 0}
    carriers = {
        e.source
        for e in edges
        if e.weight < 0 and _is_gate(e.target, gate_set) and e.source in grows
    }
    n_out = n_layers(model)
    # the root stands for the Yes - No gap; the viewers show it as the Yes token most likely at
    # the end of the steered prompt, with its probability (circuit-tracer's logit node)
    tok = tokenizer_of(model)
    steered = Injection(layer, vector, float(strength), mode=mode, unit="resid-norm",
                        resid_norm=resid_norm)  # fmt: skip
    with torch.no_grad(), injected(model, steered, batch):
        probs = torch.softmax(forward(model, batch)[0, -1].float(), dim=-1)
    yes = max((direction or logit_direction(model)).pos_ids, key=lambda i: float(probs[i]))
    p_yes = float(probs[yes])
    nodes = [
        Node("concept", "concept", layer=-1, role="concept", label=concept),
        Node(
            "root",
            "logit",
            layer=n_out,
            position=int(tr.pos[0]),
            role="logit",
            feature=yes,
            label=tok.decode([yes]),
            probability=p_yes,
        ),
        Node(
            "error",
            "error",
            layer=n_out - 1,
            role="error",
            label="not explained by features",
            influence=sa.error,
        ),
    ]
    for r, (L, t, f) in zip(top.itertuples(), keys):
        nid = _fid(L, t, f)
        role = "gate" if (L, f) in gate_set else "carrier" if nid in carriers else "other"
        nodes.append(
            Node(
                nid,
                "feature",
                layer=L,
                position=t,
                feature=f,
                role=role,
                activation=float(r.activation),
                label=f"L{L} #{f} at {t}",
                influence=float(r.sa),
            )
        )
        edges.append(Edge("concept", nid, float(r.sg)))
        edges.append(Edge(nid, "root", float(r.ga * r.sg)))
    edges.append(Edge("error", "root", sa.error))
    ids = batch.input_ids[0].tolist()
    meta = {
        "concept": concept,
        "strength": float(strength),
        "injection_layer": layer,
        "root": "mean logit(Yes) - mean logit(No), last prompt token",
        "root_token": {"id": yes, "text": tok.decode([yes]), "probability": p_yes},
        "prompt": tok.decode(ids),
        "prompt_tokens": [tok.decode([i]) for i in ids],
        "tokens": tok.convert_ids_to_tokens(ids),
        "delta": sa.delta,
        "explained": sa.explained,
        "error": sa.error,
    }
    return AttributionGraph(nodes, edges, meta, root="root"), sa


def _is_gate(node_id: str, gates: set[tuple[int, int]]) -> bool:
    L, rest = node_id[1:].split("#")
    return (int(L), int(rest.split("@")[0])) in gates


def _parse(node_id: str) -> tuple[int, int, int]:
    L, rest = node_id[1:].split("#")
    f, t = rest.split("@")
    return int(L), int(t), int(f)


def edge_measure(
    model: TLModel,
    transcoders: Any,
    batch: PromptLike,
    vector: Tensor,
    *,
    layer: int,
    strength: float,
    resid_norm: float,
    mode: str = "from-trial",
    direction: LogitDirection | None = None,
) -> Callable[[Edge], float]:
    """The intervention behind each kind of edge of :func:`steering_graph`, measured:
    concept → f: the activation with the injection minus without it; f → g: ``g``'s
    pre-activation minus its value with ``f`` held at its unsteered value at its position;
    f → root: the root minus its value under that hold; the error edge: NaN (not an
    intervention)."""
    batch = as_prompt_batch(getattr(model, "tokenizer", None), batch)
    tcs = transcoder_layers(model, transcoders, after=layer)
    inj = Injection(layer, vector, strength, mode=mode, unit="resid-norm", resid_norm=resid_norm)
    base = trace(model, tcs, batch, injection=inj, direction=direction)
    plain = trace(model, tcs, batch, direction=direction)

    def ablated(L: int, t: int, f: int) -> Trace:
        def edit(lay: int, acts: Tensor) -> Tensor:
            if lay != L:
                return acts
            out = acts.clone()
            out[:, t, f] = plain.acts[L][:, t, f].to(out.device, out.dtype)
            return out

        return trace(model, tcs, batch, injection=inj, direction=direction, edit=edit)

    def measure(edge: Edge) -> float:
        if edge.source == "error":
            return math.nan
        if edge.source == "concept":
            L, t, f = _parse(edge.target)
            return float(base.acts[L][0, t, f] - plain.acts[L][0, t, f])
        L1, t1, f1 = _parse(edge.source)
        run = ablated(L1, t1, f1)
        if edge.target == "root":
            return float(base.gap[0] - run.gap[0])
        L2, t2, g = _parse(edge.target)
        return float(base.pre[L2][0, t2, g] - run.pre[L2][0, t2, g])

    return measure


EDGE_KINDS = ("concept→feature", "feature→feature", "feature→root")


def edge_kind(edge: Edge) -> str:
    if edge.source == "error":
        return "error→root"
    if edge.source == "concept":
        return "concept→feature"
    return "feature→root" if edge.target == "root" else "feature→feature"


def verify_by_kind(
    graph: AttributionGraph, measure: Callable[[Edge], float], k: int = 10
) -> pd.DataFrame:
    """:meth:`~circuits.graph.AttributionGraph.verify_edges` on each kind of edge apart (the
    top ``k`` of the kind by ``|weight|``): one row per kind with ``r``, ``n``,
    ``sign_agreement``; kinds with fewer than 3 edges are left out."""
    rows = []
    for kind in EDGE_KINDS:
        edges = [e for e in graph.edges if edge_kind(e) == kind]
        if len(edges) < 3:
            continue
        sub = AttributionGraph(graph.nodes, edges, root=graph.root_id)
        chk = sub.verify_edges(measure, k=k)
        rows.append({"kind": kind, "r": chk.r, "n": chk.n, "sign_agreement": chk.sign_agreement})
    return pd.DataFrame(rows)
