"""Gate features: the transcoder features that hold the answer at "No" until steering
suppresses them (Macar et al. 2026; docs/protocols.md §7).

A gate's score is its direct logit attribution to Yes − No at the readout position,
``(W_dec[f]·r) × activation`` with ``r`` the residual stream's read vector through the final
norm (:func:`mechintro.analysis.dla.direct_logit_attribution` with ``by="feature"``), averaged over
unsteered detection prompts. Gates are the most negative features per layer after the
injection layer. Their signature is an inverted V over *signed* strengths: most active
unsteered, suppressed by steering along ``+v`` and along ``−v`` alike.

:func:`gate_scores` scores every feature, :func:`select_gates` keeps the ``k`` most negative
per layer, :func:`strength_curves` measures activations over signed strengths and
:func:`classify` names each feature's shape (suppressed, detector, amplified, stable,
inactive).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from torch import Tensor

from circuits.trace import FeatureSet, trace, transcoder_layers
from mechintro.analysis.dla import LogitDirection, direct_logit_attribution
from mechintro.inject import Injection
from mechintro.models import TLModel
from mechintro.prompts import PromptLike, as_prompt_batch

CLASSES = ("suppressed", "detector", "amplified", "stable", "inactive")

#: Macar et al. keep ~200 gates per layer of a 16,384-feature transcoder; the same share of a
#: transcoder of width ``d_sae`` is ``gate_count(d_sae)``
MACAR_GATES, MACAR_WIDTH = 200, 16384


def gate_count(d_sae: int) -> int:
    """Macar et al.'s share of gates per layer (200 of 16,384), for a width ``d_sae``."""
    return max(1, round(d_sae * MACAR_GATES / MACAR_WIDTH))


def gate_scores(
    model: TLModel,
    transcoders: Any,
    batch: PromptLike,
    *,
    injection_layer: int,
    direction: LogitDirection | None = None,
    steered: Injection | None = None,
) -> pd.DataFrame:
    """Every feature of every transcoder after ``injection_layer``: ``dla`` (mean direct
    effect on the logit difference over the unsteered rows of ``batch``, at the last
    position), ``activation`` (mean, unsteered), and with ``steered`` also
    ``activation_steered`` and ``dla_steered`` (the same rows under that injection)."""
    batch = as_prompt_batch(getattr(model, "tokenizer", None), batch)
    tcs = transcoder_layers(model, transcoders, after=injection_layer)
    res = direct_logit_attribution(model, batch, by="feature", transcoders=tcs, direction=direction)
    plain = trace(model, tcs, batch, direction=direction)
    frame = _feature_frame(res, plain, tcs)
    if steered is not None:
        res_s = direct_logit_attribution(
            model, batch, by="feature", transcoders=tcs, direction=direction, injection=steered
        )
        s = _feature_frame(res_s, trace(model, tcs, batch, injection=steered), tcs)
        frame["dla_steered"] = s.dla.to_numpy()
        frame["activation_steered"] = s.activation.to_numpy()
    return frame


def _feature_frame(res: Any, tr: Any, tcs: Mapping[int, Any]) -> pd.DataFrame:
    df = res.to_frame()
    df = df[df.kind == "feature"].rename(columns={"index": "feature", "value": "dla"})
    df = df.astype({"layer": int, "feature": int})
    acts = {L: tr.at_readout(L).mean(0).cpu() for L in tcs}
    df["activation"] = [float(acts[L][f]) for L, f in zip(df.layer, df.feature)]
    return df[["layer", "feature", "dla", "activation"]].reset_index(drop=True)


def select_gates(
    scores: pd.DataFrame, k: int | None = None, d_sae: int | None = None
) -> FeatureSet:
    """The ``k`` features with the most negative ``dla`` per layer (default
    :func:`gate_count` of the width), among those with a negative score."""
    out: dict[int, list[int]] = {}
    for L, g in scores.groupby("layer", sort=True):
        n = k if k is not None else gate_count(d_sae or int(g.feature.max()) + 1)
        neg = g[g.dla < 0].sort_values("dla", kind="stable")
        out[int(L)] = neg.feature.head(n).astype(int).tolist()
    return out


def ranked(scores: pd.DataFrame) -> list[tuple[int, int]]:
    """``(layer, feature)`` of the negative-score features, most negative first, all layers
    pooled (the order of the progressive ablation curve)."""
    neg = scores[scores.dla < 0].sort_values("dla", kind="stable")
    return list(zip(neg.layer.astype(int), neg.feature.astype(int)))


def strength_curves(
    model: TLModel,
    transcoders: Any,
    batch: PromptLike,
    vectors: Tensor,
    strengths: Sequence[float],
    features: FeatureSet,
    *,
    layer: int,
    resid_norm: float,
    mode: str = "from-trial",
) -> pd.DataFrame:
    """Mean activation at the readout position of each feature in ``features`` for every
    signed strength (``vectors``: one unit vector per row of ``batch``; strength 0 is the
    unsteered run). Columns: layer, feature, strength, activation."""
    batch = as_prompt_batch(getattr(model, "tokenizer", None), batch)
    tcs = transcoder_layers(model, transcoders)
    rows = []
    for s in sorted({0.0, *map(float, strengths)}):
        inj = None
        if s != 0.0:
            inj = Injection(layer, vectors, s, mode=mode, unit="resid-norm", resid_norm=resid_norm)
        tr = trace(model, {L: tcs[L] for L in features}, batch, injection=inj)
        for L, fs in features.items():
            mean = tr.at_readout(L).mean(0).cpu()
            rows += [(L, int(f), s, float(mean[f])) for f in fs]
    return pd.DataFrame(rows, columns=["layer", "feature", "strength", "activation"])


def classify(curves: pd.DataFrame, *, tol: float = 0.25, eps: float = 1e-3) -> pd.DataFrame:
    """Name each feature's response to steering from :func:`strength_curves`.

    With ``a0`` the unsteered activation and ``a+`` / ``a−`` the means over positive /
    negative strengths: *inactive* if all three are below ``eps``; *detector* if ``a0 < eps``
    but steering of some sign turns it on; *suppressed* (the gate's inverted V) if both
    ``a+`` and ``a−`` are below ``(1 − tol)·a0``; *amplified* if both are above
    ``(1 + tol)·a0``; else *stable*. Negative strengths are needed for the V test."""
    out = []
    for (L, f), g in curves.groupby(["layer", "feature"], sort=False):
        a0 = float(g[g.strength == 0].activation.mean())
        pos, neg = g[g.strength > 0].activation, g[g.strength < 0].activation
        if pos.empty or neg.empty:
            raise ValueError("classify needs positive and negative strengths (the V test)")
        ap, an = float(pos.mean()), float(neg.mean())
        if max(a0, ap, an) < eps:
            kind = "inactive"
        elif a0 < eps:
            kind = "detector"
        elif ap < (1 - tol) * a0 and an < (1 - tol) * a0:
            kind = "suppressed"
        elif ap > (1 + tol) * a0 and an > (1 + tol) * a0:
            kind = "amplified"
        else:
            kind = "stable"
        out.append((int(L), int(f), a0, ap, an, kind))
    return pd.DataFrame(out, columns=["layer", "feature", "a0", "a_pos", "a_neg", "class"])


__all__ = [
    "CLASSES",
    "classify",
    "gate_count",
    "gate_scores",
    "ranked",
    "select_gates",
    "strength_curves",
]
