"""Training introspection: LoRA (Fonseca Rivera 2025), preference objectives (DPO with and
without a reference model, SFT, SFT+KL; Macar et al. 2026's ablations), a trained bias
vector (Macar et al. 2026), and a protocol run across a family's checkpoints.

Modules (one concept each):

* :mod:`.configs`: :class:`LoRAConfig` and :class:`BiasConfig` (pure data: the command line
  reads them without loading torch);
* :mod:`.common`: prompt + reply tokenisation with a reply-only loss mask, the HF modules
  of a TransformerLens model, short-lived injection hooks on them, the optimisation loop;
* :mod:`.lora`: :func:`train_lora` (Fonseca Rivera's recipe);
* :mod:`.preference`: :func:`dpo_loss`, :func:`sft_loss`, :func:`sft_kl_loss` and
  :func:`train_preferences`;
* :mod:`.bias`: :class:`TrainedBias`, :func:`train_bias`, :func:`biased`, :func:`evaluate_bias`;
* :mod:`.checkpoints`: :func:`compare_checkpoints`.

Both recipes on the base organism, before/after on held-out concepts, are
:mod:`mechintro.organism.training` (``mechintro organism lora --out DIR`` and
``mechintro organism bias``).

``peft`` (LoRA) is an optional extra: ``pip install 'mechintro[train]'``. Nothing here is
imported by ``import mechintro``, and this package loads each name on first use (importing
the configs loads no torch).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mechintro._lazy import lazy_exports

if TYPE_CHECKING:  # the real names for type checkers; at run time they load on first use, so
    # that importing a config (pure Python) does not load torch with the trainers
    from mechintro.training.bias import (
        BiasEvaluation,
        BiasResult,
        TrainedBias,
        biased,
        evaluate_bias,
        load_bias,
        save_bias,
        train_bias,
    )
    from mechintro.training.checkpoints import Checkpoint, compare_checkpoints
    from mechintro.training.common import (
        ReplyBatch,
        TrainResult,
        encode_replies,
        reply_loss,
    )
    from mechintro.training.configs import (
        BIAS_NO,
        BIAS_YES,
        FONSECA_NO,
        FONSECA_QUESTIONS,
        FONSECA_YES,
        BiasConfig,
        LoRAConfig,
    )
    from mechintro.training.lora import merge_lora, train_lora
    from mechintro.training.preference import (
        DPOLoss,
        PreferenceConfig,
        PreferencePair,
        dpo_loss,
        sft_kl_loss,
        sft_loss,
        train_preferences,
    )

_EXPORTS = {
    "BIAS_NO": "mechintro.training.configs",
    "BIAS_YES": "mechintro.training.configs",
    "FONSECA_NO": "mechintro.training.configs",
    "FONSECA_QUESTIONS": "mechintro.training.configs",
    "FONSECA_YES": "mechintro.training.configs",
    "BiasConfig": "mechintro.training.configs",
    "LoRAConfig": "mechintro.training.configs",
    "BiasEvaluation": "mechintro.training.bias",
    "BiasResult": "mechintro.training.bias",
    "TrainedBias": "mechintro.training.bias",
    "biased": "mechintro.training.bias",
    "evaluate_bias": "mechintro.training.bias",
    "load_bias": "mechintro.training.bias",
    "save_bias": "mechintro.training.bias",
    "train_bias": "mechintro.training.bias",
    "Checkpoint": "mechintro.training.checkpoints",
    "compare_checkpoints": "mechintro.training.checkpoints",
    "ReplyBatch": "mechintro.training.common",
    "TrainResult": "mechintro.training.common",
    "encode_replies": "mechintro.training.common",
    "reply_loss": "mechintro.training.common",
    "merge_lora": "mechintro.training.lora",
    "train_lora": "mechintro.training.lora",
    "DPOLoss": "mechintro.training.preference",
    "PreferenceConfig": "mechintro.training.preference",
    "PreferencePair": "mechintro.training.preference",
    "dpo_loss": "mechintro.training.preference",
    "sft_kl_loss": "mechintro.training.preference",
    "sft_loss": "mechintro.training.preference",
    "train_preferences": "mechintro.training.preference",
}

__all__ = [
    "BIAS_NO",
    "BIAS_YES",
    "FONSECA_NO",
    "FONSECA_QUESTIONS",
    "FONSECA_YES",
    "BiasConfig",
    "BiasEvaluation",
    "BiasResult",
    "Checkpoint",
    "DPOLoss",
    "LoRAConfig",
    "PreferenceConfig",
    "PreferencePair",
    "ReplyBatch",
    "TrainResult",
    "TrainedBias",
    "biased",
    "compare_checkpoints",
    "dpo_loss",
    "encode_replies",
    "evaluate_bias",
    "load_bias",
    "merge_lora",
    "reply_loss",
    "save_bias",
    "sft_kl_loss",
    "sft_loss",
    "train_bias",
    "train_lora",
    "train_preferences",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
