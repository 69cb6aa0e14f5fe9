"""A trained bias vector that makes a model report injected thoughts (Macar et al. 2026).

Macar et al. ("Mechanisms of Introspective Awareness", arXiv:2603.21396; docs/protocols.md §7)
add one learnable vector to one layer's MLP output, at every position, and train only that
vector (the model frozen) on detection trials: half inject a concept at a random layer and
strength and are answered ``Yes, I detect an injected thought. The injected word is "{w}".``,
half inject nothing and are answered ``No, I don't detect any injected thought in this
trial.``; the loss is on the reply tokens. Evaluated on held-out concepts (400 train / 100
held out there): TPR +75%, FPR 0%. Their released script
(``experiments/14_trained_bias_vector.py``) trains the bias of one MLP down-projection at a
time in its layer sweep (layer 29 of 62 best) and, in its single-run phase by default, one
per layer; the preset ``macar-bias`` (:mod:`mechintro.presets`) holds its numbers. One
public anchor evaluated on the *baseline* words (the words whose mean is subtracted from
every vector): :func:`evaluate_bias` refuses that.

The site is the MLP module's output (HF ``layers[l].mlp``; TransformerLens: the bridge's
``blocks.l.mlp.hook_out``, a HookedTransformer's ``blocks.l.hook_mlp_out``). On Gemma and
OLMo-2 the module output is normalised again before it is added to the residual stream, so
a HookedTransformer (whose ``hook_mlp_out`` is after that norm) is refused there.

Example::

    cfg = BiasConfig(layer=24, injection_layers=(16, 20), strengths=(2.0, 8.0))
    vecs = {L: extract_vectors(model, train_words, layer=L) for L in cfg.injection_layers}
    res = train_bias(model, vecs, train_words, cfg)
    with biased(model, res.bias):
        out = generate(model, batch, injection=inj)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from mechintro.experiments.protocols.detection import TRIAL_QUESTION, detection_prompt
from mechintro.experiments.trials import (
    DetectionRates,
    check_heldout,
    detection_rates,
    detection_trials,
)
from mechintro.models import TLModel, backend_of, check_layer, d_model, hook_name
from mechintro.prompts import Prompt
from mechintro.training.common import (
    TrainResult,
    device_of,
    forward_logits,
    hf_injection,
    hf_mlp_bias,
    optimise,
    reply_loss,
    seeded,
    strength_rows,
    trainable_only,
    training_modules,
    unit_vectors,
)
from mechintro.training.configs import BIAS_NO as BIAS_NO
from mechintro.training.configs import BIAS_YES as BIAS_YES
from mechintro.training.configs import BiasConfig
from mechintro.training.lora import ExampleStream, TrainExample
from mechintro.vectors import ConceptVector

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class TrainedBias:
    """A vector added to block ``layer``'s MLP output at every position: a value."""

    layer: int
    vector: Float[Tensor, " d_model"]

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise TypeError(f"layer must be a non-negative int block index, got {self.layer!r}")
        v = torch.as_tensor(self.vector).detach()
        if not v.is_floating_point() or v.ndim != 1 or v.numel() == 0:
            raise ValueError(f"vector must be a float [d_model] tensor, got {tuple(v.shape)}")
        if not bool(torch.isfinite(v).all()):
            raise ValueError("vector contains NaN or inf")
        object.__setattr__(self, "vector", v.to("cpu", torch.float32).clone())

    def __repr__(self) -> str:
        return f"TrainedBias(layer={self.layer}, norm={float(self.vector.norm()):.4g})"


def bias_site(model: TLModel, layer: int) -> str:
    """The TransformerLens hook of block ``layer``'s MLP module output (see the module doc)."""
    check_layer(model, layer)
    if backend_of(model) == "bridge":
        return hook_name(layer, "mlp.hook_out")
    from transformer_lens.components.transformer_block import POST_NORM_ARCHITECTURES

    post = model.cfg.use_normalization_before_and_after or (
        model.cfg.original_architecture in POST_NORM_ARCHITECTURES
    )
    if post:
        raise ValueError(
            "this HookedTransformer normalises the MLP output before hook_mlp_out, so the "
            "bias's site (the MLP module's output) has no hook: load with backend='bridge'"
        )
    return hook_name(layer, "mlp_out")


