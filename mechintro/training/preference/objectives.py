"""Preference and supervised objectives: DPO (with and without a reference model), SFT, SFT+KL,
and the contrastive margin with and without a KL anchor.

Macar et al. (2026, docs/protocols.md §7) find that across a family's training stages DPO is the
first to bring the false-positive rate of introspection to ~0, and ablate it against
supervised fine-tuning. The objectives, on reply tokens only:

* **DPO** (Rafailov et al. 2023): ``−log σ(β·[(log π(c) − log π_ref(c)) − (log π(r) −
  log π_ref(r))])`` for a chosen reply ``c`` and a rejected reply ``r``, ``log π`` the summed
  log-probability of the reply given the prompt; with label smoothing ``ε`` (cDPO) the loss
  is ``(1−ε)·that + ε·(−log σ(−β·h))``. **Reference-free** DPO drops the ``π_ref`` terms.
* **SFT**: the mean cross-entropy of the chosen reply's tokens.
* **SFT+KL**: SFT plus ``kl_weight × KL(π ‖ π_ref)``, the full-vocabulary KL divergence at
  each reply position, averaged (it keeps the fine-tune near the starting model). With
  ``kl_weight = 0`` it is SFT exactly.
* **Margin** (Macar et al.'s ``contrastive_margin``, ``experiments/03f_dpo_mechanism_ablation.py``):
  ``max(0, m − [log π(c)/|c| − log π(r)/|r|])`` on length-normalised log-probabilities, no
  reference; **margin+KL** adds ``kl_weight × KL(π ‖ π_ref)`` on the chosen reply's tokens.

:func:`train_preferences` runs any of them on an HF model (or a bridge's HF modules), with
optional injections per pair, and a frozen copy of the starting model as the reference.

Example::

    pairs = introspection_pairs(words, LoRAConfig(layer=3, ...))
    res = train_preferences(model, pairs, PreferenceConfig(objective="dpo", layer=3),
                            vectors=vecs)
"""

from __future__ import annotations

import copy
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mechintro.inject import UNITS
from mechintro.prompts import Prompt
from mechintro.training.common import (
    SCHEDULES,
    TRAIN_MODES,
    ReplyBatch,
    TrainResult,
    check_positive,
    check_positive_int,
    device_of,
    encode_replies,
    forward_logits,
    hf_injection,
    hf_model_of,
    optimise,
    reply_loss,
    seeded,
    sequence_logprobs,
    strength_rows,
    trainable_only,
    training_modules,
)
from mechintro.vectors import ConceptVector

logger = logging.getLogger(__name__)

OBJECTIVES = ("dpo", "dpo-reference-free", "sft", "sft-kl", "margin", "margin-kl")


@dataclass(frozen=True)
class DPOLoss:
    """The DPO loss (scalar) and each pair's implicit rewards ``β·(log π − log π_ref)``."""

    loss: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor

    @property
    def accuracy(self) -> float:
        """Fraction of pairs whose chosen reply has the higher reward."""
        return float((self.chosen_rewards > self.rejected_rewards).float().mean())


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    reference_chosen: Tensor | None = None,
    reference_rejected: Tensor | None = None,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> DPOLoss:
    """DPO from summed reply log-probabilities ``[batch]``; without the two reference terms,
    reference-free DPO.

    Example::

        dpo_loss(torch.tensor([-3.0]), torch.tensor([-5.0]), beta=0.5).loss  # softplus(-1)
    """
    if (reference_chosen is None) != (reference_rejected is None):
        raise ValueError("give both reference log-probabilities or neither (reference-free)")
    check_positive("beta", beta)
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    if policy_chosen.shape != policy_rejected.shape or policy_chosen.ndim != 1:
        raise ValueError(
            f"log-probabilities must be [batch] tensors of one shape, got "
            f"{tuple(policy_chosen.shape)} and {tuple(policy_rejected.shape)}"
        )
    ref_c = reference_chosen if reference_chosen is not None else torch.zeros_like(policy_chosen)
    ref_r = (
        reference_rejected if reference_rejected is not None else torch.zeros_like(policy_chosen)
    )
    chosen = policy_chosen - ref_c
    rejected = policy_rejected - ref_r
    h = beta * (chosen - rejected)
    logsig = nn.functional.logsigmoid
    loss = -(1 - label_smoothing) * logsig(h) - label_smoothing * logsig(-h)
    return DPOLoss(loss.mean(), (beta * chosen).detach(), (beta * rejected).detach())


def sft_loss(logits: Tensor, batch: ReplyBatch) -> Tensor:
    """Supervised fine-tuning: the mean cross-entropy of the reply tokens."""
    return reply_loss(logits, batch)


def reply_kl(logits: Tensor, reference_logits: Tensor, batch: ReplyBatch) -> Tensor:
    """The mean over reply positions (those predicting a reply token) of ``KL(π ‖ π_ref)``
    over the vocabulary."""
    if logits.shape != reference_logits.shape:
        raise ValueError("policy and reference logits differ in shape")
    mask = batch.loss_mask[:, 1:]
    logp = logits[:, :-1][mask].float().log_softmax(-1)
    logq = reference_logits[:, :-1][mask].float().log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1).mean()


