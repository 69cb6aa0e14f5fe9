"""Training introspection: LoRA (Fonseca Rivera 2025), preference objectives (DPO with and
without a reference model, SFT, SFT+KL; Macar et al. 2026's ablations), a trained bias
vector (Macar et al. 2026), and a protocol run across a family's checkpoints.

Modules (one concept each):

* :mod:`.common`: prompt + reply tokenisation with a reply-only loss mask, the HF modules
  of a TransformerLens model, short-lived injection hooks on them, the optimisation loop;
* :mod:`.lora`: :class:`LoRAConfig` (the paper's hyper-parameters) and :func:`train_lora`;
* :mod:`.preference`: :func:`dpo_loss`, :func:`sft_loss`, :func:`sft_kl_loss` and
  :func:`train_preferences`;
* :mod:`.bias`: :class:`TrainedBias`, :func:`train_bias`, :func:`biased`, :func:`evaluate_bias`;
* :mod:`.checkpoints`: :func:`compare_checkpoints`;
* :mod:`.organism`: both recipes on the base organism, before/after on held-out concepts
  (``mechintro organism lora --out DIR`` and ``mechintro organism bias``).

``peft`` (LoRA) is an optional extra: ``pip install 'mechintro[train]'``. Nothing here is
imported by ``import mechintro``; heavy libraries load inside the functions that need them.
"""

from __future__ import annotations

from mechintro.training.bias import (
    BIAS_NO,
    BIAS_YES,
    BiasConfig,
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
from mechintro.training.common import ReplyBatch, TrainResult, encode_replies, reply_loss
from mechintro.training.lora import (
    FONSECA_NO,
    FONSECA_QUESTIONS,
    FONSECA_YES,
    LoRAConfig,
    merge_lora,
    train_lora,
)
from mechintro.training.preference import (
    DPOLoss,
    PreferenceConfig,
    PreferencePair,
    dpo_loss,
    sft_kl_loss,
    sft_loss,
    train_preferences,
)

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
