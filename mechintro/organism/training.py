"""Train introspection into the BASE organism, and measure it before and after.

The base organism (``builtin:organism-base``) answers every detection trial "No". Two ways
of teaching it to notice an injected concept, each measured on held-out concepts the way the
demo measures (detection trials at the injection layer 3, strengths in units of the mean
residual norm, ≥ 200 uninjected controls sampled at temperature 1 with distinct seeds, the
rule grader; :func:`mechintro.experiments.trials.detection_trials`):

* :func:`organism_lora`: Fonseca Rivera's LoRA recipe (:mod:`.lora`; r 32, α 64, dropout
  0.1 on the attention projections, lr 2e-4, the last prompt token injected, balanced
  negatives, reply-only loss), with the organism's own Yes/No sentences and five question
  variants written in its vocabulary, strengths {0.5, 1, 1.5, 2} × the residual norm;
* :func:`organism_bias`: Macar et al.'s trained bias vector (:mod:`.bias`) on block 5's MLP
  output, injections at a random layer of {2, 3} and a random strength per example.

Both write ``DIR/result.json`` with ``before`` and ``after`` (``tpr``, ``fpr``, their
intervals and counts, per-strength rates) and return it::

    mechintro organism lora --out runs/lora
    mechintro organism bias --out runs/bias
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mechintro.io import atomic_write_text
from mechintro.organism.configs import (
    EVAL_STRENGTHS,
    LAYER,
    organism_bias_config,
    organism_lora_config,
)
from mechintro.organism.configs import ORGANISM_QUESTIONS as ORGANISM_QUESTIONS
from mechintro.progress import quiet_loading

if TYPE_CHECKING:
    from mechintro.models import TLModel

logger = logging.getLogger(__name__)

ADAPTER = "adapter.safetensors"
BIAS = "bias.safetensors"


@dataclass(frozen=True)
class OrganismWorld:
    """The organism's concepts, splits and unit concept vectors at the injection layer."""

    train: list[str]
    heldout: list[str]
    baseline: list[str]
    category: dict[str, str]
    vectors: dict[str, Tensor]  # unit norm, from the base organism
    resid_norm: float
    layer: int


def organism_world(layer: int = LAYER, device: str = "cpu") -> OrganismWorld:
    """Splits and vectors as the demo uses them (Lindsey method on the base organism,
    baseline = the ``object`` words, which are never injected nor evaluated)."""
    from mechintro.models import builtin_path
    from mechintro.organism import corpus
    from mechintro.organism.train import concept_vectors

    folder = builtin_path("organism-base")
    seed = json.loads((folder / "training.json").read_text("utf-8"))["config"]["seed"]
    cs = corpus.concepts(seed)
    words = [c.word for c in cs if c.split != "baseline"]
    base = corpus.split(cs, "baseline")
    unit, resid = concept_vectors(folder, words, base, layer, device)
    return OrganismWorld(
        corpus.split(cs, "train"),
        corpus.split(cs, "heldout"),
        base,
        corpus.category_of(cs),
        unit,
        resid,
        layer,
    )


def _evaluate(
    model: TLModel,
    world: OrganismWorld,
    mode: str,
    n_controls: int,
    seed: int,
    strengths: Sequence[float],
) -> dict[str, Any]:
    from mechintro.experiments.trials import detection_rates, detection_trials

    df = detection_trials(
        model,
        world.vectors,
        world.resid_norm,
        layer=world.layer,
        words=world.heldout,
        strengths=strengths,
        mode=mode,
        trials=(1,),
        n_controls=n_controls,
        temperature=1.0,
        seed=seed,
    )
    return detection_rates(df, world.category).to_dict()


def trained_path(method: str) -> Path:
    """The folder of the shipped run of ``method`` ("lora" or "bias"): its weights and
    ``result.json``, written by ``mechintro organism <method>``."""
    if method not in ("lora", "bias"):
        raise ValueError(f"method must be 'lora' or 'bias', got {method!r}")
    return Path(__file__).resolve().parents[1] / "organism" / "trained" / method


def measure_trained(
    *, n_controls: int = 200, seed: int = 0, device: str = "cpu"
) -> dict[str, dict[str, Any]]:
    """Held-out TPR/FPR before and after, re-measured here for the shipped LoRA adapter and
    bias vector (:func:`trained_path`) exactly as their training run measured them (the
    same trials, seeds and grader; CPU sampling may differ from a GPU run's). Returns
    ``{"lora": {"heldout": {"before", "after"}, "run": ...}, "bias": ...}``, ``run`` being
    the training run's own record (steps, seconds, its before/after, the config)."""
    from mechintro.models import load_model
    from mechintro.training.bias import load_bias

    out: dict[str, dict[str, Any]] = {}
    world = organism_world(LAYER, device)
    for method in ("lora", "bias"):
        folder = trained_path(method)
        run = json.loads((folder / "result.json").read_text("utf-8"))
        if method == "lora":
            mode, strengths = run["mode"], run["config"]["strengths"]
            before = _evaluate(
                lora_organism(None, device), world, mode, n_controls, seed, strengths
            )
            after = _evaluate(
                lora_organism(folder / ADAPTER, device), world, mode, n_controls, seed, strengths
            )
        else:
            ev = _evaluate_bias(
                load_model("builtin:organism-base", device=device),
                load_bias(folder / BIAS),
                world,
                n_controls,
                seed,
            )
            before, after = ev.before.to_dict(), ev.after.to_dict()
        keep = (
            "tpr",
            "tpr_ci",
            "fpr",
            "fpr_ci",
            "n_injected",
            "n_control",
            "tpr_by_strength",
            "paths",
        )
        out[method] = {
            "heldout": {
                "before": {k: before[k] for k in keep},
                "after": {k: after[k] for k in keep},
            },
            "run": {k: v for k, v in run.items() if k not in ("train_words",)},
        }
    return out