def sft_kl_loss(
    logits: Tensor, reference_logits: Tensor, batch: ReplyBatch, *, kl_weight: float
) -> Tensor:
    """SFT plus ``kl_weight`` × :func:`reply_kl`. ``kl_weight = 0``: SFT exactly."""
    if not (math.isfinite(kl_weight) and kl_weight >= 0):
        raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
    if logits.shape != reference_logits.shape:
        raise ValueError("policy and reference logits differ in shape")
    ce = reply_loss(logits, batch)
    if kl_weight == 0:
        return ce
    return ce + kl_weight * reply_kl(logits, reference_logits, batch)


def margin_loss(
    chosen: Tensor,
    rejected: Tensor,
    chosen_tokens: Tensor,
    rejected_tokens: Tensor,
    *,
    margin: float = 1.0,
) -> Tensor:
    """The contrastive margin: ``mean(max(0, margin − [chosen/|c| − rejected/|r|]))`` from
    summed reply log-probabilities ``[batch]`` and reply lengths (no reference model).

    Example::

        margin_loss(torch.tensor([-2.0]), torch.tensor([-6.0]), torch.tensor([2.0]),
                    torch.tensor([2.0]))  # max(0, 1 - (-1 + 3)) = 0
    """
    if not math.isfinite(margin):
        raise ValueError(f"margin must be finite, got {margin}")
    gap = chosen / chosen_tokens.clamp(min=1) - rejected / rejected_tokens.clamp(min=1)
    return torch.relu(margin - gap).mean()


@dataclass(frozen=True)
class PreferencePair:
    """A prompt, the reply to prefer, the reply to avoid (DPO only), and an optional injection
    of ``concept`` at ``strength``."""

    prompt: Prompt
    chosen: str
    rejected: str | None = None
    concept: str | None = None
    strength: float = 0.0


