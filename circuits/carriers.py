"""Evidence carriers: the features that carry the injected concept to the gates and push
them down (Macar et al. 2026; docs/protocols.md §7).

For a gate ``g`` (layer ``L2``) and a candidate feature ``f`` of an earlier transcoder layer
``L1`` (after the injection layer), the **virtual weight** is ``W_enc[L2][:, g] ·
W_dec[L1][f]``: how much one unit of ``f`` written into the residual stream moves ``g``'s
pre-activation along the direct path (the pre-MLP norm left out, as in the paper). The
**attribution** of ``f`` to ``g`` under steering is that weight times ``f``'s steered
activation at the readout position. A carrier has a *negative* attribution (it pushes the
gate down), a *positive* dose–strength correlation (it grows with the injection strength)
and a *nonzero* correlation with detection among the injected rows (those where the model
says Yes against those where it does not; 0 when every injected row is detected alike).

:func:`evidence_carriers` measures every (candidate, gate) pair over a batch of concept
vectors × strengths and returns them per concept and pooled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from circuits.trace import FeatureSet, check_features, trace, transcoder_layers
from mechintro.inject import Injection
from mechintro.models import TLModel
from mechintro.prompts import PromptLike, as_prompt_batch


@dataclass(frozen=True, eq=False)
class Carriers:
    """``pooled``: one row per (gate, candidate) with ``virtual_weight``, ``attribution``
    (mean over concepts at the strongest strength), ``dose_r``, ``detection_r``,
    ``negative_share`` (the share of concepts where the attribution is negative) and
    ``carrier``; ``per_concept``: ``attribution`` per (concept, gate, candidate) for the
    pooled rows' pairs."""

    pooled: pd.DataFrame
    per_concept: pd.DataFrame

    def carriers(self) -> pd.DataFrame:
        return self.pooled[self.pooled.carrier].reset_index(drop=True)


def _corr(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation of every column of ``x [n, k]`` with ``y [n]`` (0 where either
    side is constant)."""
    xc, yc = x - x.mean(0), y - y.mean()
    den = xc.norm(dim=0) * yc.norm()
    return torch.where(den > 0, (xc * yc[:, None]).sum(0) / den.clamp(min=1e-30), 0.0)


def evidence_carriers(
    model: TLModel,
    transcoders: Any,
    batch: PromptLike,
    vectors: Tensor,
    gates: FeatureSet,
    *,
    layer: int,
    resid_norm: float,
    strengths: Sequence[float],
    concepts: Sequence[str] | None = None,
    mode: str = "from-trial",
    top: int = 20,
    min_detection_r: float = 0.1,
) -> Carriers:
    """Candidates for every gate from the transcoder layers between the injection layer and
    the gate's layer, measured on ``batch`` (one row per concept, ``vectors[i]`` its unit
    vector) at each of ``strengths`` (and 0). The ``top`` most negative pooled
    attributions per gate are kept; ``carrier`` marks those with a negative attribution,
    ``dose_r > 0`` and ``|detection_r| ≥ min_detection_r``."""
    batch = as_prompt_batch(getattr(model, "tokenizer", None), batch)
    tcs = transcoder_layers(model, transcoders, after=layer)
    check_features(gates, tcs)
    if len(vectors) != len(batch):
        raise ValueError(f"{len(vectors)} vectors for {len(batch)} prompts: give one per row")
    if not strengths or min(strengths) <= 0:
        raise ValueError("strengths must be positive (0 is added as the unsteered point)")
    names = list(concepts) if concepts is not None else [f"row{i}" for i in range(len(batch))]
    grid = [0.0, *sorted(float(s) for s in strengths)]
    acts: dict[int, list[Tensor]] = {L: [] for L in tcs}
    detected = []
    for s in grid:
        inj = None
        if s > 0:
            inj = Injection(layer, vectors, s, mode=mode, unit="resid-norm", resid_norm=resid_norm)
        tr = trace(model, tcs, batch, injection=inj)
        for L in tcs:
            acts[L].append(tr.at_readout(L).cpu())
        detected.append(tr.detected.float().cpu())
    C = len(batch)
    dose = torch.tensor(grid).repeat_interleave(C)  # [S*C], strength-major
    det = torch.cat(detected)
    steered = dose > 0  # detection varies among injected rows; the controls would make
    # anything that grows with strength look correlated with it
    pooled, per_concept = [], []
    for L2, gs in gates.items():
        for L1 in sorted(L for L in tcs if L < L2):
            a = torch.stack(acts[L1])  # [S, C, d_sae]
            flat = a.reshape(-1, a.shape[-1])
            dose_r, det_r = _corr(flat, dose), _corr(flat[steered], det[steered])
            W_dec = tcs[L1].W_dec.float()
            for g in gs:
                vw = W_dec @ tcs[L2].W_enc[:, g].float()  # [d_sae of L1]
                att = vw[None, :] * a[-1]  # [C, d_sae] at the strongest strength
                mean = att.mean(0)
                order = torch.argsort(mean)[:top]
                for f in order.tolist():
                    if float(mean[f]) >= 0:
                        break
                    neg = float((att[:, f] < 0).float().mean())
                    pooled.append(
                        (
                            L2,
                            g,
                            L1,
                            f,
                            float(vw[f]),
                            float(mean[f]),
                            float(dose_r[f]),
                            float(det_r[f]),
                            neg,
                        )
                    )
                    per_concept += [(names[c], L2, g, L1, f, float(att[c, f])) for c in range(C)]
    cols = [
        "gate_layer",
        "gate",
        "layer",
        "feature",
        "virtual_weight",
        "attribution",
        "dose_r",
        "detection_r",
        "negative_share",
    ]
    df = pd.DataFrame(pooled, columns=cols)
    df["carrier"] = (
        (df.attribution < 0) & (df.dose_r > 0) & (np.abs(df.detection_r) >= min_detection_r)
    )
    pc = pd.DataFrame(
        per_concept, columns=["concept", "gate_layer", "gate", "layer", "feature", "attribution"]
    )
    return Carriers(df, pc)