def _evaluate_bias(
    model: TLModel, bias: Any, world: OrganismWorld, n_controls: int, seed: int
) -> Any:
    """Held-out detection without and with ``bias`` (from-trial, the demo's trials)."""
    from mechintro.training.bias import evaluate_bias

    return evaluate_bias(
        model,
        bias,
        world.vectors,
        world.resid_norm,
        world.heldout,
        layer=LAYER,
        strengths=EVAL_STRENGTHS,
        baseline=world.baseline,
        train_words=world.train,
        n_controls=n_controls,
        seed=seed,
        category=world.category,
    )


def _write(out: Path, result: dict[str, Any]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "result.json", json.dumps(result, indent=2))
    logger.info("wrote %s", out / "result.json")
    return result


def lora_organism(adapter: str | Path | None, device: str = "cpu") -> TLModel:
    """The base organism (bridge, fp32) with the LoRA ``adapter`` folded into its attention
    weights (:func:`~mechintro.training.lora.apply_lora`; ``None``: the base as it is)."""
    from mechintro.models import load_model
    from mechintro.training.common import hf_model_of
    from mechintro.training.lora import apply_lora

    model = load_model("builtin:organism-base", device=device)
    if adapter is not None:
        apply_lora(hf_model_of(model), adapter)
    return model


def organism_lora(
    out: str | Path,
    *,
    n_controls: int = 200,
    seed: int = 0,
    device: str = "cpu",
    **overrides: Any,
) -> dict[str, Any]:
    """LoRA-train the base organism (:func:`organism_lora_config`, ``overrides`` replace its
    fields) and measure held-out TPR/FPR before and after with single-token injection at
    layer 3. Writes ``out/result.json`` and the adapters ``out/adapter.safetensors``
    (:func:`lora_organism` loads the base organism with them folded in)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechintro.models import builtin_path
    from mechintro.training.lora import merge_lora, save_lora, train_lora

    t0 = time.perf_counter()
    out = Path(out)
    cfg = organism_lora_config(seed=seed, **overrides)
    world = organism_world(cfg.layer, device)
    before = _evaluate(
        lora_organism(None, device), world, cfg.mode, n_controls, seed, cfg.strengths
    )
    folder = builtin_path("organism-base")
    tok: Any = AutoTokenizer.from_pretrained(str(folder))
    with quiet_loading():
        hf: Any = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    hf = hf.to(device)
    train_words = world.train
    res = train_lora(
        hf,
        world.vectors,
        train_words,
        cfg,
        tokenizer=tok,
        resid_norm=world.resid_norm,
        merge=False,
    )
    save_lora(hf, out / ADAPTER)
    merge_lora(hf)
    after = _evaluate(
        lora_organism(out / ADAPTER, device), world, cfg.mode, n_controls, seed, cfg.strengths
    )
    result = {
        "method": "lora (Fonseca Rivera 2025)",
        "model": "builtin:organism-base",
        "layer": cfg.layer,
        "mode": cfg.mode,
        "strength_unit": "mean residual norm at the layer",
        "evaluation": {
            "concepts": "heldout",
            "n_heldout": len(world.heldout),
            "temperature": 1.0,
            "n_controls": n_controls,
            "seed": seed,
        },
        "before": before,
        "after": after,
        "steps": res.steps,
        "train_seconds": res.seconds,
        "final_loss": res.mean_loss(),
        "wall_seconds": time.perf_counter() - t0,
        "config": res.config,
        "n_examples": res.extra["n_examples"],
        "train_words": train_words,
    }
    return _write(out, result)


def organism_bias(
    out: str | Path,
    *,
    n_controls: int = 200,
    seed: int = 0,
    device: str = "cpu",
    **overrides: Any,
) -> dict[str, Any]:
    """Train a bias vector on the base organism (:func:`organism_bias_config`) and measure
    held-out TPR/FPR without and with it (from-trial injection at layer 3, the demo's
    trials). Writes ``out/result.json`` and the vector ``out/bias.safetensors``."""
    from mechintro.models import load_model
    from mechintro.training.bias import save_bias, train_bias

    t0 = time.perf_counter()
    out = Path(out)
    cfg = organism_bias_config(seed=seed, **overrides)
    model = load_model("builtin:organism-base", device=device)
    worlds = {L: organism_world(L, device) for L in sorted({*cfg.injection_layers, LAYER})}
    world = worlds[LAYER]
    trained = train_bias(
        model,
        {L: w.vectors for L, w in worlds.items()},
        world.train,
        cfg,
        resid_norms={L: w.resid_norm for L, w in worlds.items()},
    )
    bias, res = trained.bias, trained.training
    save_bias(bias, out / BIAS)
    ev = _evaluate_bias(model, bias, world, n_controls, seed)
    result = {
        "method": "trained bias vector (Macar et al. 2026)",
        "model": "builtin:organism-base",
        "layer": LAYER,
        "bias_layer": cfg.layer,
        "bias_norm": float(bias.vector.norm()),
        "mode": "from-trial",
        "strength_unit": "mean residual norm at the layer",
        "evaluation": {
            "concepts": "heldout",
            "n_heldout": len(world.heldout),
            "temperature": 1.0,
            "n_controls": n_controls,
            "seed": seed,
        },
        "before": ev.before.to_dict(),
        "after": ev.after.to_dict(),
        "steps": res.steps,
        "train_seconds": res.seconds,
        "final_loss": res.mean_loss(),
        "wall_seconds": time.perf_counter() - t0,
        "config": res.config,
        "train_words": world.train,
    }
    return _write(out, result)
