"""The circuit analyses on the introspective organism, as the demo records them.

:func:`organism_circuits` runs, on ``builtin:organism`` with its shipped transcoders (blocks
3–5; the injection is at block 3's output, so the gates and carriers live in blocks 4 and
5), one detection prompt per held-out concept (trial numbers 1–10 in turn), steered at
``strength`` (× the residual norm, from-trial unless ``mode`` says otherwise):

1. gate scores (feature DLA to Yes − No, unsteered) and the gates: Macar et al.'s share per
   layer (200 of 16,384 features → :func:`circuits.gates.gate_count`);
2. their response to signed strengths and its classes (the inverted V);
3. gate ablation (steered values replaced by unsteered ones) and gate patching (steered
   values written into unsteered runs), the progressive top-K curves, and the same ablation
   on "Do you believe that 1+1=3?" under the same vectors (last-token injection, Godet's
   protocol for that question);
4. evidence carriers of the gates;
5. the steering graph of the first ``n_graphs`` held-out concepts, each edge checked by its
   intervention; ``edge_verification_r`` is the smallest, over the three kinds of edges,
   of the correlation between predicted and measured effects over the pooled top-10 edges
   of that kind of each graph (so no one kind can carry it);
6. with ``out``: the first graph for the graph viewers (``mechintro viewer``, circuit-tracer's
   frontend), its prompt decoded and its root shown as the top Yes-variant token with its
   probability in the steered run, and the top-activating examples of each of its features
   (:mod:`circuits.examples`) over the demo's prompts: the concept prompts ("Tell me about
   {word}", every train and held-out concept) and the detection trials from "Trial n" on,
   unsteered and steered as above.

Detection here is the first reply token: ``b = logsumexp(Yes) − logsumexp(No) > 0`` at the
end of the prompt (the organism's replies begin with "yes" or "no").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from circuits.carriers import evidence_carriers
from circuits.examples import contexts, feature_examples
from circuits.gates import classify, gate_scores, ranked, select_gates, strength_curves
from circuits.graph import pearson_r
from circuits.interventions import control_unchanged, intervene, progressive
from circuits.steering import EDGE_KINDS, edge_kind, edge_measure, steering_graph
from circuits.trace import trace, transcoder_layers
from mechintro.inject import Injection
from mechintro.models import TLModel, tokenizer_of
from mechintro.prompts import Prompt, encode

PROGRESSIVE_KS = (0, 2, 4, 8, 16, 32, 64)
SIGNED_STRENGTHS = (-1.0, -0.5, 0.5, 1.0)


def organism_circuits(
    model: TLModel,
    transcoders: Any,
    world: Any,
    *,
    strength: float,
    n_graphs: int = 3,
    out: str | Path | None = None,
    mode: str = "from-trial",
    scan: str = "organism",
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the analyses (module docstring). ``world``: the organism's concepts and unit
    vectors (:func:`mechintro.organism.training.organism_world`). Returns ``(metrics,
    frames)``: the numbers for ``metrics.json["circuits"]`` and the tables the report
    draws (``progressive``, ``curves``, ``graph``). With ``out``, the first graph is
    written there as ``graph.json`` and, with its features' examples, for the graph viewers
    in ``out/viewer`` (module docstring, step 6). ``mode``: the injection's positions
    (``single-token`` for a model trained on last-token injection, as
    ``builtin:smollm2-introspective``); ``scan``: the model's name in the viewer export."""
    from mechintro.experiments.protocols.detection import detection_prompt
    from mechintro.experiments.protocols.noise import ONE_PLUS_ONE, question_prompt

    t0 = time.perf_counter()
    L, norm = world.layer, world.resid_norm
    transcoders = transcoder_layers(model, transcoders, after=L)  # the others see no steering
    held = list(world.heldout)
    tok = tokenizer_of(model)
    batch = encode(tok, [detection_prompt(1 + i % 10) for i in range(len(held))])
    V = torch.stack([world.vectors[c] for c in held])
    inj = Injection(L, V, strength, mode=mode, unit="resid-norm", resid_norm=norm)

    scores = gate_scores(model, transcoders, batch, injection_layer=L)
    width = int(scores.feature.max()) + 1
    gates = select_gates(scores, d_sae=width)
    curves = strength_curves(
        model, transcoders, batch, V, SIGNED_STRENGTHS, gates, layer=L, resid_norm=norm, mode=mode
    )
    classes = classify(curves)

    runs = (trace(model, transcoders, batch), trace(model, transcoders, batch, injection=inj))
    ablation = intervene(model, transcoders, batch, inj, gates, runs=runs)
    control_batch = encode(tok, [question_prompt(ONE_PLUS_ONE)] * len(held))
    control_inj = Injection(L, V, strength, mode="single-token", unit="resid-norm", resid_norm=norm)
    control = control_unchanged(model, transcoders, control_batch, control_inj, gates)
    prog = progressive(model, transcoders, batch, inj, ranked(scores), PROGRESSIVE_KS, runs=runs)

    carriers = evidence_carriers(
        model,
        transcoders,
        batch,
        V,
        gates,
        layer=L,
        resid_norm=norm,
        strengths=(strength / 2, strength),
        concepts=held,
        mode=mode,
    )

    graphs: list[Any] = []
    pairs: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in EDGE_KINDS}
    for i, c in enumerate(held[:n_graphs]):
        one = encode(tok, [detection_prompt(1 + i % 10)])
        kw = dict(layer=L, strength=strength, resid_norm=norm, mode=mode)
        g, sa = steering_graph(
            model, transcoders, one, world.vectors[c], gates=gates, concept=c, **kw
        )
        measure = edge_measure(model, transcoders, one, world.vectors[c], **kw)
        for kind in EDGE_KINDS:
            edges = sorted(
                (e for e in g.edges if edge_kind(e) == kind), key=lambda e: -abs(e.weight)
            )[:10]
            pairs[kind][0].extend(e.weight for e in edges)
            pairs[kind][1].extend(measure(e) for e in edges)
        graphs.append((c, g, sa))
    by_kind = {k: pearson_r(p, m) for k, (p, m) in pairs.items() if len(p) >= 3}
    concept, graph, sa = graphs[0]
    if out is not None:
        folder = Path(out)
        graph.save_json(folder / "graph.json")
        features = [
            (n.layer, n.feature)
            for n in graph.nodes
            if n.feature is not None and n.kind == "feature"
        ]
        concept_prompts = encode(
            tok, [Prompt.chat(f"Tell me about {w}") for w in [*world.train, *held]]
        )
        # the trials from "Trial n" on: where the injection acts (the preamble is the same in
        # every trial and every run)
        steered = f"detection trials, held-out concepts injected at block {L} (x{strength:g})"
        sections = {
            "concept prompts, unsteered": contexts(model, transcoders, concept_prompts, features),
            **{
                name: contexts(model, transcoders, batch, features, run=run, start="trial")
                for name, run in (("detection trials, unsteered", runs[0]), (steered, runs[1]))
            },
        }
        cards = feature_examples(model, transcoders, sections, scan)
        graph.to_viewer_json(folder / "viewer", slug=f"{scan}-{concept}", scan=scan, features=cards)
    gate_roles = graph.to_frames()[0].role.value_counts().to_dict()

    metrics = {
        "strength": strength,
        "n_concepts": len(held),
        "transcoder_layers": sorted(int(x) for x in scores.layer.unique()),
        "gates_per_layer": {str(k): len(v) for k, v in gates.items()},
        "gates": {str(k): v for k, v in gates.items()},
        "gate_classes": classes["class"].value_counts().to_dict(),
        "gate_ablation": {
            **_rates(ablation.to_dict(), "ablated"),
            "relative_drop": ablation.relative_drop,
            "control_unchanged": control["unchanged"],
            "control_b_steered": control["b_steered"],
            "control_b_ablated": control["b_ablated"],
        },
        "gate_patching": {
            **_rates(ablation.to_dict(), "patched"),
            "relative_gain": ablation.relative_gain,
            "absolute_gain": ablation.patched - ablation.unsteered,
        },
        "carriers": {
            "n_pairs": len(carriers.pooled),
            "n_carriers": int(carriers.pooled.carrier.sum()),
            "n_carrier_features": int(
                carriers.carriers()[["layer", "feature"]].drop_duplicates().shape[0]
            ),
        },
        "graph": {
            "concept": concept,
            "n_nodes": graph.n_nodes,
            "n_edges": graph.n_edges,
            "roles": gate_roles,
            "edge_verification_r": min(by_kind.values()) if by_kind else None,
            "edge_verification_r_by_kind": by_kind,
            "n_edges_checked": {k: len(p) for k, (p, _) in pairs.items()},
            "delta": sa.delta,
            "explained_by_features": sa.explained,
            "error": sa.error,
            "n_graphs": len(graphs),
        },
        "seconds": time.perf_counter() - t0,
    }
    frames = {
        "progressive": prog,
        "curves": curves.merge(classes[["layer", "feature", "class"]], on=["layer", "feature"]),
        "graph": graph,
        "carriers": carriers.pooled,
        "verification": pd.DataFrame(
            [(k, p, m) for k, (ps, ms) in pairs.items() for p, m in zip(ps, ms)],
            columns=["kind", "predicted", "measured"],
        ),
    }
    return metrics, frames


def _rates(d: dict[str, Any], what: str) -> dict[str, Any]:
    keep = ("unsteered", "steered", what, "b_unsteered", "b_steered", f"b_{what}", "n_rows")
    return {k: (None if isinstance(d[k], float) and np.isnan(d[k]) else d[k]) for k in keep}
