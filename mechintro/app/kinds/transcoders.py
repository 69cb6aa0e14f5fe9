"""The transcoder kinds of ``mechintro run``: ``circuits`` (gates, evidence carriers and
steering graphs, docs/protocols.md §7) and ``transcoder-r2`` (ridge R² of per-concept
detection on transcoder features vs on the vectors' PC1 projection)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechintro.app.kinds.common import build, concept_vectors, flat_row
from mechintro.app.kinds.sweeps import sweep_spec, sweep_table
from mechintro.app.options import UsageError
from mechintro.io import atomic_write_text, json_ready

if TYPE_CHECKING:
    import pandas as pd

    from mechintro.models import TLModel


@dataclass(frozen=True)
class CircuitParams:
    """The circuit analyses (gates, carriers, the steering graph; docs/protocols.md §7)."""

    layer: int = 3  # the injection layer (block output)
    strength: float = 1.0  # in units of the residual norm
    concepts: tuple[str, ...] = ()  # default: the organism's held-out concepts
    baseline: tuple[str, ...] = ()  # the vectors' baseline words
    transcoders: str = "builtin"  # builtin (the organism's) or a folder of layer_L folders
    n_graphs: int = 3  # steering graphs (each edge checked by its intervention)

    def __post_init__(self) -> None:
        if self.n_graphs < 1:
            raise ValueError("n_graphs must be at least 1")


def _transcoders(source: str) -> Any:
    from mechintro.analysis.transcoders import load_transcoder, organism_transcoders

    if source == "builtin":
        return organism_transcoders()
    folders = sorted(Path(source).glob("layer_*"))
    if not folders:
        raise FileNotFoundError(f"{source}: no layer_L transcoder folders in it")
    return {int(p.name.removeprefix("layer_")): load_transcoder(p) for p in folders}


def _world(model: TLModel, p: CircuitParams, *, small: bool) -> Any:
    """The concepts, unit vectors and residual norm the analyses inject."""
    from mechintro.models import model_info
    from mechintro.organism.training import OrganismWorld, organism_world

    if not p.concepts and model_info(model).name.startswith("builtin:organism"):
        world = organism_world(p.layer)
    else:
        if not p.concepts:
            raise UsageError("[circuits]: give concepts (only builtin:organism has defaults)")
        vecs = concept_vectors(model, p.concepts, p.layer, "lindsey", p.baseline)
        unit = {w: v.vector / v.vector.norm() for w, v in vecs.items()}
        resid = next(iter(vecs.values())).resid_norm or 1.0
        world = OrganismWorld([], list(p.concepts), list(p.baseline), {}, unit, resid, p.layer)
    if small:
        world = dataclasses.replace(world, heldout=world.heldout[:4])
    return world


def run_circuits_kind(
    model: TLModel, cfg: Mapping[str, Any], out: Path, *, small: bool, batch_size: int = 32
) -> pd.DataFrame:
    """``experiment = "circuits"``: gates, their classes, ablation and patching, evidence
    carriers and steering graphs; metrics in ``circuits.json``, tables, ``circuits.html``."""
    import pandas as pd

    from circuits.figures import circuits_section
    from mechintro.html_page import html_report
    from mechintro.organism.circuit import organism_circuits

    p = build(CircuitParams, cfg, "circuits")
    world = _world(model, p, small=small)
    metrics, frames = organism_circuits(
        model,
        _transcoders(p.transcoders),
        world,
        strength=p.strength,
        n_graphs=1 if small else p.n_graphs,
        out=out,
    )
    atomic_write_text(out / "circuits.json", json.dumps(json_ready(metrics), indent=2))
    for name in ("progressive", "curves", "carriers", "verification"):
        atomic_write_text(out / f"{name}.csv", frames[name].to_csv(index=False))
    html_report("Circuits", [circuits_section(metrics, frames)], path=out / "circuits.html")
    flat = flat_row({k: v for k, v in metrics.items() if k not in ("gates",)})
    return pd.DataFrame([flat])


@dataclass(frozen=True)
class R2Params:
    """Ridge R² of per-concept detection rates on transcoder features vs on the scalar
    projection of each concept vector on the vectors' PC1 (docs/protocols.md §7)."""

    sweep: Mapping[str, Any] = field(default_factory=dict)  # the detection sweep (a [sweep] table)
    transcoders: str = "builtin"  # builtin (the organism's) or a folder of layer_L folders
    outer: int = 5  # outer folds
    inner: int = 4  # inner folds (the penalty)
    seed: int = 0


