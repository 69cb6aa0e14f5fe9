"""Preference and supervised objectives, and Macar et al.'s DPO ablation grid
(docs/protocols.md §7).

:mod:`.objectives`: DPO (with and without a reference model), SFT, SFT+KL, the contrastive
margin with and without KL, and :func:`train_preferences`. :mod:`.grid`: the 16 conditions
of the released ``experiments/03f_dpo_mechanism_ablation.py`` (:data:`CONDITIONS`),
preference data from JSONL (:func:`load_pairs`) and :func:`run_dpo_grid`.
"""

from __future__ import annotations

from mechintro.training.preference.grid import (
    CONDITIONS,
    DPOGridConfig,
    condition_data,
    load_pairs,
    run_dpo_grid,
)
from mechintro.training.preference.objectives import (
    OBJECTIVES,
    DPOLoss,
    PreferenceConfig,
    PreferencePair,
    dpo_loss,
    introspection_pairs,
    margin_loss,
    reply_kl,
    sft_kl_loss,
    sft_loss,
    train_preferences,
)

__all__ = [
    "CONDITIONS",
    "OBJECTIVES",
    "DPOGridConfig",
    "DPOLoss",
    "PreferenceConfig",
    "PreferencePair",
    "condition_data",
    "dpo_loss",
    "introspection_pairs",
    "load_pairs",
    "margin_loss",
    "reply_kl",
    "run_dpo_grid",
    "sft_kl_loss",
    "sft_loss",
    "train_preferences",
]
