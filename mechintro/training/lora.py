"""Fine-tune introspection with LoRA: Fonseca Rivera (2025)'s recipe (docs/protocols.md §8).

Fonseca Rivera, "Training Introspective Behavior: Fine-Tuning Induces Reliable Internal State
Detection in a 7B Model" (arXiv:2511.21399): LoRA (r = 32, α = 64, dropout 0.1) on the
attention projections W_Q, W_K, W_V, W_O; the L2-normalised concept vector injected at one
layer (20 of 32) at the last prompt token only, at strengths {40, 60, 80, 100}; five question
variants; as many uninjected negatives as injected positives; the loss on the reply tokens
only; lr 2e-4, 3 epochs, batch 4 (8-bit AdamW there, AdamW here); targets
``I detect an injected thought about {c}.`` / ``I do not detect any injected thoughts.``
Reported: 85% success, 0% FPR on 20 held-out concepts at s = 40.

:class:`LoRAConfig` holds every hyper-parameter (defaults: the paper's). Strengths are raw
multiples of the unit vector (``unit="raw"``, the paper's, on a 7B model) or multiples of the
mean residual norm at the layer (``unit="resid-norm"``, comparable across models).
:func:`train_lora` adds LoRA with ``peft`` to the HF modules (a bridge's ``original_model``,
whose attention projections sit inside TransformerLens wrappers: they are found by their
logical name), trains, and by default merges the adapters back into the weights, so the same
model object is then the fine-tuned model on either path (bridge or HF).

Example::

    model = load_model("deepseek-ai/deepseek-llm-7b-chat", device="cuda", dtype=torch.bfloat16)
    vecs = extract_vectors(model, word_list("fonseca_train"), layer=20, method="fonseca")
    res = train_lora(model, vecs, word_list("fonseca_train"), LoRAConfig())
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mechintro.adapters import fold_lora
from mechintro.experiments.protocols.detection import PREAMBLE
from mechintro.prompts import Prompt
from mechintro.training.common import (
    ReplyBatch,
    TrainResult,
    device_of,
    encode_replies,
    forward_logits,
    hf_injection,
    optimise,
    reply_loss,
    seeded,
    strength_rows,
    trainable_only,
    training_modules,
)
from mechintro.training.configs import (
    ALL_LINEAR,
    ATTENTION_PROJECTIONS,
    FONSECA_NO,
    FONSECA_QUESTIONS,
    FONSECA_YES,
    PROMPT_FORMATS,
    LoRAConfig,
)
from mechintro.vectors import ConceptVector

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainExample:
    """One prompt and its target reply; ``concept`` injected at ``strength`` (None: none)
    at block ``layer``'s output (None: the trainer's layer)."""

    prompt: Prompt
    reply: str
    concept: str | None = None
    strength: float = 0.0
    layer: int | None = None


def question_prompt(question: str, cfg: LoRAConfig, trial: int = 1) -> Prompt:
    """The prompt of one question variant (``{n}`` → ``trial``) in ``cfg``'s format."""
    text = question.replace("{n}", str(trial))
    if cfg.prompt_format == "fonseca":
        return Prompt.text(f"Human: {text}\n\nAssistant:")
    if cfg.preamble:  # the detection protocol's dialogue (detection_prompt) with this question
        return Prompt.chat(text, history=[("user", PREAMBLE), ("assistant", "Ok.")], system="")
    return Prompt.chat(text)


def introspection_examples(
    words: Sequence[str], cfg: LoRAConfig, seed: int | None = None
) -> list[TrainExample]:
    """Every word × question × strength injected (answer: ``yes_target``), and
    ``negatives`` × as many uninjected questions (answer: ``no_target``), shuffled."""
    rng = random.Random(cfg.seed if seed is None else seed)
    pos = [
        TrainExample(
            question_prompt(q, cfg, rng.randint(1, 10)), cfg.yes_target.replace("{c}", w), w, s
        )
        for w in words
        for q in cfg.questions
        for s in cfg.strengths
    ]
    n_neg = round(cfg.negatives * len(pos))
    neg = [
        TrainExample(
            question_prompt(cfg.questions[i % len(cfg.questions)], cfg, rng.randint(1, 10)),
            cfg.no_target,
        )
        for i in range(n_neg)
    ]
    out = pos + neg
    rng.shuffle(out)
    return out