def run_r2_kind(
    model: TLModel, cfg: Mapping[str, Any], out: Path, *, small: bool, batch_size: int = 32
) -> pd.DataFrame:
    """``experiment = "transcoder-r2"``: a detection sweep (``out/sweep``, resumable), then
    for each concept its detection rate (the sweep's rule grades), its transcoder features
    (each feature's mean activation over the positions of the concept's steered trial-1
    prompt, at the sweep's largest strength, every transcoder after the injection layer) and
    its vector's projection on the vectors' first principal component; nested ridge R² of
    the rates on each (``concepts.csv``: the rates and projections)."""
    import numpy as np
    import pandas as pd
    import torch

    from mechintro.analysis.directions.geometry import ridge_cv
    from mechintro.analysis.transcoders import feature_activations
    from mechintro.app.report import choose_grader, graded_trials, load_grades
    from mechintro.experiments.protocols import get
    from mechintro.experiments.sweeps import load_frozen, load_results, run_sweep
    from mechintro.models import tokenizer_of

    p = build(R2Params, cfg, "transcoder-r2")
    spec = sweep_spec(p.sweep, model=model)
    if small:
        spec = dataclasses.replace(
            spec, n_controls=min(spec.n_controls, 2), max_new_tokens=min(spec.max_new_tokens, 6)
        )
    run_sweep(model, spec, out / "sweep", batch_size=batch_size, progress=False)
    sweep_table(out / "sweep")
    trials, grades = load_results(out / "sweep"), load_grades(out / "sweep")
    graded = graded_trials(trials, grades, choose_grader(grades) or "rule")
    injected = graded[graded.injected.astype(bool) & ~graded.forced.astype(bool)]
    hits = (injected.detection == "YES").astype(float)
    rates = {str(w): float(r) for w, r in hits.groupby(injected.concept).mean().items()}
    words = sorted(rates)
    layer, strength = spec.layers[0], max(spec.strengths)
    frozen = load_frozen(out / "sweep")
    added = torch.stack([frozen.rows[(layer, w)] for w in words])  # what a strength of 1 adds
    tcs = {k: v for k, v in _transcoders(p.transcoders).items() if k > layer}
    protocol = get(spec.protocols[0])
    tok = tokenizer_of(model)
    prompts = [protocol.prompt(1, concept=w, tokenizer=tok) for w in words]
    inj = protocol.injection(layer, added, strength, mode=spec.modes[0], start=spec.start)
    fa = feature_activations(model, tcs, prompts, injection=inj, batch_size=batch_size)
    idx = fa.prompt.numpy()
    feats = []
    for L in sorted(fa.acts):
        dense = fa.acts[L].to_dense().numpy()
        feats.append(np.stack([dense[idx == i].mean(0) for i in range(len(words))]))
    X = np.concatenate(feats, axis=1)
    V = added.double().numpy()
    Vc = V - V.mean(0)
    pc1 = np.linalg.svd(Vc, full_matrices=False)[2][0]
    proj = (V @ pc1)[:, None]
    y = [rates[w] for w in words]
    kw = dict(outer=p.outer, inner=p.inner, seed=p.seed, words=words)
    try:
        res = {
            "transcoder_features": ridge_cv(X, y, **kw),
            "pc1_projection": ridge_cv(proj, y, **kw),
        }
    except ValueError as e:
        raise UsageError(f"[transcoder-r2]: {e}") from None
    per = pd.DataFrame({"concept": words, "detection_rate": y, "pc1_projection": proj[:, 0]})
    atomic_write_text(out / "concepts.csv", per.to_csv(index=False))
    return pd.DataFrame(
        [
            {
                "predictor": k,
                "r2": r.r2,
                "correlation": r.correlation,
                "n_concepts": len(words),
                "n_features": X.shape[1] if k == "transcoder_features" else 1,
            }
            for k, r in res.items()
        ]
    )