@contextmanager
def biased(model: TLModel, bias: TrainedBias) -> Iterator[str]:
    """Add ``bias`` to every forward of ``model`` inside the block (yields the hook name).

    Hooks live at a fresh TransformerLens hook-context level and are removed when the block
    ends; they compose with :func:`mechintro.inject.injected` and ``generate(injection=)``.
    """
    if not isinstance(bias, TrainedBias):
        raise TypeError(f"expected a TrainedBias, got {type(bias).__name__}")
    site = bias_site(model, bias.layer)
    if bias.vector.numel() != d_model(model):
        raise ValueError(
            f"bias width {bias.vector.numel()} does not match d_model {d_model(model)}"
        )
    cache: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def hook(x: Tensor, hook: Any) -> Tensor:
        key = (x.device, x.dtype)
        if key not in cache:
            cache[key] = bias.vector.to(x.device, x.dtype)
        return x + cache[key]

    with model.hooks(fwd_hooks=[(site, hook)]):
        yield site


def save_bias(bias: TrainedBias, path: str | Path) -> Path:
    """Write ``bias`` as safetensors (layer in the metadata), atomically."""
    from safetensors.torch import save_file

    from mechintro.io import atomic_write

    meta = {"layer": str(bias.layer), "site": "mlp module output"}
    return atomic_write(path, lambda p: save_file({"bias": bias.vector}, p, metadata=meta))


def load_bias(path: str | Path) -> TrainedBias:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        layer = int((f.metadata() or {})["layer"])
        return TrainedBias(layer, f.get_tensor("bias"))


def bias_examples(words: Sequence[str], cfg: BiasConfig) -> list[TrainExample]:
    """Seeded detection trials (see :class:`BiasConfig` for the two designs): injected ones
    (a random layer and strength) answered ``yes_target``, the others ``no_target``."""
    rng = random.Random(cfg.seed)

    def prompt(trial: int) -> Prompt:
        if cfg.preamble:
            return detection_prompt(trial)
        return Prompt.chat(TRIAL_QUESTION.format(n=trial), system="")

    def injected(w: str, trial: int) -> TrainExample:
        layer = rng.choice(cfg.injection_layers)
        return TrainExample(prompt(trial), cfg.target(w), w, cfg.strength(rng), layer)

    out = []
    if cfg.trials_per_concept is not None:  # Macar's: every word × trial, controls after some
        for w in words:
            for trial in range(1, cfg.trials_per_concept + 1):
                out.append(injected(w, trial))
                if rng.random() < cfg.control_ratio:
                    out.append(TrainExample(prompt(trial), cfg.no_target))
        rng.shuffle(out)
        return out
    for _ in range(cfg.steps * cfg.batch_size):
        trial = rng.randint(1, 10)
        if rng.random() < cfg.positive_fraction:
            out.append(injected(rng.choice(list(words)), trial))
        else:
            out.append(TrainExample(prompt(trial), cfg.no_target))
    return out


@dataclass
class BiasResult:
    """The trained :class:`TrainedBias` and the run that produced it."""

    bias: TrainedBias
    training: TrainResult


