"""The training kinds of ``mechintro run``: ``train-lora`` (Fonseca Rivera's LoRA recipe,
docs/protocols.md §8), ``train-dpo`` (one preference objective) and ``train-bias`` (Macar et
al.'s bias vector, docs/protocols.md §7), each evaluated by held-out detection before and
after training. :func:`split_train` parts a training table into the run's keys
(:class:`TrainRun`) and the training config's."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechintro.app.kinds.common import concept_vectors, flat_row, tuples
from mechintro.app.kinds.sweeps import sweep_table
from mechintro.app.options import UsageError
from mechintro.io import atomic_write_text, json_ready

if TYPE_CHECKING:
    import pandas as pd

    from mechintro.models import TLModel


@dataclass(frozen=True)
class TrainRun:
    """What a training table holds besides its config class's fields."""

    words: tuple[str, ...] = ()  # training concepts
    heldout: tuple[str, ...] = ()  # evaluation concepts (never trained on)
    baseline: tuple[str, ...] = ()  # the concept vectors' baseline words
    eval_strengths: tuple[float, ...] = ()  # evaluation strengths (default: the training ones)
    eval_layer: int | None = None  # the bias vector's evaluation layer (default: the last one)
    n_controls: int = 20  # uninjected evaluation trials
    max_new_tokens: int = 20  # evaluation reply length
    temperature: float = 1.0  # evaluation sampling temperature

    def __post_init__(self) -> None:
        if not self.words or not self.heldout:
            raise ValueError("give words (training concepts) and heldout (evaluation concepts)")
        both = sorted(set(self.words) & set(self.heldout))
        if both:
            raise ValueError(f"{both} are both training and held-out concepts")


TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainRun))


def named(run: dict[str, Any]) -> None:
    """Replace, in place, a word-list name given for ``heldout``, ``baseline`` or ``words``
    by the list it names (:func:`mechintro.vectors.word_list`); training words from a named
    list leave out the held-out ones (e.g. ``words = "macar_train"`` beside Fonseca's 20
    held-out concepts, five of which are among those 400)."""
    from mechintro.vectors import word_list

    for key in ("heldout", "baseline", "words"):
        if isinstance(run.get(key), str):
            words = word_list(run[key])
            if key == "words":
                held = set(run.get("heldout", ()))
                words = [w for w in words if w not in held]
            run[key] = words


def split_train(
    cfg: Mapping[str, Any], config_cls: Any, where: str, *, small: bool = False
) -> tuple[TrainRun, Any]:
    """(the run's keys, the config class built from the rest), each checked; a key that is a
    field of ``config_cls`` goes there."""
    names = [f.name for f in dataclasses.fields(config_cls)]
    run = {k: v for k, v in cfg.items() if k in TRAIN_KEYS and k not in names}
    rest = {k: v for k, v in cfg.items() if k not in run}
    unknown = sorted(set(rest) - set(names))
    if unknown:
        raise UsageError(
            f"[{where}]: unknown keys {unknown}: valid keys are {[*TRAIN_KEYS, *names]}"
        )
    try:
        named(run)
    except ValueError as e:
        raise UsageError(f"[{where}]: {e}") from None
    if small:
        run["words"] = list(run.get("words", ()))[:4]
        run["heldout"] = list(run.get("heldout", ()))[:2]
        run["n_controls"] = min(int(run.get("n_controls", 20)), 2)
        run["max_new_tokens"] = min(int(run.get("max_new_tokens", 20)), 6)
        for k, v in (("max_steps", 2), ("steps", 2), ("epochs", 1)):
            if k in names:
                rest[k] = v
    try:
        return TrainRun(**tuples(run)), config_cls(**tuples(rest))
    except (TypeError, ValueError) as e:
        raise UsageError(f"[{where}]: {e}") from None


def _eval_sweep(
    model: TLModel,
    run: TrainRun,
    out: Path,
    *,
    layer: int,
    strengths: Sequence[float],
    unit: str,
    mode: str,
    protocol: str,
    method: str,
    batch_size: int,
) -> pd.DataFrame:
    """A held-out detection sweep (resumable, rule-graded, report.html) and its rates."""
    from mechintro.experiments.sweeps import SweepSpec, run_sweep

    spec = SweepSpec(
        concepts=run.heldout,
        layers=(layer,),
        strengths=tuple(run.eval_strengths or strengths),
        protocols=(protocol,),
        modes=(mode,),
        n_controls=run.n_controls,
        temperature=run.temperature,
        max_new_tokens=run.max_new_tokens,
        method=method,
        baseline=run.baseline,
        unit=unit,
    )
    run_sweep(model, spec, out, batch_size=batch_size, progress=False)
    return sweep_table(out)


def _train_protocol(prompt_format: str, preamble: bool) -> tuple[str, str]:
    """(evaluation protocol, vector method) of a LoRA/preference prompt format."""
    if prompt_format == "fonseca":
        return "transient/fonseca", "fonseca"
    return ("detection" if preamble else "transient"), "lindsey"