@dataclass(frozen=True)
class PreferenceConfig:
    """One objective of :data:`OBJECTIVES` and its optimiser; ``layer``/``mode``/``unit``
    say where and how pairs with a concept are injected."""

    objective: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    kl_weight: float = 0.1
    margin: float = 1.0  # the margin objectives' m
    lr: float = 1e-5
    steps: int = 100
    batch_size: int = 8
    schedule: str = "linear"
    warmup: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    layer: int | None = None
    mode: str = "from-trial"
    unit: str = "raw"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        check_positive("beta", self.beta)
        check_positive("lr", self.lr)
        check_positive_int("steps", self.steps)
        check_positive_int("batch_size", self.batch_size)
        if not (math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"mode must be one of {TRAIN_MODES}, got {self.mode!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.layer is not None:
            check_positive_int("layer", self.layer, 0)

    @property
    def needs_reference(self) -> bool:
        return self.objective in ("dpo", "sft-kl", "margin-kl")

    @property
    def contrastive(self) -> bool:
        """Whether the objective compares a chosen and a rejected reply."""
        return self.objective.startswith(("dpo", "margin"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def introspection_pairs(
    words: Sequence[str], cfg: Any, seed: int | None = None
) -> list[PreferencePair]:
    """Pairs from :func:`~mechintro.training.lora.introspection_examples`: an injected trial
    prefers ``yes_target`` over ``no_target``; an uninjected one prefers ``no_target`` over a
    claim about a random training word (a false positive)."""
    from mechintro.training.lora import introspection_examples

    rng = random.Random(cfg.seed if seed is None else seed)
    out = []
    for e in introspection_examples(words, cfg, seed):
        if e.concept is not None:
            out.append(PreferencePair(e.prompt, e.reply, cfg.no_target, e.concept, e.strength))
        else:
            wrong = cfg.yes_target.replace("{c}", rng.choice(list(words)))
            out.append(PreferencePair(e.prompt, e.reply, wrong))
    return out


class _PairStream:
    def __init__(self, tok: Any, pairs: Sequence[PreferencePair], cfg: PreferenceConfig) -> None:
        self.pairs, self.cfg = list(pairs), cfg
        prompts = [p.prompt for p in self.pairs]
        self.chosen = encode_replies(tok, prompts, [p.chosen for p in self.pairs])
        self.rejected = (
            encode_replies(tok, prompts, [p.rejected or "" for p in self.pairs])
            if cfg.contrastive
            else None
        )
        self.rng = random.Random(cfg.seed)
        self.order: list[int] = []

    def next(self) -> list[int]:
        if not self.order:
            self.order = list(range(len(self.pairs)))
            self.rng.shuffle(self.order)
        idx, self.order = self.order[: self.cfg.batch_size], self.order[self.cfg.batch_size :]
        return idx


def train_preferences(
    model: Any,
    pairs: Sequence[PreferencePair],
    cfg: PreferenceConfig | None = None,
    *,
    tokenizer: Any = None,
    reference: Any = None,
    vectors: Mapping[str, ConceptVector | Tensor] | None = None,
    resid_norm: float | None = None,
    parameters: Sequence[nn.Parameter] | None = None,
) -> TrainResult:
    """Train ``model`` (a bridge or an HF model) on ``pairs`` with ``cfg.objective``, in place.

    Args:
        reference: the reference model of ``dpo`` and ``sft-kl`` (default: a frozen copy of
            ``model`` as it is before training).
        vectors: concept vectors for pairs that inject (at ``cfg.layer``).
        parameters: what to train (default: every parameter that requires grad, e.g. after
            :func:`~mechintro.training.lora.add_lora`, pass ``lora_parameters(hf)``).
    """
    cfg = cfg or PreferenceConfig()
    pairs = list(pairs)
    if not pairs:
        raise ValueError("no training pairs given")
    if cfg.contrastive and any(not p.rejected for p in pairs):
        raise ValueError(
            f"{cfg.objective} needs a rejected reply in every pair (PreferencePair.rejected)"
        )
    concepts = sorted({p.concept for p in pairs if p.concept is not None})
    layers = [cfg.layer] if concepts and cfg.layer is not None else []
    hf, tok = training_modules(model, tokenizer, layers)
    rows: dict[str, Tensor] = {}
    scale = 1.0
    if concepts:
        if vectors is None or cfg.layer is None:
            raise ValueError("pairs inject concepts: pass vectors=... and set cfg.layer")
        rows, scale = strength_rows(vectors, concepts, cfg.unit, resid_norm, normalise=True)
    dev = device_of(hf)
    ref = None
    if cfg.needs_reference:
        ref = hf_model_of(reference) if reference is not None else copy.deepcopy(hf)
        ref.eval()
        for p in ref.parameters():
            p.requires_grad_(False)
    params = (
        list(parameters)
        if parameters is not None
        else [p for p in hf.parameters() if p.requires_grad]
    )
    stream = _PairStream(tok, pairs, cfg)

    def injections(rb: ReplyBatch, idx: list[int]) -> dict[int, tuple[Tensor, Tensor, Tensor]]:
        part = [pairs[i] for i in idx]
        if not any(p.concept for p in part):
            return {}
        d = next(iter(rows.values())).shape[0]
        delta = torch.zeros(len(part), d)
        for b, p in enumerate(part):
            if p.concept is not None:
                delta[b] = rows[p.concept] * p.strength
        start, end = rb.starts(cfg.mode)
        assert cfg.layer is not None
        return {cfg.layer: (delta, start, end)}

    def logits_of(
        m: nn.Module, rb: ReplyBatch, inj: dict[int, tuple[Tensor, Tensor, Tensor]]
    ) -> Tensor:
        with hf_injection(m, inj):
            return forward_logits(m, rb)

    def step_loss(step: int) -> Tensor:
        idx = stream.next()
        c = stream.chosen.select(idx).to(dev)
        inj_c = injections(c, idx)
        pol_c = logits_of(hf, c, inj_c)
        if cfg.objective == "sft":
            return sft_loss(pol_c, c)
        if cfg.objective == "sft-kl":
            assert ref is not None
            with torch.no_grad():
                ref_c = logits_of(ref, c, inj_c)
            return sft_kl_loss(pol_c, ref_c, c, kl_weight=cfg.kl_weight)
        assert stream.rejected is not None
        r = stream.rejected.select(idx).to(dev)
        inj_r = injections(r, idx)
        pol_r = logits_of(hf, r, inj_r)
        if cfg.objective.startswith("margin"):
            loss = margin_loss(
                sequence_logprobs(pol_c, c),
                sequence_logprobs(pol_r, r),
                c.loss_mask.sum(-1).float(),
                r.loss_mask.sum(-1).float(),
                margin=cfg.margin,
            )
            if cfg.objective == "margin-kl":
                assert ref is not None
                with torch.no_grad():
                    ref_c = logits_of(ref, c, inj_c)
                loss = loss + cfg.kl_weight * reply_kl(pol_c, ref_c, c)
            return loss
        ref_lp: tuple[Tensor | None, Tensor | None] = (None, None)
        if ref is not None:
            with torch.no_grad():
                ref_lp = (
                    sequence_logprobs(logits_of(ref, c, inj_c), c),
                    sequence_logprobs(logits_of(ref, r, inj_r), r),
                )
        out = dpo_loss(
            sequence_logprobs(pol_c, c),
            sequence_logprobs(pol_r, r),
            *ref_lp,
            beta=cfg.beta,
            label_smoothing=cfg.label_smoothing,
        )
        return out.loss

    logger.info("%s: %d pairs, %d steps", cfg.objective, len(pairs), cfg.steps)
    with seeded(cfg.seed, dev), trainable_only(hf, params):
        result = optimise(
            params,
            step_loss,
            steps=cfg.steps,
            lr=cfg.lr,
            schedule=cfg.schedule,
            warmup=cfg.warmup,
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm,
            label=cfg.objective,
        )
    result.config = {**cfg.to_dict(), "unit_scale": scale}
    result.extra = {"n_pairs": len(pairs)}
    return result
