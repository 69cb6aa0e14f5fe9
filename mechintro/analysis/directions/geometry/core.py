"""The geometry of detection: detected minus undetected, nested ridge, bidirectional steering
(Macar et al. 2026, docs/protocols.md §7)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mechintro.vectors import ConceptVector

if TYPE_CHECKING:
    import pandas as pd


def _vector_of(v: ConceptVector | Tensor) -> Tensor:
    t = v.vector if isinstance(v, ConceptVector) else torch.as_tensor(v)
    t = t.detach().to("cpu", torch.float32)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"a concept vector is [d_model], got shape {tuple(t.shape)}")
    return t


def _matrix(
    vectors: Mapping[str, ConceptVector | Tensor], words: Sequence[str]
) -> Float[Tensor, "n d_model"]:
    missing = [w for w in words if w not in vectors]
    if missing:
        raise KeyError(f"no vectors for {missing}: extract them first (extract_vectors(...))")
    rows = [_vector_of(vectors[w]) for w in words]
    if len({r.numel() for r in rows}) > 1:
        raise ValueError("vectors have different widths: were they taken from different models?")
    layers = {
        v.layer for w in words if isinstance(v := vectors[w], ConceptVector) and v.layer is not None
    }
    if len(layers) > 1:
        raise ValueError(f"vectors come from layers {sorted(layers)}: use one layer")
    return torch.stack(rows)


def _check_rates(rates: Mapping[str, float | bool]) -> dict[str, float]:
    if not isinstance(rates, Mapping) or not rates:
        raise ValueError("rates must be a non-empty mapping word -> detection rate (or bool)")
    out = {}
    for w, r in rates.items():
        x = float(r)
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"the detection rate of {w!r} is {r!r}: rates lie in [0, 1]")
        out[w] = x
    return out


def per_concept_rates(df: pd.DataFrame, *, column: str | None = None) -> dict[str, float]:
    """Detection rate per injected word of a trials table (:func:`~mechintro.experiments.
    trials.detection_trials`, graded or not): the mean of ``column`` (default:
    ``detection == "YES"`` if graded, else ``claim``) over the rows with a word."""
    inj = df[df.word.map(lambda w: isinstance(w, str))]
    if column is None:
        hit = inj.detection == "YES" if "detection" in inj else inj.claim.astype(bool)
    else:
        if column not in inj:
            raise KeyError(f"no column {column!r}; the table has {list(inj.columns)}")
        hit = inj[column].astype(float)
    return {str(w): float(v) for w, v in hit.astype(float).groupby(inj.word).mean().items()}


@dataclass(frozen=True)
class DetectionDirection:
    """Mean vector of detected concepts minus that of undetected ones (Macar et al. 2026).

    ``direction`` is a :class:`~mechintro.vectors.ConceptVector` (method
    ``"mean-difference"``, not normalised: its norm says how far apart the groups are) with
    the provenance of the vectors it came from; ``unit`` is its direction.
    """

    direction: ConceptVector
    detected: tuple[str, ...]
    undetected: tuple[str, ...]
    threshold: float

    @property
    def unit(self) -> Float[Tensor, " d_model"]:
        return self.direction.vector / self.direction.norm


def detection_direction(
    vectors: Mapping[str, ConceptVector | Tensor],
    rates: Mapping[str, float | bool],
    *,
    threshold: float = 0.5,
) -> DetectionDirection:
    """Split concepts by detection (``rate >= threshold``, or a bool) and take the mean
    difference of their vectors, detected − undetected.

    Example::

        rates = per_concept_rates(grade_trials(trials, category))
        d = detection_direction(vectors, rates, threshold=0.5)
    """
    r = _check_rates(rates)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    words = list(r)
    X = _matrix(vectors, words)
    hit = torch.tensor([r[w] >= threshold for w in words])
    if bool(hit.all()) or not bool(hit.any()):
        side = "detected" if bool(hit.all()) else "undetected"
        raise ValueError(
            f"every concept is {side} at threshold {threshold}: the split needs both groups "
            "(choose another threshold, or other concepts)"
        )
    diff = X[hit].mean(0) - X[~hit].mean(0)
    ref = next((v for v in vectors.values() if isinstance(v, ConceptVector)), None)
    detected = tuple(w for w, h in zip(words, hit.tolist()) if h)
    undetected = tuple(w for w, h in zip(words, hit.tolist()) if not h)
    cv = ConceptVector(
        "detected-undetected",
        diff,
        ref.layer if ref is not None else None,
        "mean-difference",
        model=ref.model if ref is not None else None,
        revision=ref.revision if ref is not None else None,
        fingerprint=ref.fingerprint if ref is not None else None,
        template=f"mean(detected) − mean(undetected), rate >= {threshold:g}",
        baseline=undetected,
        resid_norm=ref.resid_norm if ref is not None else None,
    )
    return DetectionDirection(cv, detected, undetected, float(threshold))


#: ridge penalties, in units of the mean squared norm of the centred training rows
ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-4, 3, 15))


@dataclass(frozen=True, eq=False)
class RidgeResult:
    """Nested cross-validated ridge regression: out-of-fold predictions and their fit.

    ``r2`` is the pooled out-of-fold R² (``1 − Σ(y−ŷ)²/Σ(y−ȳ)²``; 0 is the mean's score,
    negative is worse), ``correlation`` the Pearson r of ``predictions`` with ``y``,
    ``fold_r2`` each outer fold's R² (about the fold's own mean) and ``alphas`` the penalty
    chosen in each outer fold by the inner cross-validation (units: :data:`ALPHAS`).
    """

    r2: float
    correlation: float
    fold_r2: tuple[float, ...]
    alphas: tuple[float, ...]
    predictions: np.ndarray
    y: np.ndarray
    folds: np.ndarray  # the outer fold of each sample
    alpha_grid: tuple[float, ...]
    words: tuple[str, ...] | None = None


def _folds(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty(n, dtype=np.int64)
    for f, idx in enumerate(np.array_split(rng.permutation(n), k)):
        out[idx] = f
    return out


def _ridge_predict(
    Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, alphas: Sequence[float]
) -> np.ndarray:
    """Predictions ``[len(alphas), n_test]`` of ridge fits with an unpenalised intercept.

    One SVD of the centred training matrix serves every penalty; penalties are scaled by the
    mean squared norm of the centred rows, so the grid does not depend on the vectors' scale.
    """
    mx, my = Xtr.mean(0), ytr.mean()
    Xc, yc = Xtr - mx, ytr - my
    U, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    scale = float((s**2).sum()) / max(len(ytr), 1)
    scale = scale if scale > 0 else 1.0
    Uy = U.T @ yc
    proj = (Xte - mx) @ Vt.T  # [n_test, rank]
    out = np.empty((len(alphas), Xte.shape[0]))
    for i, a in enumerate(alphas):
        coef = s / (s**2 + a * scale) * Uy
        out[i] = proj @ coef + my
    return out


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss = float(((y - y.mean()) ** 2).sum())
    return float("nan") if ss == 0 else 1.0 - float(((y - pred) ** 2).sum()) / ss


def ridge_cv(
    X: Float[Tensor, "n d"] | np.ndarray,
    y: Float[Tensor, " n"] | np.ndarray | Sequence[float],
    *,
    alphas: Sequence[float] = ALPHAS,
    outer: int = 5,
    inner: int = 5,
    seed: int = 0,
    words: Sequence[str] | None = None,
) -> RidgeResult:
    """Ridge regression of ``y`` on ``X`` scored out of fold, with its penalty chosen inside.

    The outer ``outer``-fold split scores the model; inside each outer training set, an
    ``inner``-fold split picks the penalty with the lowest pooled squared error (ties: the
    largest penalty), which is then refitted on the whole outer training set. Nothing of a
    test fold is seen when its prediction is made. Seeded (``numpy`` generator).

    Example::

        res = ridge_cv(X, y, outer=5, inner=5, seed=0)
        res.r2, res.correlation, res.alphas
    """
    Xn = np.asarray(X.detach().cpu() if isinstance(X, Tensor) else X, dtype=np.float64)
    yn = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y, dtype=np.float64)
    if Xn.ndim != 2 or yn.ndim != 1 or Xn.shape[0] != yn.shape[0]:
        raise ValueError(
            f"X must be [n, d] and y [n] with the same n, got {Xn.shape} and {yn.shape}"
        )
    if not (np.isfinite(Xn).all() and np.isfinite(yn).all()):
        raise ValueError("X or y contains NaN or inf")
    for name, k in (("outer", outer), ("inner", inner)):
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"{name} must be an int >= 2 (folds), got {k!r}")
    n = Xn.shape[0]
    smallest_train = n - math.ceil(n / outer)
    if smallest_train < inner or n < outer:
        raise ValueError(
            f"{n} samples are too few for {outer} outer × {inner} inner folds: give more "
            "samples or fewer folds"
        )
    grid = [float(a) for a in alphas]
    if not grid or any(not (math.isfinite(a) and a > 0) for a in grid):
        raise ValueError("alphas must be a non-empty list of positive numbers")
    if words is not None and len(words) != n:
        raise ValueError(f"{len(words)} words for {n} samples")
    rng = np.random.default_rng(seed)
    folds = _folds(n, outer, rng)
    pred = np.empty(n)
    chosen, fold_r2 = [], []
    for f in range(outer):
        tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        inner_folds = _folds(len(tr), inner, rng)
        sse = np.zeros(len(grid))
        for g in range(inner):
            itr, ite = tr[inner_folds != g], tr[inner_folds == g]
            p = _ridge_predict(Xn[itr], yn[itr], Xn[ite], grid)
            sse += ((p - yn[ite]) ** 2).sum(1)
        best = max(range(len(grid)), key=lambda i: (-sse[i], grid[i]))
        chosen.append(grid[best])
        pred[te] = _ridge_predict(Xn[tr], yn[tr], Xn[te], [grid[best]])[0]
        fold_r2.append(_r2(yn[te], pred[te]))
    corr = float(np.corrcoef(pred, yn)[0, 1]) if pred.std() > 0 and yn.std() > 0 else float("nan")
    return RidgeResult(
        r2=_r2(yn, pred),
        correlation=corr,
        fold_r2=tuple(fold_r2),
        alphas=tuple(chosen),
        predictions=pred,
        y=yn,
        folds=folds,
        alpha_grid=tuple(grid),
        words=tuple(words) if words is not None else None,
    )


def detection_ridge(
    vectors: Mapping[str, ConceptVector | Tensor],
    rates: Mapping[str, float | bool],
    **kwargs: Any,
) -> RidgeResult:
    """:func:`ridge_cv` of each concept's detection rate on its vector (``kwargs`` go there).

    Example::

        res = detection_ridge(vectors, per_concept_rates(trials), outer=5, inner=4)
    """
    r = _check_rates(rates)
    words = list(r)
    X = _matrix(vectors, words)
    return ridge_cv(X, [r[w] for w in words], words=words, **kwargs)


@dataclass(frozen=True)
class SteeringPair:
    """``a − b`` and ``b − a``: steer towards one concept and away from the other, both ways."""

    a_minus_b: ConceptVector
    b_minus_a: ConceptVector


def bidirectional(a: ConceptVector, b: ConceptVector) -> SteeringPair:
    """The two difference vectors of concepts ``a`` and ``b`` (Macar et al.'s bidirectional
    steering), with provenance: method ``"difference"``, ``baseline`` = the subtracted word.

    Example::

        pair = bidirectional(vectors["Dust"], vectors["Peace"])
        Injection(layer=20, vector=pair.a_minus_b.vector, strength=4.0)
    """
    for name, v in (("a", a), ("b", b)):
        if not isinstance(v, ConceptVector):
            raise TypeError(f"{name} must be a ConceptVector, got {type(v).__name__}")
    if a.vector.numel() != b.vector.numel():
        raise ValueError("a and b have different widths: were they taken from different models?")
    if a.layer is not None and b.layer is not None and a.layer != b.layer:
        raise ValueError(f"a is from layer {a.layer} and b from layer {b.layer}: use one layer")
    for attr in ("model", "fingerprint"):
        x, y = getattr(a, attr), getattr(b, attr)
        if x is not None and y is not None and x != y:
            raise ValueError(f"a and b come from different models ({attr}: {x!r} vs {y!r})")
    if a.word == b.word and torch.equal(a.vector, b.vector):
        raise ValueError("a and b are the same vector: the differences would be zero")
    norms = [x for x in (a.resid_norm, b.resid_norm) if x is not None]

    def diff(p: ConceptVector, q: ConceptVector) -> ConceptVector:
        return ConceptVector(
            f"{p.word}-{q.word}",
            p.vector - q.vector,
            p.layer if p.layer is not None else q.layer,
            "difference",
            model=p.model or q.model,
            revision=p.revision or q.revision,
            fingerprint=p.fingerprint or q.fingerprint,
            prompt_format=p.prompt_format,
            template=f"{p.method}:{p.word} − {q.method}:{q.word}",
            baseline=q.word,
            resid_norm=sum(norms) / len(norms) if norms else None,
        )

    return SteeringPair(diff(a, b), diff(b, a))