def _before_after(
    model: TLModel,
    run: TrainRun,
    out: Path,
    train: Callable[[], None],
    **sweep: Any,
) -> pd.DataFrame:
    import pandas as pd

    before = _eval_sweep(model, run, out / "before", **sweep)
    train()
    after = _eval_sweep(model, run, out / "after", **sweep)
    return pd.concat([before.assign(stage="before"), after.assign(stage="after")])


def run_lora_kind(
    model: TLModel, cfg: Mapping[str, Any], out: Path, *, small: bool, batch_size: int = 32
) -> pd.DataFrame:
    """``experiment = "train-lora"``: Fonseca Rivera's LoRA recipe (docs/protocols.md §8),
    held-out detection before and after, the adapter in ``adapter.safetensors``."""
    from mechintro.training.common import hf_model_of
    from mechintro.training.lora import LoRAConfig, merge_lora, save_lora, train_lora

    run, c = split_train(cfg, LoRAConfig, "train-lora", small=small)
    protocol, method = _train_protocol(c.prompt_format, c.preamble)
    vecs = concept_vectors(model, [*run.words, *run.heldout], c.layer, method, run.baseline)

    def train() -> None:
        result = train_lora(model, vecs, list(run.words), c, merge=False)
        save_lora(hf_model_of(model), out / "adapter.safetensors")
        merge_lora(hf_model_of(model))
        atomic_write_text(out / "training.json", json.dumps(json_ready(result), indent=2))

    return _before_after(
        model,
        run,
        out,
        train,
        layer=c.layer,
        strengths=c.strengths,
        unit=c.unit,
        mode=c.mode,
        protocol=protocol,
        method=method,
        batch_size=batch_size,
    )


def run_dpo_kind(
    model: TLModel, cfg: Mapping[str, Any], out: Path, *, small: bool, batch_size: int = 32
) -> pd.DataFrame:
    """``experiment = "train-dpo"``: one preference objective (``objective``: dpo, sft,
    sft-kl, ...) on organism-style introspection pairs, detection before and after."""
    from mechintro.experiments.protocols.detection import TRIAL_QUESTION
    from mechintro.training.lora import LoRAConfig
    from mechintro.training.preference import (
        PreferenceConfig,
        introspection_pairs,
        train_preferences,
    )

    run, c = split_train(cfg, PreferenceConfig, "train-dpo", small=small)
    layer = c.layer if c.layer is not None else 0
    pairs_cfg = LoRAConfig(  # the detection dialogue, "Trial n" where from-trial starts
        layer=layer,
        questions=(TRIAL_QUESTION,),
        strengths=tuple(run.eval_strengths or (1.0,)),
        unit=c.unit,
        mode=c.mode,
        prompt_format="chat",
        preamble=True,
        seed=c.seed,
    )
    if c.layer is None:
        raise UsageError("[train-dpo]: give layer (the injection block of the pairs)")
    vecs = concept_vectors(model, [*run.words, *run.heldout], layer, "lindsey", run.baseline)

    def train() -> None:
        pairs = introspection_pairs(list(run.words), pairs_cfg)
        result = train_preferences(model, pairs, c, vectors=vecs)
        atomic_write_text(out / "training.json", json.dumps(json_ready(result), indent=2))

    return _before_after(
        model,
        run,
        out,
        train,
        layer=layer,
        strengths=pairs_cfg.strengths,
        unit=c.unit,
        mode=c.mode,
        protocol="detection",
        method="lindsey",
        batch_size=batch_size,
    )


def run_bias_kind(
    model: TLModel, cfg: Mapping[str, Any], out: Path, *, small: bool, batch_size: int = 32
) -> pd.DataFrame:
    """``experiment = "train-bias"``: Macar et al.'s bias vector (docs/protocols.md §7), in
    ``bias.safetensors``; held-out detection without and with it."""
    import pandas as pd

    from mechintro.training.bias import BiasConfig, evaluate_bias, save_bias, train_bias

    run, c = split_train(cfg, BiasConfig, "train-bias", small=small)
    layers = sorted({*c.injection_layers})
    vecs = {
        L: concept_vectors(model, [*run.words, *run.heldout], L, "lindsey", run.baseline)
        for L in layers
    }
    result = train_bias(model, vecs, list(run.words), c)
    save_bias(result.bias, out / "bias.safetensors")
    atomic_write_text(out / "training.json", json.dumps(json_ready(result.training), indent=2))
    at = getattr(c, "eval_layer", None) or run.eval_layer or layers[-1]
    if at not in vecs:
        vecs[at] = concept_vectors(model, run.heldout, at, "lindsey", run.baseline)
    held = {w: vecs[at][w] for w in run.heldout}
    resid = next(iter(held.values())).resid_norm or 1.0
    ev = evaluate_bias(
        model,
        result.bias,
        held,
        resid,
        list(run.heldout),
        layer=at,
        strengths=tuple(run.eval_strengths or c.strengths),
        baseline=list(run.baseline) or None,
        train_words=list(run.words),
        mode=c.mode,
        n_controls=run.n_controls,
        temperature=run.temperature,
    )
    atomic_write_text(out / "bias_trials.csv", ev.trials.to_csv(index=False))
    rows = [
        {"stage": s, **flat_row(r.to_dict())}
        for s, r in (("before", ev.before), ("after", ev.after))
    ]
    return pd.DataFrame(rows)