class ExampleStream:
    """Seeded epochs over ``examples`` (tokenised once): each step's batch and injections.

    ``rows[layer][word]`` is what a strength of 1 adds at each injection layer
    (:func:`~mechintro.training.common.strength_rows`).
    """

    def __init__(
        self,
        tokenizer: Any,
        examples: Sequence[TrainExample],
        batch_size: int,
        seed: int,
        rows: Mapping[int, Mapping[str, Tensor]],
        mode: str,
        layer: int,
    ) -> None:
        self.examples = list(examples)
        self.encoded = encode_replies(
            tokenizer, [e.prompt for e in self.examples], [e.reply for e in self.examples]
        )
        self.batch_size, self.rng = batch_size, random.Random(seed)
        self.rows, self.mode, self.layer = rows, mode, layer
        self.order: list[int] = []
        self.epoch = 0

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.examples) / self.batch_size)

    def batch(self) -> tuple[ReplyBatch, dict[int, tuple[Tensor, Tensor, Tensor]]]:
        if not self.order:
            self.order = list(range(len(self.examples)))
            self.rng.shuffle(self.order)
            self.epoch += 1
        idx, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        rb = self.encoded.select(idx)
        return rb, self.injections(rb, [self.examples[i] for i in idx])

    def injections(
        self, rb: ReplyBatch, part: Sequence[TrainExample]
    ) -> dict[int, tuple[Tensor, Tensor, Tensor]]:
        """Per injection layer: the rows' deltas (zero for rows injected elsewhere or not at
        all) and their ``[start, end)`` in this trainer's mode."""
        out: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        if not any(e.concept is not None for e in part):
            return out
        start, end = rb.starts(self.mode)
        for b, e in enumerate(part):
            if e.concept is None:
                continue
            layer = self.layer if e.layer is None else e.layer
            if layer not in out:
                d = next(iter(self.rows[layer].values())).shape[0]
                out[layer] = (torch.zeros(len(part), d), start, end)
            out[layer][0][b] = self.rows[layer][e.concept] * e.strength
        return out


def attention_targets(hf: nn.Module, names: Sequence[str] = ATTENTION_PROJECTIONS) -> list[str]:
    """Full names of the ``nn.Linear`` modules whose logical name ends in one of ``names``;
    ``("all-linear",)``: every ``nn.Linear`` but the output embedding (peft's meaning, Macar
    et al.'s DPO ablation).

    In a bridge the HF projections are wrapped (``q_proj._original_component``): the logical
    name drops those wrapper segments, and the wrapped ``nn.Linear`` is what gets the adapter.
    A name with dots matches the logical name's tail (``"layers.21.self_attn.q_proj"``: that
    block's only), so the adapters can be limited to the blocks after the injection.
    """
    every = tuple(names) == (ALL_LINEAR,)
    head = getattr(hf, "get_output_embeddings", lambda: None)()
    out = []
    for full, mod in hf.named_modules():
        if isinstance(mod, nn.Linear):
            logical = full.replace("._original_component", "")
            if (every and mod is not head) or any(
                logical == n or logical.endswith("." + n) for n in names
            ):
                out.append(full)
    if not out:
        raise ValueError(
            f"no nn.Linear named {list(names)} in {type(hf).__name__}: pass the attention "
            "projections' names in target_modules (e.g. ('c_attn', 'c_proj') for GPT-2)"
        )
    return out


def add_lora(hf: nn.Module, cfg: LoRAConfig, *, random_init: bool = False) -> list[str]:
    """Insert LoRA adapters (``peft``) into ``hf``'s ``cfg.target_modules``, in place.

    Returns the adapted modules' names. The adapters start as an identity (B = 0), or with
    ``random_init`` as random A and B (Macar et al.'s untrained "random LoRA" control).
    """
    try:
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("LoRA training needs peft: pip install 'mechintro[train]'") from e
    targets = attention_targets(hf, cfg.target_modules)
    flags = {id(p): p.requires_grad for p in hf.parameters()}
    peft_cfg = PeftLoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        init_lora_weights=not random_init,
    )
    inject_adapter_in_model(peft_cfg, hf)
    for p in hf.parameters():  # peft froze the base weights: give them back their flags
        if id(p) in flags:
            p.requires_grad_(flags[id(p)])
    return targets


def lora_parameters(hf: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in hf.named_parameters() if "lora_" in n]


@torch.no_grad()
def merge_lora(hf: nn.Module) -> int:
    """Fold every LoRA adapter of ``hf`` into its base weight and remove the adapter,
    in place (the base ``nn.Linear`` goes back where the adapter was). Returns the count."""
    from peft.tuners.lora import LoraLayer

    names = [n for n, m in hf.named_modules() if isinstance(m, LoraLayer)]
    for name in names:
        mod: Any = hf.get_submodule(name)
        mod.merge()
        parent, _, attr = name.rpartition(".")
        setattr(hf.get_submodule(parent) if parent else hf, attr, mod.get_base_layer())
    return len(names)


@torch.no_grad()
def unload_lora(hf: nn.Module) -> int:
    """Remove every LoRA adapter of ``hf`` without keeping its change (a merged one is
    unmerged first), in place: the base weights are as before the adapters. Returns the
    count."""
    from peft.tuners.lora import LoraLayer

    names = [n for n, m in hf.named_modules() if isinstance(m, LoraLayer)]
    for name in names:
        mod: Any = hf.get_submodule(name)
        if mod.merged:
            mod.unmerge()
        parent, _, attr = name.rpartition(".")
        setattr(hf.get_submodule(parent) if parent else hf, attr, mod.get_base_layer())
    if "peft_config" in vars(hf):  # peft's record of the injection: the adapters are gone
        del hf.peft_config
    return len(names)


