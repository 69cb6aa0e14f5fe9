"""Macar et al.'s geometry experiments end to end (docs/protocols.md §7).

:func:`run_geometry` runs a detection and forced-identification sweep over concepts × layers,
grades it with the rule grader, and from the per-concept detection rates at the main layer
computes, with :mod:`mechintro.analysis.directions.geometry`:

* PC1 of the concept vectors against the detected − undetected mean difference and the
  refusal direction at that layer (``experiments/04h_aggregation_analysis.py``; reported
  0.97 and −0.09 on Gemma3-27B);
* the projection/residual swap, injected and graded (``04d_ridge_swap.py``);
* nested ridge R² of the rates on the scalar projection on the mean difference, on the whole
  vectors, on the verbalizability baseline and, given transcoders, on their features after
  the injection layer (``04h``; reported 0.31 and 0.62), per fold and pooled;
* detection against forced identification by layer and their correlation.

The tables go to ``out`` (``cosines.csv``, ``swap.csv``, ``regressions.csv``,
``by_layer.csv``, ``geometry.json``) and come back as one long DataFrame (column
``analysis``). When every concept falls on one side of ``threshold``, the split falls back to
the median rate (as the released 04b does); when all rates are equal, the analyses that need
two groups are skipped and say so.

Example::

    table = run_geometry(model, {"layer": 37, "concepts": words}, Path("runs/geo"), small=False)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mechintro.models import TLModel

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeometryConfig:
    """The geometry run's settings (preset ``macar-geometry``: layer 37, strength 4)."""

    concepts: tuple[str, ...] = ()  # empty: the word list `word_list`
    word_list: str = "lindsey_concepts"
    baseline: tuple[str, ...] = ()  # the vectors' baseline words (empty: the method's)
    method: str = "lindsey"
    layer: int | None = None  # the main layer (None: 0.6 of the depth, Macar's 37 of 62)
    layers: tuple[int, ...] = ()  # the by-layer comparison (empty: `depths` and the main one)
    depths: tuple[float, ...] = (0.3, 0.45, 0.6, 0.75)
    strength: float = 4.0
    unit: str = "raw"
    threshold: float = 0.5  # detected: rate >= threshold
    trial_numbers: tuple[int, ...] = (1, 2, 3, 4, 5)
    temperature: float = 0.0
    max_new_tokens: int = 100
    n_folds: int = 5
    inner_folds: int = 3
    refusal: bool = True  # the refusal direction (shipped prompts, Macar's site)
    swap: bool = True
    transcoders: str | None = None  # "builtin" (the organism's) or a folder of layer_L folders
    seed: int = 42
    batch_size: int = 32

    def __post_init__(self) -> None:
        for name in ("concepts", "baseline", "layers", "depths", "trial_numbers"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.n_folds < 2 or self.inner_folds < 2:
            raise ValueError("n_folds and inner_folds must be >= 2")
        if not self.layers and not self.depths and self.layer is None:
            raise ValueError("give layer, layers or depths")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def small_geometry(cfg: GeometryConfig) -> GeometryConfig:
    """A smoke-test size: 8 concepts at most, 2 trial numbers, 6 tokens, 2 × 2 folds."""
    return replace(
        cfg,
        concepts=cfg.concepts[:8],
        trial_numbers=cfg.trial_numbers[:2],
        max_new_tokens=min(cfg.max_new_tokens, 6),
        n_folds=2,
        inner_folds=2,
    )


def _graded(model: TLModel, spec: Any, out: Path, vectors: Any, batch_size: int) -> Any:
    from mechintro.experiments.grades import grade_results, graded_trials, load_grades
    from mechintro.experiments.grading import RuleGrader
    from mechintro.experiments.sweeps import load_results, run_sweep

    run_sweep(model, spec, out, vectors=vectors, batch_size=batch_size, progress=False)
    grader = RuleGrader()
    grade_results(out, grader, progress=False)
    return graded_trials(load_results(out), load_grades(out), grader.name)


def _rates(graded: pd.DataFrame, layer: int) -> dict[str, float]:
    rows = graded[
        graded.injected.astype(bool) & ~graded.forced.astype(bool) & (graded.layer == layer)
    ]
    hit = (rows.detection == "YES").astype(float)
    return {str(w): float(r) for w, r in hit.groupby(rows.concept).mean().items()}


def _split(rates: Mapping[str, float], threshold: float) -> float | None:
    """``threshold``, or the median where it leaves one group empty; None: no split."""
    vals = np.array(list(rates.values()))
    for t in (threshold, float(np.median(vals))):
        hit = vals >= t
        if hit.any() and not hit.all():
            return float(t)
    return None


def run_geometry(
    model: TLModel, cfg: Mapping[str, Any] | GeometryConfig, out: Path, *, small: bool
) -> pd.DataFrame:
    """Run every geometry analysis of the module doc into ``out``; one long table back."""
    import pandas as pd

    from mechintro.analysis.directions import geometry as geo
    from mechintro.analysis.directions import refusal_directions
    from mechintro.experiments.sweeps import SweepSpec, load_frozen
    from mechintro.io import atomic_write_text
    from mechintro.models import layer_at_depth
    from mechintro.vectors import ConceptVector, word_list

    config = cfg if isinstance(cfg, GeometryConfig) else GeometryConfig(**dict(cfg))
    if not config.concepts:
        config = replace(config, concepts=tuple(word_list(config.word_list)))
    if small:
        config = small_geometry(config)
    words = list(config.concepts)
    layer = config.layer if config.layer is not None else layer_at_depth(model, 0.6)
    layers = sorted(
        set(config.layers or (layer_at_depth(model, f) for f in config.depths)) | {layer}
    )
    out = Path(out)
    spec = SweepSpec(
        concepts=tuple(words),
        layers=tuple(layers),
        strengths=(config.strength,),
        protocols=("detection", "forced"),
        trial_numbers=config.trial_numbers,
        temperature=config.temperature,
        max_new_tokens=config.max_new_tokens,
        seed=config.seed,
        method=config.method,
        baseline=config.baseline,
        unit=config.unit,
        readout=False,
    )
    graded = _graded(model, spec, out / "sweep", None, config.batch_size)
    rates = _rates(graded, layer)
    frozen = load_frozen(out / "sweep")
    vectors = {w: frozen.rows[(layer, w)].float() for w in words}
    tables: dict[str, pd.DataFrame] = {}
    summary: dict[str, Any] = {"layer": layer, "layers": layers, "config": config.to_dict()}

    # detection vs forced identification, by layer
    by_layer = geo.detection_identification_by_layer(graded)
    tables["by_layer"] = by_layer.table
    summary["detection_identification_correlation"] = by_layer.correlation

    threshold = _split(rates, config.threshold)
    summary["threshold_used"] = threshold
    if threshold is None:
        logger.warning("every concept has the same detection rate: no split, no direction")
        summary["skipped"] = "cosines, swap and projection: every rate is equal"
        direction = None
    else:
        direction = geo.detection_direction(vectors, rates, threshold=threshold).unit
        refusal = None
        if config.refusal:
            refusal = refusal_directions(model, batch_size=config.batch_size).directions[layer]
        cos = geo.direction_cosines(vectors, rates, refusal=refusal, threshold=threshold)
        tables["cosines"] = cos.to_frame()
        summary.update(pc1_mean_diff=cos.pc1_mean_diff, pc1_refusal=cos.pc1_refusal)

    if direction is not None and threshold is not None and config.swap:
        swaps = geo.swap_vectors(vectors, rates, direction, threshold=threshold)
        named = {
            s.name: ConceptVector(s.name, s.vector, layer, f"swap:{s.condition}") for s in swaps
        }
        # the vectors are what a strength of 1 adds in the spec's unit: inject them raw
        swap_spec = replace(
            spec, concepts=tuple(named), layers=(layer,), protocols=("detection",), unit="raw"
        )
        swap_rates = _rates(
            _graded(model, swap_spec, out / "swap", {layer: named}, config.batch_size), layer
        )
        tables["swap"] = pd.DataFrame(
            [
                {
                    "group": s.group,
                    "condition": s.condition,
                    "concept": s.word,
                    "source": s.source,
                    "detection": swap_rates.get(s.name, float("nan")),
                }
                for s in swaps
            ]
        )

    predictors: dict[str, dict[str, Any]] = {"vector": {w: vectors[w].numpy() for w in words}}
    if direction is not None:
        predictors["projection"] = {w: float(vectors[w] @ direction) for w in words}
    verb = geo.verbalizability(vectors, words, model.W_U.detach(), model.tokenizer)
    if len(verb) >= 2 * config.n_folds:
        predictors["verbalizability"] = verb
    else:
        summary["verbalizability"] = f"{len(verb)} concepts with a single-token spelling: skipped"
    if config.transcoders:
        predictors["transcoder_features"] = _features(model, config, words, layer, vectors)
    try:
        tables["regressions"] = geo.rate_regressions(
            rates, predictors, outer=config.n_folds, inner=config.inner_folds, seed=config.seed
        )
    except ValueError as e:
        summary["regressions"] = f"skipped: {e}"
    for name, table in tables.items():
        atomic_write_text(out / f"{name}.csv", table.to_csv(index=False))
    atomic_write_text(out / "geometry.json", json.dumps(summary, indent=2, default=str) + "\n")
    return pd.concat([t.assign(analysis=k) for k, t in tables.items()], ignore_index=True)


def _features(
    model: TLModel,
    config: GeometryConfig,
    words: list[str],
    layer: int,
    vectors: Mapping[str, torch.Tensor],
) -> dict[str, np.ndarray]:
    """Each concept's transcoder features after ``layer``: the mean activation over the
    real tokens of its steered detection prompt (trial 1), all transcoders concatenated."""
    from mechintro.analysis.transcoders import (
        feature_activations,
        load_transcoder,
        organism_transcoders,
    )
    from mechintro.experiments.protocols import get

    source = str(config.transcoders)
    if source == "builtin":
        tcs = organism_transcoders()
    else:
        folders = sorted(Path(source).glob("layer_*"))
        if not folders:
            raise FileNotFoundError(f"{source}: no layer_L transcoder folders in it")
        tcs = {int(p.name.removeprefix("layer_")): load_transcoder(p) for p in folders}
    tcs = {k: v for k, v in tcs.items() if k > layer}
    if not tcs:
        raise ValueError(f"no transcoder after the injection layer {layer}")
    protocol = get("detection")
    prompts = [protocol.prompt(1, concept=w, tokenizer=model.tokenizer) for w in words]
    added = torch.stack([vectors[w] for w in words])
    inj = protocol.injection(layer, added, config.strength)
    fa = feature_activations(model, tcs, prompts, injection=inj, batch_size=config.batch_size)
    idx = fa.prompt.numpy()
    per_layer = []
    for L in sorted(fa.acts):
        dense = fa.acts[L].to_dense().numpy()
        per_layer.append(np.stack([dense[idx == i].mean(0) for i in range(len(words))]))
    X = np.concatenate(per_layer, axis=1)
    return {w: X[i] for i, w in enumerate(words)}
