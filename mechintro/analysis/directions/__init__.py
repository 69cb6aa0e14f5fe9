"""Directions in the residual stream: refusal and abliteration, and the geometry of detection.

**Refusal direction** (Arditi et al. 2024, "Refusal in Language Models Is Mediated by a Single
Direction", arXiv:2406.11717). Run harmful and harmless instructions (the chat template with
the generation prompt) and average the residual stream at each layer over the last ``k``
template positions (the post-instruction tokens, e.g. ``<end_of_turn>\\n<start_of_turn>model
\\n``); the refusal direction of layer ``l`` is the normalised difference of the means,
harmful − harmless. :func:`refusal_directions` returns all layers at once.

**Abliteration** (Arditi et al. 2024; Macar et al. 2026, docs/protocols.md §7: TPR 10.8% →
63.8%). Remove the direction's projection from the residual stream at every layer and
position: ``h ← h − w_l·(h·r̂)r̂``. :class:`Abliteration` is the intervention as a value
(directions and per-layer weights, validated); :func:`abliterated` turns it into hooks for
the duration of a ``with`` block. The sites are ``blocks.l.hook_resid_pre`` of every block
``l`` (with ``r̂_l``, ``w_l``) and ``blocks.{n-1}.hook_resid_post`` of the last block (with
``r̂_{n-1}``, ``w_{n-1}``): every block reads, and the unembedding reads, a residual stream
with the direction removed. They are the residual stream itself on both backends (on the
bridge, ``hook_resid_mid`` is the pre-MLP norm's input, not the carried residual, so it is
not used). With ``w = 1`` this equals Arditi's weight orthogonalisation except inside each
block, where the MLP still reads what that block's attention wrote along ``r̂`` (removed
before the next block reads it).

**Geometry of detection** (Macar et al. 2026): split concepts into detected and undetected
and take the mean difference of their vectors (:func:`detection_direction`); predict each
concept's detection rate from its vector by ridge regression with nested cross-validation
(:func:`ridge_cv`, :func:`detection_ridge`); and steer with ``A − B`` and ``B − A``
(:func:`bidirectional`).

Modules: :mod:`.refusal` (refusal directions and abliteration), :mod:`.geometry` (the
detection direction, ridge regression, bidirectional steering).

Example::

    ref = refusal_directions(model)                       # the shipped prompt lists
    abl = Abliteration.from_refusal(ref, weight=1.0)      # per-layer directions
    with abliterated(model, abl):
        out = generate(model, batch, injection=inj, max_new_tokens=40)
"""

from __future__ import annotations

from mechintro.analysis.directions.geometry import (
    ALPHAS,
    DetectionDirection,
    RidgeResult,
    SteeringPair,
    bidirectional,
    detection_direction,
    detection_ridge,
    per_concept_rates,
    ridge_cv,
)
from mechintro.analysis.directions.refusal import (
    SITES,
    Abliteration,
    RefusalDirections,
    abliterated,
    abliteration_sites,
    refusal_directions,
    refusal_prompts,
)

__all__ = [
    "ALPHAS",
    "SITES",
    "Abliteration",
    "DetectionDirection",
    "RefusalDirections",
    "RidgeResult",
    "SteeringPair",
    "abliterated",
    "abliteration_sites",
    "bidirectional",
    "detection_direction",
    "detection_ridge",
    "per_concept_rates",
    "refusal_directions",
    "refusal_prompts",
    "ridge_cv",
]