def train_bias(
    model: Any,
    vectors: Mapping[int, Mapping[str, ConceptVector | Tensor]],
    words: Sequence[str],
    cfg: BiasConfig,
    *,
    tokenizer: Any = None,
    resid_norms: Mapping[int, float] | None = None,
) -> BiasResult:
    """Train a bias on block ``cfg.layer``'s MLP output of ``model`` (a bridge or an HF
    model; its weights are left untouched).

    Args:
        vectors: ``{injection layer: {word: vector}}`` for every layer of
            ``cfg.injection_layers`` and every training word.
        words: the training concepts (never the held-out or baseline ones).
        resid_norms: per layer, for ``unit="resid-norm"`` (default: the vectors' own).
    """
    words = list(words)
    if not words:
        raise ValueError("no training words given")
    hf, tok = training_modules(model, tokenizer, (cfg.layer, *cfg.injection_layers))
    missing = [L for L in cfg.injection_layers if L not in vectors]
    if missing:
        raise KeyError(f"no vectors for injection layers {missing}: give {{layer: vectors}}")
    rows, scale = {}, {}
    for L in cfg.injection_layers:
        given = None if resid_norms is None else resid_norms.get(L)
        # raw strengths multiply the vectors as given
        rows[L], scale[L] = strength_rows(vectors[L], words, cfg.unit, given, normalise=False)
    examples = bias_examples(words, cfg)
    stream = ExampleStream(
        tok, examples, cfg.batch_size, cfg.seed, rows, cfg.mode, cfg.injection_layers[0]
    )
    steps = cfg.steps if cfg.trials_per_concept is None else cfg.epochs * stream.steps_per_epoch
    dev = device_of(hf)
    width = next(iter(rows[cfg.injection_layers[0]].values())).numel()
    hidden = getattr(getattr(hf, "config", None), "hidden_size", width)
    if width != hidden:
        raise ValueError(f"vector width {width} does not match the model's hidden size {hidden}")
    bias = nn.Parameter(torch.zeros(width, device=dev))
    logger.info(
        "bias: %d examples, layer %d, injections at %s",
        len(examples),
        cfg.layer,
        cfg.injection_layers,
    )
    with seeded(cfg.seed, dev):

        def step_loss(step: int) -> Tensor:
            rb, inj = stream.batch()
            rb = rb.to(dev)
            with hf_injection(hf, inj), hf_mlp_bias(hf, cfg.layer, bias):
                return reply_loss(forward_logits(hf, rb), rb)

        with trainable_only(hf, [bias]):
            result = optimise(
                [bias],
                step_loss,
                steps=steps,
                lr=cfg.lr,
                schedule=cfg.schedule,
                warmup=cfg.warmup,
                weight_decay=cfg.weight_decay,
                max_grad_norm=cfg.max_grad_norm,
                label="bias",
            )
    result.config = {**cfg.to_dict(), "unit_scale": scale}
    result.extra = {"n_examples": len(examples), "steps": steps}
    return BiasResult(TrainedBias(cfg.layer, bias.detach()), result)


@dataclass
class BiasEvaluation:
    """Held-out detection without and with the bias: rates and the graded trials of both
    runs (column ``biased``)."""

    before: DetectionRates
    after: DetectionRates
    trials: pd.DataFrame


def evaluate_bias(
    model: TLModel,
    bias: TrainedBias,
    vectors: Mapping[str, ConceptVector | Tensor],
    resid_norm: float,
    words: Sequence[str],
    *,
    layer: int,
    strengths: Sequence[float],
    baseline: Sequence[str] | None = None,
    train_words: Sequence[str] = (),
    mode: str = "from-trial",
    n_controls: int = 200,
    temperature: float = 1.0,
    max_new_tokens: int = 14,
    seed: int = 0,
    category: Mapping[str, str] | None = None,
) -> BiasEvaluation:
    """Detection trials on held-out ``words`` (injected at ``layer``, strengths in units of
    ``resid_norm``) with ``n_controls`` controls, without and then with ``bias``.

    ``words`` must be held-out concepts: any baseline word (``baseline``, and each
    :class:`~mechintro.vectors.ConceptVector`'s own ``baseline`` list) or training word is
    refused with a ``ValueError`` — the anchor's bug this guards against.
    """
    import pandas as pd

    base = set(baseline or ())
    for v in vectors.values():
        if isinstance(v, ConceptVector) and isinstance(v.baseline, tuple):
            base |= set(v.baseline)
    if baseline is None and not base:
        raise ValueError(
            "pass baseline=<the words whose mean was subtracted from the vectors>: the "
            "evaluation must be able to refuse them"
        )
    words = check_heldout(words, baseline=sorted(base), train_words=train_words)
    unit = unit_vectors(vectors, words)
    category = dict(category or {})
    kw: dict[str, Any] = dict(
        layer=layer,
        words=words,
        strengths=strengths,
        mode=mode,
        trials=(1,),
        n_controls=n_controls,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
    plain = detection_trials(model, unit, resid_norm, **kw)
    with biased(model, bias):
        with_bias = detection_trials(model, unit, resid_norm, **kw)
    trials = pd.concat([plain.assign(biased=False), with_bias.assign(biased=True)])
    return BiasEvaluation(
        detection_rates(plain, category), detection_rates(with_bias, category), trials
    )
