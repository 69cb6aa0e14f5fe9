"""Macar et al.'s further geometry of detection (docs/protocols.md §7).

From the released ``experiments/04b_vector_geometry.py``, ``04d_ridge_swap.py`` and
``04h_aggregation_analysis.py``: the first principal component of the concept vectors
against the detected − undetected mean difference and the refusal direction
(:func:`direction_cosines`; reported cosines 0.97 and −0.09); the projection/residual swap
(:func:`swap_vectors`); nested ridge regressions of per-concept detection rates on any
predictors, e.g. transcoder features, the scalar projection and the verbalizability baseline
(:func:`rate_regressions`, :func:`verbalizability`; reported R² 0.62 and 0.31); detection
against forced identification across layers (:func:`detection_identification_by_layer`).
All take vectors and rates already measured; :mod:`mechintro.experiments.geometry` runs
the trials.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mechintro.analysis.directions.geometry.core import (
    _check_rates,
    _matrix,
    detection_direction,
    ridge_cv,
)
from mechintro.vectors import ConceptVector

if TYPE_CHECKING:
    import pandas as pd


def _unit(v: Tensor) -> Tensor:
    n = torch.linalg.vector_norm(v)
    if float(n) == 0:
        raise ValueError("a zero vector has no direction")
    return v / n


def pc1_direction(
    vectors: Mapping[str, ConceptVector | Tensor],
    words: Sequence[str],
    rates: Mapping[str, float | bool] | None = None,
) -> tuple[Float[Tensor, " d_model"], float]:
    """The first principal component of the L2-normalised concept vectors (centred, as
    Macar et al.'s PCA) and the share of variance it explains. A component's sign is
    arbitrary: with ``rates`` it is the one whose projections rise with detection.

    Example::

        pc1, share = pc1_direction(vectors, words, rates)
    """
    X = _matrix(vectors, words).double()
    if X.shape[0] < 2:
        raise ValueError("PCA needs at least two concepts")
    X = X / torch.linalg.vector_norm(X, dim=1, keepdim=True).clamp(min=1e-300)
    Xc = X - X.mean(0)
    _, s, vt = torch.linalg.svd(Xc, full_matrices=False)
    pc1 = vt[0]
    if rates is not None:
        r = _check_rates(rates)
        y = torch.tensor([r[w] for w in words], dtype=torch.float64)
        if float(((Xc @ pc1) * (y - y.mean())).sum()) < 0:
            pc1 = -pc1
    share = float(s[0] ** 2 / (s**2).sum()) if float((s**2).sum()) > 0 else float("nan")
    return pc1.float(), share


@dataclass(frozen=True)
class DirectionCosines:
    """Cosines between PC1 of the concept vectors, the detected − undetected mean difference
    and (if given) the refusal direction at the same layer (Macar et al.: 0.97 and −0.09)."""

    pc1_mean_diff: float
    pc1_refusal: float | None
    mean_diff_refusal: float | None
    pc1_variance: float  # share of variance PC1 explains
    n_concepts: int
    threshold: float

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        pairs = [
            ("pc1", "mean_diff", self.pc1_mean_diff),
            ("pc1", "refusal", self.pc1_refusal),
            ("mean_diff", "refusal", self.mean_diff_refusal),
        ]
        return pd.DataFrame(
            [{"a": a, "b": b, "cosine": c} for a, b, c in pairs if c is not None]
        ).assign(pc1_variance=self.pc1_variance, n_concepts=self.n_concepts)


def direction_cosines(
    vectors: Mapping[str, ConceptVector | Tensor],
    rates: Mapping[str, float | bool],
    *,
    refusal: Tensor | None = None,
    threshold: float = 0.5,
) -> DirectionCosines:
    """PC1 (:func:`pc1_direction`, oriented with the rates) against the mean-difference
    direction (:func:`detection_direction` at ``threshold``) and ``refusal`` (a
    ``[d_model]`` direction, e.g. ``refusal_directions(model).directions[layer]``).

    Example::

        direction_cosines(vectors, rates, refusal=ref.directions[37]).to_frame()
    """
    r = _check_rates(rates)
    words = list(r)
    pc1, share = pc1_direction(vectors, words, r)
    md = detection_direction(vectors, r, threshold=threshold).unit.double()
    ref = None if refusal is None else _unit(torch.as_tensor(refusal).detach().double().cpu())
    if ref is not None and ref.shape != md.shape:
        raise ValueError(f"refusal is {tuple(ref.shape)}, the vectors [{md.numel()}]")
    p = pc1.double()
    return DirectionCosines(
        pc1_mean_diff=float(p @ md),
        pc1_refusal=None if ref is None else float(p @ ref),
        mean_diff_refusal=None if ref is None else float(md @ ref),
        pc1_variance=share,
        n_concepts=len(words),
        threshold=float(threshold),
    )


#: the projection/residual swap conditions (Macar et al., 04d_ridge_swap.py)
SWAP_CONDITIONS = ("baseline", "projection-swap", "residual-swap-random", "residual-swap-nearest")


@dataclass(frozen=True, eq=False)
class SwapVector:
    """One vector of the swap experiment: ``word``'s projection on the direction and a
    residual (its own, or ``source``'s, a concept of the other group), or its projection
    shifted by the difference of the two groups' mean projections."""

    group: str  # "detected" or "undetected": the group of `word`
    condition: str  # one of SWAP_CONDITIONS
    word: str
    source: str | None  # the concept whose residual is used (residual swaps)
    vector: Float[Tensor, " d_model"]

    @property
    def name(self) -> str:
        """A unique concept name for a sweep: ``word|condition``."""
        return f"{self.word}|{self.condition}"


def swap_vectors(
    vectors: Mapping[str, ConceptVector | Tensor],
    rates: Mapping[str, float | bool],
    direction: Tensor,
    *,
    threshold: float = 0.5,
    seed: int = 0,
) -> list[SwapVector]:
    """The projection/residual swap (Macar et al. 2026, ``experiments/04d_ridge_swap.py``).

    Each vector is split along the unit ``direction`` ŵ: ``v = (v·ŵ)ŵ + δ``. For every concept
    of each group (detected: ``rate >= threshold``) four vectors: ``baseline`` (``v``);
    ``projection-swap`` (the projection moved by the other group's mean projection minus its
    own group's, the residual kept); ``residual-swap-random`` (the projection kept, the
    residual of a random concept of the other group, seeded); ``residual-swap-nearest`` (the
    residual of the other group's concept whose residual is most similar, by cosine).
    Injecting them asks which part carries detection.

    Example::

        swaps = swap_vectors(vectors, rates, detection_direction(vectors, rates).unit)
    """
    r = _check_rates(rates)
    words = list(r)
    X = _matrix(vectors, words).double()
    w = _unit(torch.as_tensor(direction).detach().double().cpu())
    if w.shape != X.shape[1:]:
        raise ValueError(f"direction is {tuple(w.shape)}, the vectors [{X.shape[1]}]")
    s = X @ w
    resid = X - s[:, None] * w
    hit = [r[x] >= threshold for x in words]
    if all(hit) or not any(hit):
        raise ValueError(
            f"every concept is {'detected' if all(hit) else 'undetected'} at threshold "
            f"{threshold}: the swap needs both groups"
        )
    rng = np.random.default_rng(seed)
    unit_resid = resid / torch.linalg.vector_norm(resid, dim=1, keepdim=True).clamp(min=1e-300)
    out: list[SwapVector] = []
    for group, flag in (("detected", True), ("undetected", False)):
        mine = [i for i, h in enumerate(hit) if h == flag]
        other = [i for i, h in enumerate(hit) if h != flag]
        shift = float(s[other].mean() - s[mine].mean())
        for i in mine:
            rand = other[int(rng.integers(len(other)))]
            near = other[int(torch.argmax(unit_resid[other] @ unit_resid[i]))]
            rows = (
                ("baseline", None, X[i]),
                ("projection-swap", None, (s[i] + shift) * w + resid[i]),
                ("residual-swap-random", words[rand], s[i] * w + resid[rand]),
                ("residual-swap-nearest", words[near], s[i] * w + resid[near]),
            )
            out += [SwapVector(group, c, words[i], src, v.float()) for c, src, v in rows]
    return out


def verbalizability(
    vectors: Mapping[str, ConceptVector | Tensor],
    words: Sequence[str],
    unembed: Float[Tensor, "d_model vocab"],
    tokenizer: Any,
) -> dict[str, float]:
    """Each concept's largest logit ``v · W_U[:, t]`` over its single-token spellings (the word,
    lowercased, and with a leading space, capitalised or not): how directly its vector says
    the word (Macar et al.'s verbalizability baseline, ``04h_aggregation_analysis.py``).
    Words with no single-token spelling are left out.

    Example::

        verbalizability(vectors, words, model.W_U, model.tokenizer)
    """
    X = _matrix(vectors, words)
    W = torch.as_tensor(unembed).detach().float().cpu()
    if W.ndim != 2 or W.shape[0] != X.shape[1]:
        raise ValueError(f"unembed must be [d_model={X.shape[1]}, vocab], got {tuple(W.shape)}")
    out = {}
    for i, w in enumerate(words):
        spellings = (w, w.lower(), f" {w}", f" {w.lower()}", f" {w.capitalize()}")
        ids = {t[0] for t in (tokenizer.encode(x, add_special_tokens=False) for x in spellings)
               if len(t) == 1}  # fmt: skip
        if ids:
            out[w] = max(float(X[i] @ W[:, t]) for t in ids)
    return out


def rate_regressions(
    rates: Mapping[str, float | bool],
    predictors: Mapping[str, Mapping[str, Sequence[float] | np.ndarray | float]],
    *,
    outer: int = 5,
    inner: int = 3,
    seed: int = 0,
) -> pd.DataFrame:
    """Nested ridge (:func:`ridge_cv`) of per-concept detection rates on each predictor
    (``{name: {word: features}}``, e.g. transcoder features, the scalar projection on the
    mean-difference direction, :func:`verbalizability`), over the words each covers.

    One row per predictor and outer fold (``fold`` 0..k-1, ``r2`` about the fold's mean),
    then ``fold="mean"`` (their mean, ``r2_se`` its standard error) and ``fold="pooled"``
    (the R² of all out-of-fold predictions). Macar et al. report 0.62 for transcoder
    features against 0.31 for the projection (their penalty chosen on the test folds; here
    inside each training fold).

    Example::

        rate_regressions(rates, {"projection": proj, "verbalizability": verb})
    """
    import pandas as pd

    r = _check_rates(rates)
    rows: list[dict[str, Any]] = []
    for name, feats in predictors.items():
        words = [w for w in r if w in feats]
        X = np.stack([np.atleast_1d(np.asarray(feats[w], dtype=np.float64)) for w in words])
        res = ridge_cv(X, [r[w] for w in words], outer=outer, inner=inner, seed=seed, words=words)
        base = {"predictor": name, "n_concepts": len(words), "n_features": X.shape[1]}
        folds = np.asarray(res.fold_r2, dtype=np.float64)
        rows += [{**base, "fold": str(i), "r2": float(v)} for i, v in enumerate(folds)]
        se = float(folds.std(ddof=1) / math.sqrt(len(folds))) if len(folds) > 1 else float("nan")
        rows.append({**base, "fold": "mean", "r2": float(folds.mean()), "r2_se": se})
        rows.append({**base, "fold": "pooled", "r2": res.r2, "correlation": res.correlation})
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class LayerCorrelation:
    """Detection rate and forced-identification rate per injection layer, and the Pearson
    correlation of the two across layers (nan with fewer than 3 layers or a constant)."""

    table: pd.DataFrame
    correlation: float


def detection_identification_by_layer(graded: pd.DataFrame) -> LayerCorrelation:
    """From graded sweep trials (columns ``layer``, ``injected``, ``forced``, ``detection``,
    ``identification``; :func:`~mechintro.experiments.grades.graded_trials`): per layer, the
    share of injected detection trials graded YES and of injected forced-identification
    trials graded YES, and their correlation across layers (Macar et al.).

    Example::

        detection_identification_by_layer(graded).correlation
    """
    missing = {"layer", "injected", "forced", "detection", "identification"} - set(graded)
    if missing:
        raise KeyError(f"graded trials lack columns {sorted(missing)}: grade the sweep first")
    inj = graded[graded.injected.astype(bool) & graded.layer.notna()]
    free, forced = inj[~inj.forced.astype(bool)], inj[inj.forced.astype(bool)]
    det = (free.detection == "YES").groupby(free.layer).mean()
    ident = (forced.identification == "YES").groupby(forced.layer).mean()
    import pandas as pd

    table = pd.DataFrame({"detection": det, "forced_identification": ident}).dropna()
    table.index = table.index.astype(int)
    table = table.rename_axis("layer").reset_index()
    a, b = table.detection.to_numpy(float), table.forced_identification.to_numpy(float)
    ok = len(table) >= 3 and a.std() > 0 and b.std() > 0
    return LayerCorrelation(table, float(np.corrcoef(a, b)[0, 1]) if ok else float("nan"))
