"""The geometry of detection (Macar et al. 2026, docs/protocols.md §7).

:mod:`.core`: the detected − undetected mean difference, nested ridge regression,
bidirectional steering. :mod:`.structure`: PC1 against the mean difference and the refusal
direction, the projection/residual swap, rate regressions with the verbalizability baseline,
detection against forced identification by layer.
"""

from __future__ import annotations

from mechintro.analysis.directions.geometry.core import (
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
from mechintro.analysis.directions.geometry.structure import (
    SWAP_CONDITIONS,
    DirectionCosines,
    LayerCorrelation,
    SwapVector,
    detection_identification_by_layer,
    direction_cosines,
    pc1_direction,
    rate_regressions,
    swap_vectors,
    verbalizability,
)

__all__ = [
    "ALPHAS",
    "SWAP_CONDITIONS",
    "DetectionDirection",
    "DirectionCosines",
    "LayerCorrelation",
    "RidgeResult",
    "SteeringPair",
    "SwapVector",
    "bidirectional",
    "detection_direction",
    "detection_identification_by_layer",
    "detection_ridge",
    "direction_cosines",
    "pc1_direction",
    "per_concept_rates",
    "rate_regressions",
    "ridge_cv",
    "swap_vectors",
    "verbalizability",
]
