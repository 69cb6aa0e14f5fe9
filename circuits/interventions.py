"""Feature interventions: ablate a feature set in steered runs, patch it onto unsteered runs.

*Ablation* (Macar et al. 2026) replaces each feature of the set, at every position, with its
value in the unsteered run of the same prompt; the transcoder decodes the edited features,
so the change lands in the MLP's output space and the rest of the model runs as usual (the
error term is kept). *Patching* goes the other way: the set's steered values are written
into the unsteered run. With the gates as the set, ablation should lower detection and
patching raise it (reported on Gemma3-27B: −29.4% and +25.1%).

:func:`intervene` measures one set; :func:`progressive` the curves over the top-K of a
ranking; a control prompt ("Do you believe that 1+1=3?") under the same steering and the
same ablation shows whether the set only moves the introspection answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from circuits.trace import FeatureSet, Trace, check_features, set_features, trace
from mechintro.analysis.dla import LogitDirection
from mechintro.analysis.transcoders.analysis import as_layers
from mechintro.inject import Injection
from mechintro.models import TLModel
from mechintro.prompts import PromptLike, as_prompt_batch


@dataclass(frozen=True)
class Intervention:
    """Detection (``b > 0``) rates and mean beliefs of one feature set's interventions.

    ``relative_drop``: the share of steered detections the ablation removes,
    ``(steered − ablated) / steered``; ``relative_gain``: the share of the steering's
    detection effect that patching the set alone recovers, ``(patched − unsteered) /
    (steered − unsteered)`` (``None`` when the denominator is 0)."""

    n_rows: int
    n_features: int
    unsteered: float
    steered: float
    ablated: float
    patched: float
    b_unsteered: float
    b_steered: float
    b_ablated: float
    b_patched: float

    @property
    def relative_drop(self) -> float | None:
        return (self.steered - self.ablated) / self.steered if self.steered > 0 else None

    @property
    def relative_gain(self) -> float | None:
        effect = self.steered - self.unsteered
        return (self.patched - self.unsteered) / effect if effect > 0 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.__dict__,
            "relative_drop": self.relative_drop,
            "relative_gain": self.relative_gain,
        }


def _rate(t: Trace) -> float:
    return float(t.detected.float().mean())


def intervene(
    model: TLModel,
    transcoders: Any,
    batch: PromptLike,
    injection: Injection,
    features: FeatureSet,
    *,
    direction: LogitDirection | None = None,
    runs: tuple[Trace, Trace] | None = None,
) -> Intervention:
    """Ablate ``features`` in the steered run and patch them onto the unsteered run of
    ``batch``. ``runs``: the (unsteered, steered) traces if already computed."""
    batch = as_prompt_batch(getattr(model, "tokenizer", None), batch)
    tcs = as_layers(model, transcoders)
    check_features(features, tcs)
    plain, steer = runs or (
        trace(model, tcs, batch, direction=direction),
        trace(model, tcs, batch, injection=injection, direction=direction),
    )
    abl = trace(
        model,
        tcs,
        batch,
        injection=injection,
        direction=direction,
        edit=set_features(features, plain.acts),
    )
    pat = trace(model, tcs, batch, direction=direction, edit=set_features(features, steer.acts))
    return Intervention(
        n_rows=len(batch),
        n_features=sum(len(f) for f in features.values()),
        unsteered=_rate(plain),
        steered=_rate(steer),
        ablated=_rate(abl),
        patched=_rate(pat),
        b_unsteered=float(plain.b.mean()),
        b_steered=float(steer.b.mean()),
        b_ablated=float(abl.b.mean()),
        b_patched=float(pat.b.mean()),
    )


def control_unchanged(
    model: TLModel,
    transcoders: Any,
    batch: PromptLike,
    injection: Injection,
    features: FeatureSet,
) -> dict[str, float]:
    """The same steering and ablation on a control prompt batch (e.g. "Do you believe that
    1+1=3?"): the share of rows whose answer (sign of ``b``) the ablation leaves as it was
    under steering alone, and the mean change of ``b``. ``injection`` must fit the control
    prompts: a single-turn question has no ``trial`` position, so inject with
    ``mode="single-token"`` (Godet's protocol for these questions), the same vectors and
    strengths."""
    batch = as_prompt_batch(getattr(model, "tokenizer", None), batch)
    tcs = as_layers(model, transcoders)
    plain = trace(model, tcs, batch)
    steer = trace(model, tcs, batch, injection=injection)
    abl = trace(model, tcs, batch, injection=injection, edit=set_features(features, plain.acts))
    same = (abl.b > 0) == (steer.b > 0)
    return {
        "unchanged": float(same.float().mean()),
        "b_steered": float(steer.b.mean()),
        "b_ablated": float(abl.b.mean()),
        "mean_abs_delta_b": float((abl.b - steer.b).abs().mean()),
        "n_rows": len(batch),
    }


def progressive(
    model: TLModel,
    transcoders: Any,
    batch: PromptLike,
    injection: Injection,
    order: Sequence[tuple[int, int]],
    ks: Sequence[int],
    *,
    direction: LogitDirection | None = None,
    runs: tuple[Trace, Trace] | None = None,
) -> pd.DataFrame:
    """Detection under ablation and patching of the top-``k`` features of ``order``
    (``(layer, feature)``, most important first) for each ``k``: one row per ``k`` with the
    :class:`Intervention` fields. ``runs``: the (unsteered, steered) traces if computed."""
    batch = as_prompt_batch(getattr(model, "tokenizer", None), batch)
    tcs = as_layers(model, transcoders)
    runs = runs or (
        trace(model, tcs, batch, direction=direction),
        trace(model, tcs, batch, injection=injection, direction=direction),
    )
    rows = []
    for k in sorted(set(ks)):
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        fs: dict[int, list[int]] = {}
        for L, f in list(order)[:k]:
            fs.setdefault(L, []).append(f)
        res = intervene(model, tcs, batch, injection, fs, direction=direction, runs=runs)
        rows.append({"k": k, **res.to_dict()})
    return pd.DataFrame(rows)