def save_lora(hf: nn.Module, path: str | Path) -> int:
    """Write ``hf``'s (unmerged) LoRA adapters to ``path`` as safetensors: ``NAME.lora_A``
    [r, in] and ``NAME.lora_B`` [out, r] for each adapted module (``NAME`` its logical
    name, wrapper segments dropped), the scale ``alpha / r`` in the file's metadata.
    Returns the number of adapters; raises if there are none (already merged?)."""
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import save_file

    tensors: dict[str, Tensor] = {}
    scales = set()
    for name, layer in hf.named_modules():
        if isinstance(layer, LoraLayer):
            mod: Any = layer
            logical = name.replace("._original_component", "")
            (key,) = mod.lora_A.keys()  # one adapter per module: ours
            tensors[f"{logical}.lora_A"] = mod.lora_A[key].weight.detach().float().cpu()
            tensors[f"{logical}.lora_B"] = mod.lora_B[key].weight.detach().float().cpu()
            scales.add(float(mod.scaling[key]))
    if not tensors:
        raise ValueError("no LoRA adapters in the model: save before merge_lora (merge=False)")
    if len(scales) != 1:
        raise ValueError(f"adapters with different scales {sorted(scales)}: not one LoRA run")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"scale": repr(scales.pop())})
    tmp.replace(path)
    return len(tensors) // 2


def apply_lora(hf: nn.Module, path: str | Path) -> int:
    """Fold the adapters that :func:`save_lora` wrote into ``hf``'s weights, in place:
    ``W ← W + scale · B A`` (what ``merge_lora`` does; peft is not needed). Modules are
    found by logical name, so a bridge's wrapped projections take them too. Returns the
    number of adapted modules; a name the model lacks or a shape mismatch is an error
    (:func:`mechintro.adapters.fold_lora`, which the built-in adapted models use too)."""
    return fold_lora(hf, path)


def train_lora(
    model: Any,
    vectors: Mapping[str, ConceptVector | Tensor],
    words: Sequence[str],
    cfg: LoRAConfig | None = None,
    *,
    tokenizer: Any = None,
    resid_norm: float | None = None,
    merge: bool = True,
) -> TrainResult:
    """Fine-tune ``model`` (a bridge or an HF model) with Fonseca Rivera's recipe, in place.

    Args:
        vectors: concept vectors of (at least) ``words``; normalised here.
        words: the training concepts (held-out ones must not be among them).
        resid_norm: for ``unit="resid-norm"`` (default: the vectors' ``resid_norm``).
        merge: fold the adapters into the weights afterwards (otherwise they stay in the
            modules, trainable further, and ``merge_lora`` folds them later).

    Returns a :class:`TrainResult` (``extra``: the adapted module names, example count).
    """
    cfg = cfg or LoRAConfig()
    words = list(words)
    if not words:
        raise ValueError("no training words given")
    hf, tok = training_modules(model, tokenizer, (cfg.layer,))
    rows, scale = strength_rows(vectors, words, cfg.unit, resid_norm, normalise=True)
    examples = introspection_examples(words, cfg)
    stream = ExampleStream(
        tok,
        examples,
        cfg.batch_size,
        cfg.seed,
        {cfg.layer: rows},
        cfg.mode,
        cfg.layer,
    )
    steps = stream.steps_per_epoch * cfg.epochs
    steps = min(steps, cfg.max_steps) if cfg.max_steps is not None else steps
    dev = device_of(hf)
    logger.info("LoRA: %d examples, %d steps, layer %d", len(examples), steps, cfg.layer)
    with seeded(cfg.seed, dev):
        targets = add_lora(hf, cfg)
        params = lora_parameters(hf)

        def step_loss(step: int) -> Tensor:
            rb, inj = stream.batch()
            rb = rb.to(dev)
            with hf_injection(hf, inj):
                return reply_loss(forward_logits(hf, rb), rb)

        with trainable_only(hf, params):
            result = optimise(
                params,
                step_loss,
                steps=steps,
                lr=cfg.lr,
                schedule=cfg.schedule,
                warmup=cfg.warmup,
                weight_decay=cfg.weight_decay,
                max_grad_norm=cfg.max_grad_norm,
                optimizer=cfg.optimizer,
                label="lora",
            )
    if merge:
        merge_lora(hf)
    result.config = {**cfg.to_dict(), "unit_scale": scale}
    result.extra = {
        "targets": targets,
        "n_examples": len(examples),
        "merged": merge,
        "epochs_seen": stream.epoch,
    }
    return result


__all__ = [
    "ALL_LINEAR",
    "ATTENTION_PROJECTIONS",
    "FONSECA_NO",
    "FONSECA_QUESTIONS",
    "FONSECA_YES",
    "PROMPT_FORMATS",
    "ExampleStream",
    "LoRAConfig",
    "TrainExample",
    "add_lora",
    "apply_lora",
    "attention_targets",
    "introspection_examples",
    "lora_parameters",
    "merge_lora",
    "question_prompt",
    "save_lora",
    "train_lora",
    "unload_lora",
]
