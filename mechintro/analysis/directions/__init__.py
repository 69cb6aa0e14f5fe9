"""Directions in the residual stream: refusal and abliteration, and the geometry of detection.

**Refusal direction** (Arditi et al. 2024, "Refusal in Language Models Is Mediated by a Single
Direction", arXiv:2406.11717). Run harmful and harmless instructions (the chat template with
the generation prompt) and average the residual stream at each layer over the last ``k``
template positions (the post-instruction tokens, e.g. ``<end_of_turn>\\n<start_of_turn>model
\\n``); the refusal direction of layer ``l`` is the normalised difference of the means,
harmful − harmless. :func:`refusal_directions` returns all layers at once, by default at
Macar et al.'s site: the block output at prompt position −2.

**Abliteration** (Arditi et al. 2024; Macar et al. 2026, docs/protocols.md §7: TPR 10.8% →
63.8%). Remove the direction's projection from the residual stream at every layer and
position: ``h ← h − w_l·(h·r̂)r̂``. :class:`Abliteration` is the intervention as a value
(directions, per-layer weights and the site, validated); :func:`abliterated` turns it into
hooks for the duration of a ``with`` block. Site ``resid_post`` (Macar's, the default of
:func:`refusal_directions`): every block's output with that block's ``r̂_l``, ``w_l``. Site
``resid_pre`` (Arditi's): ``blocks.l.hook_resid_pre`` of every block ``l`` and
``blocks.{n-1}.hook_resid_post`` of the last block: every block reads, and the unembedding
reads, a residual stream with the direction removed; with ``w = 1`` this equals Arditi's
weight orthogonalisation except inside each block, where the MLP still reads what that
block's attention wrote along ``r̂`` (removed before the next block reads it). Both sites are
the residual stream itself on both backends (on the bridge, ``hook_resid_mid`` is the pre-MLP
norm's input, not the carried residual, so it is not used). :mod:`.abliteration` searches
Macar's per-region weights (:func:`run_abliteration`).

**Geometry of detection** (Macar et al. 2026): split concepts into detected and undetected
and take the mean difference of their vectors (:func:`detection_direction`); predict each
concept's detection rate from its vector by ridge regression with nested cross-validation
(:func:`ridge_cv`, :func:`detection_ridge`); and steer with ``A − B`` and ``B − A``
(:func:`bidirectional`).

Modules: :mod:`.refusal` (refusal directions and abliteration), :mod:`.abliteration` (the
per-region weight search), :mod:`.geometry` (the detection direction, ridge regression,
bidirectional steering).

Example::

    ref = refusal_directions(model)                       # the shipped prompt lists
    abl = Abliteration.from_refusal(ref, weight=1.0)      # per-layer directions
    with abliterated(model, abl):
        out = generate(model, batch, injection=inj, max_new_tokens=40)
"""

from __future__ import annotations

from mechintro.analysis.directions.abliteration import (
    AbliterationConfig,
    load_instructions,
    region_weights,
    rule_judge,
    run_abliteration,
    search_region_weights,
)
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
    ABLATION_SITES,
    SITES,
    Abliteration,
    RefusalDirections,
    abliterated,
    abliteration_sites,
    refusal_directions,
    refusal_prompts,
)

__all__ = [
    "ABLATION_SITES",
    "ALPHAS",
    "SITES",
    "Abliteration",
    "AbliterationConfig",
    "DetectionDirection",
    "RefusalDirections",
    "RidgeResult",
    "SteeringPair",
    "abliterated",
    "abliteration_sites",
    "bidirectional",
    "detection_direction",
    "detection_ridge",
    "load_instructions",
    "per_concept_rates",
    "refusal_directions",
    "refusal_prompts",
    "region_weights",
    "ridge_cv",
    "rule_judge",
    "run_abliteration",
    "search_region_weights",
]
