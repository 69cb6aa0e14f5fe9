"""The experiments ``mechintro run`` runs, one function per kind (docs/protocols.md §10).

Each runner is ``(model, cfg, out, *, small, batch_size) -> DataFrame``: ``cfg`` is the
experiment's parameter table (a preset's fields under the config's own), ``out`` its results
folder, ``small`` shrinks it to a CI size (:func:`shrink_sweep` and each kind's own cuts),
and the DataFrame is the kind's main table, which :mod:`mechintro.app.run_command` writes.
Each parameter table is checked by :func:`check` before any model loads.

=====================  =============================================  ==========================
kind                   what runs                                      resumable
=====================  =============================================  ==========================
sweep                  :func:`~mechintro.experiments.sweeps.run_sweep` by trial (the sweep's own)
                       (any protocol), rule-graded, report.html
intention              a sweep of ``intention`` and                   by trial
                       ``intention-unrelated`` (Lindsey's control),
                       span injection into the context
noise                  Godet's noise controls (noise.csv)             finished folder skipped
patch                  ``mechintro patch``'s sweep                    by component
intentional-control    :func:`~mechintro.experiments.protocols.       finished folder skipped
                       control.intentional_control`
train-lora             sweep before, LoRA, adapter, sweep after       by sweep; training reruns
train-bias             the bias vector, evaluated without and with    finished folder skipped
train-dpo              one preference objective, sweep before/after   by sweep; training reruns
circuits               gates, carriers, the steering graph            finished folder skipped
transcoder-r2          ridge R² of per-concept detection on           the sweep by trial
                       transcoder features vs the PC1 projection
=====================  =============================================  ==========================
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechintro.app.options import UsageError
from mechintro.io import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

    from mechintro.experiments.sweeps import SweepSpec
    from mechintro.models import TLModel
    from mechintro.vectors import ConceptVector

logger = logging.getLogger("mechintro")

#: keys a sweep table takes besides SweepSpec's fields
SWEEP_EXTRAS: tuple[str, ...] = ("depths", "word_list")


NOISE_FILE = "noise.csv"  # where the noise controls are written (mechintro report reads it)

# ---------------------------------------------------------------------------------------------
# sweeps


def _sweep_data(cfg: Mapping[str, Any], fixed: Mapping[str, Any]) -> dict[str, Any]:
    from mechintro.vectors import word_list

    data = {k: v for k, v in cfg.items() if k not in SWEEP_EXTRAS}
    if "word_list" in cfg and "concepts" not in data:
        data["concepts"] = word_list(str(cfg["word_list"]))
    clash = sorted(set(data) & set(fixed))
    if clash:
        raise UsageError(f"{clash} are fixed by this experiment: leave them out")
    return {**data, **fixed}


def shrink_sweep(data: Mapping[str, Any]) -> dict[str, Any]:
    """A CI-sized copy of a sweep table: 3 concepts, 1 layer, the largest strength, 1 trial
    number, 1 sample, at most 2 controls per protocol and 8 new tokens."""
    out = dict(data)
    out["concepts"] = list(out.get("concepts", ()))[:3]
    out["layers"] = sorted(out.get("layers", ()))[-1:]
    if out.get("strengths"):
        out["strengths"] = [max(out["strengths"])]
    out["trial_numbers"] = list(out.get("trial_numbers", (1,)))[:1]
    out["n_samples"] = 1
    out["n_controls"] = min(int(out.get("n_controls", 0)), 2)
    out["max_new_tokens"] = min(int(out.get("max_new_tokens", 100)), 8)
    return out


def sweep_spec(
    cfg: Mapping[str, Any],
    *,
    model: TLModel | None = None,
    small: bool = False,
    fixed: Mapping[str, Any] | None = None,
) -> SweepSpec:
    """The SweepSpec of a sweep table: SweepSpec fields, ``depths`` (fractions of the model's
    depth, added to ``layers``) and ``word_list`` (a shipped list as the concepts). Without a
    model the depths are checked only (layer 0 stands in)."""
    from mechintro.experiments.sweeps import SweepSpec
    from mechintro.models import layer_at_depth

    data = _sweep_data(cfg, fixed or {})
    depths = [float(d) for d in cfg.get("depths", ())]
    if any(not 0 <= d < 1 for d in depths):
        raise UsageError(f"depths are fractions in [0, 1), got {depths}")
    found = [layer_at_depth(model, d) for d in depths] if model is not None else [0] * bool(depths)
    data["layers"] = sorted({*data.get("layers", ()), *found})
    if small:
        data = shrink_sweep(data)
    try:
        return SweepSpec.from_dict(data)
    except (TypeError, ValueError) as e:
        raise UsageError(str(e)) from None


def sweep_table(out: Path) -> pd.DataFrame:
    """Rule-grade a sweep folder (resumable) and return its rates by protocol, layer and
    strength (intention protocols: apology and acceptance rates by condition); writes
    ``report.html``."""
    import pandas as pd

    from mechintro.app.report import (
        choose_grader,
        grade_results,
        graded_trials,
        intention_trials,
        load_grades,
        rates,
        write_report,
    )
    from mechintro.experiments.grading import RuleGrader
    from mechintro.experiments.protocols.intention import intention_rates
    from mechintro.experiments.sweeps import load_results

    grade_results(out, RuleGrader(), progress=False)
    write_report(out)
    trials, grades = load_results(out), load_grades(out)
    grader = choose_grader(grades) or "rule"
    frames = []
    graded = graded_trials(trials, grades, grader)
    if len(graded):
        frames.append(rates(graded, by=["protocol", "layer", "strength"], control_by=["protocol"]))
    intent = intention_trials(trials, grades, grader)
    if len(intent):
        frames.append(intention_rates(intent, by=["protocol", "condition", "strength"]))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def run_sweep_kind(
    model: TLModel, cfg: Mapping[str, Any], out: Path, *, small: bool, batch_size: int = 32
) -> pd.DataFrame:
    """``experiment = "sweep"``: any sweep (every protocol of the registry)."""
    from mechintro.experiments.sweeps import run_sweep

    run_sweep(model, sweep_spec(cfg, model=model, small=small), out, batch_size=batch_size)
    return sweep_table(out)


#: the intention experiment's fixed sweep settings (docs/protocols.md §6)
INTENTION_FIXED: Mapping[str, Any] = {
    "protocols": ("intention", "intention-unrelated"),
    "modes": ("span",),
    "start": "context",
}


def run_intention_kind(
    model: TLModel, cfg: Mapping[str, Any], out: Path, *, small: bool, batch_size: int = 32
) -> pd.DataFrame:
    """``experiment = "intention"``: Lindsey's prefill intention with its unrelated-concept
    control, as a sweep of ``intention`` (the concept prefilled and injected) and
    ``intention-unrelated`` ("bread" prefilled, the concept injected)."""
    from mechintro.experiments.sweeps import run_sweep

    spec = sweep_spec(cfg, model=model, small=small, fixed=INTENTION_FIXED)
    run_sweep(model, spec, out, batch_size=batch_size)
    return sweep_table(out)


# ---------------------------------------------------------------------------------------------
# noise, patch, intentional control


#: keys that belong at the top of a config, not in an experiment's table
RUN_KEYS: tuple[str, ...] = ("model", "revision", "out", "backend", "dtype", "device", "batch_size")


def _table(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A copy of an experiment's table, refusing the run's own keys in it."""
    misplaced = sorted(set(cfg) & set(RUN_KEYS))
    if misplaced:
        raise UsageError(f"[{where}]: {misplaced} are set at the top of the config (or --out)")
    return dict(cfg)


def noise_config(cfg: Mapping[str, Any], *, small: bool = False) -> Any:
    """A NoiseConfig from a noise table (``model`` and ``out`` are the run's)."""
    from mechintro.app.options import NoiseConfig

    data = _table(cfg, "noise")
    if small:
        data["strengths"] = [0.0, max(data.get("strengths", [10.0]))]
        data["n_random"] = 1
        if not data.get("controls"):
            data["battery"] = 1
        for k in ("layers", "depths"):
            if data.get(k):
                data[k] = list(data[k])[:1]
    try:
        return NoiseConfig(model="-", out="-", **_tuples(data))
    except (TypeError, ValueError) as e:
        raise UsageError(f"[noise]: {e}") from None


def run_noise_kind(
    model: TLModel, cfg: Mapping[str, Any], out: Path, *, small: bool, batch_size: int = 64
) -> pd.DataFrame:
    """``experiment = "noise"``: Godet's noise controls (docs/protocols.md §5)."""
    return run_noise(model, noise_config(cfg, small=small), out, batch_size=batch_size)


def run_noise(model: TLModel, c: Any, out: Path, *, batch_size: int) -> pd.DataFrame:
    """Godet's noise controls as a NoiseConfig ``c`` says, into ``out/noise.csv``; returns the
    specificity table (the command line's ``mechintro noise`` and ``experiment = "noise"``)."""
    from mechintro.experiments.protocols.noise import (
        CONTROL_BATTERY,
        INTROSPECTION,
        NoiseControls,
        godet_vectors,
    )
    from mechintro.models import layer_at_depth
    from mechintro.vectors import extract_vectors

    layers = sorted({*c.layers, *(layer_at_depth(model, d, rule="floor") for d in c.depths)})
    vectors: Any
    if c.concepts:
        vectors = {
            L: extract_vectors(
                model, c.concepts, layer=L, baseline=c.baseline or None, cache_dir=out / "vectors"
            )
            for L in layers
        }
    else:
        vectors = godet_vectors(model, layers)
    battery = {q.id: q for q in CONTROL_BATTERY}  # the ids were checked with the options
    chosen = [battery[q] for q in c.controls] or CONTROL_BATTERY[: c.battery]
    controls = NoiseControls(
        layers=tuple(layers),
        strengths=c.strengths,
        questions=(INTROSPECTION, *chosen),
        n_random=c.n_random,
        seed=c.seed,
        yes=c.yes,
        no=c.no,
    )
    df = controls.run(model, vectors, batch_size=batch_size)
    atomic_write_text(out / NOISE_FILE, df.to_csv(index=False))
    return controls.specificity(df)


def patch_config(cfg: Mapping[str, Any], out: Path, *, small: bool = False, **run: Any) -> Any:
    """A PatchConfig from a patch table (``model``, ``out`` and the model keys are the run's)."""
    from mechintro.app.patch_sweep import PatchConfig

    data = _table(cfg, "patch")
    if small:
        data["components"] = list(data.get("components", ("resid_post",)))[:1]
        data["positions"] = ["all"]
    try:
        return PatchConfig(out=str(out), **run, **_tuples(data))
    except (TypeError, ValueError) as e:
        raise UsageError(f"[patch]: {e}") from None


def run_patch_kind(
    model: TLModel, cfg: Mapping[str, Any], out: Path, *, small: bool, batch_size: int = 64
) -> pd.DataFrame:
    """``experiment = "patch"``: a layer × position × component patching sweep (resumable)."""
    import pandas as pd

    from mechintro.app.patch_sweep import run_patch_sweep
    from mechintro.models import model_info

    info = model_info(model)
    c = patch_config(
        cfg, out, small=small, model=info.name, revision=info.revision or "", batch_size=batch_size
    )
    frames = run_patch_sweep(c, model)
    return pd.concat([f.assign(component=k) for k, f in frames.items()], ignore_index=True)


@dataclass(frozen=True)
class ControlParams:
    """Lindsey's intentional control (docs/protocols.md §6): "think about" / "don't think
    about" a word while writing a sentence; the projection on the word's vector."""

    words: tuple[str, ...] = ("aquariums",)  # the words to think (or not) about
    layers: tuple[int, ...] = ()  # blocks to read (default: depth 2/3)
    baseline: tuple[str, ...] = ()  # the vectors' baseline words (default: the method's)
    measure: str = "generated"  # generated (the model's own sentence) or prefilled
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        from mechintro.experiments.protocols.control import MEASURES

        if self.measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, got {self.measure!r}")
        if not self.words:
            raise ValueError("words is empty")


def run_control_kind(
    model: TLModel, cfg: Mapping[str, Any], out: Path, *, small: bool, batch_size: int = 32
) -> pd.DataFrame:
    """``experiment = "intentional-control"``: projections per condition, layer and word."""
    from mechintro.experiments.protocols.control import (
        SENTENCES,
        control_summary,
        intentional_control,
    )
    from mechintro.models import layer_at_depth
    from mechintro.vectors import extract_vectors

    p = build(ControlParams, cfg, "intentional-control")
    layers = list(p.layers) or [layer_at_depth(model, 2 / 3)]
    sentences = SENTENCES[:1] if small else SENTENCES
    base = list(p.baseline) or None
    vectors = {L: extract_vectors(model, list(p.words), layer=L, baseline=base) for L in layers}
    df = intentional_control(
        model,
        vectors,
        sentences=sentences,
        measure=p.measure,  # checked by ControlParams
        max_new_tokens=p.max_new_tokens,
        batch_size=batch_size,
    )
    atomic_write_text(out / "control_trials.csv", df.to_csv(index=False))
    return control_summary(df)


# ---------------------------------------------------------------------------------------------
# training


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
    if small:
        run["words"] = list(run.get("words", ()))[:4]
        run["heldout"] = list(run.get("heldout", ()))[:2]
        run["n_controls"] = min(int(run.get("n_controls", 20)), 2)
        run["max_new_tokens"] = min(int(run.get("max_new_tokens", 20)), 6)
        for k, v in (("max_steps", 2), ("steps", 2), ("epochs", 1)):
            if k in names:
                rest[k] = v
    try:
        return TrainRun(**_tuples(run)), config_cls(**_tuples(rest))
    except (TypeError, ValueError) as e:
        raise UsageError(f"[{where}]: {e}") from None


def _vectors(
    model: TLModel, words: Sequence[str], layer: int, method: str, baseline: Sequence[str]
) -> dict[str, ConceptVector]:
    from mechintro.vectors import extract_vectors

    return extract_vectors(model, list(words), layer=layer, method=method, baseline=list(baseline))


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
    vecs = _vectors(model, [*run.words, *run.heldout], c.layer, method, run.baseline)

    def train() -> None:
        result = train_lora(model, vecs, list(run.words), c, merge=False)
        save_lora(hf_model_of(model), out / "adapter.safetensors")
        merge_lora(hf_model_of(model))
        atomic_write_text(out / "training.json", json.dumps(_plain(result), indent=2))

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
    vecs = _vectors(model, [*run.words, *run.heldout], layer, "lindsey", run.baseline)

    def train() -> None:
        pairs = introspection_pairs(list(run.words), pairs_cfg)
        result = train_preferences(model, pairs, c, vectors=vecs)
        atomic_write_text(out / "training.json", json.dumps(_plain(result), indent=2))

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
        L: _vectors(model, [*run.words, *run.heldout], L, "lindsey", run.baseline) for L in layers
    }
    result = train_bias(model, vecs, list(run.words), c)
    save_bias(result.bias, out / "bias.safetensors")
    atomic_write_text(out / "training.json", json.dumps(_plain(result.training), indent=2))
    at = getattr(c, "eval_layer", None) or run.eval_layer or layers[-1]
    if at not in vecs:
        vecs[at] = _vectors(model, run.heldout, at, "lindsey", run.baseline)
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
        {"stage": s, **_flat(r.to_dict())} for s, r in (("before", ev.before), ("after", ev.after))
    ]
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# circuits and transcoder R²


@dataclass(frozen=True)
class CircuitParams:
    """The circuit analyses (gates, carriers, the steering graph; docs/protocols.md §7)."""

    layer: int = 3  # the injection layer (block output)
    strength: float = 1.0  # in units of the residual norm
    concepts: tuple[str, ...] = ()  # default: the organism's held-out concepts
    baseline: tuple[str, ...] = ()  # the vectors' baseline words
    transcoders: str = "builtin"  # builtin (the organism's) or a folder of layer_L folders
    n_graphs: int = 3  # steering graphs (each edge checked by its intervention)

    def __post_init__(self) -> None:
        if self.n_graphs < 1:
            raise ValueError("n_graphs must be at least 1")


def _transcoders(source: str) -> Any:
    from mechintro.analysis.transcoders import load_transcoder, organism_transcoders

    if source == "builtin":
        return organism_transcoders()
    folders = sorted(Path(source).glob("layer_*"))
    if not folders:
        raise FileNotFoundError(f"{source}: no layer_L transcoder folders in it")
    return {int(p.name.removeprefix("layer_")): load_transcoder(p) for p in folders}


def _world(model: TLModel, p: CircuitParams, *, small: bool) -> Any:
    """The concepts, unit vectors and residual norm the analyses inject."""
    from mechintro.models import model_info
    from mechintro.organism.training import OrganismWorld, organism_world

    if not p.concepts and model_info(model).name.startswith("builtin:organism"):
        world = organism_world(p.layer)
    else:
        if not p.concepts:
            raise UsageError("[circuits]: give concepts (only builtin:organism has defaults)")
        vecs = _vectors(model, p.concepts, p.layer, "lindsey", p.baseline)
        unit = {w: v.vector / v.vector.norm() for w, v in vecs.items()}
        resid = next(iter(vecs.values())).resid_norm or 1.0
        world = OrganismWorld([], list(p.concepts), list(p.baseline), {}, unit, resid, p.layer)
    if small:
        world = dataclasses.replace(world, heldout=world.heldout[:4])
    return world


def run_circuits_kind(
    model: TLModel, cfg: Mapping[str, Any], out: Path, *, small: bool, batch_size: int = 32
) -> pd.DataFrame:
    """``experiment = "circuits"``: gates, their classes, ablation and patching, evidence
    carriers and steering graphs; metrics in ``circuits.json``, tables, ``circuits.html``."""
    import pandas as pd

    from circuits.figures import circuits_section
    from mechintro.html_page import html_report
    from mechintro.organism.circuit import organism_circuits

    p = build(CircuitParams, cfg, "circuits")
    world = _world(model, p, small=small)
    metrics, frames = organism_circuits(
        model,
        _transcoders(p.transcoders),
        world,
        strength=p.strength,
        n_graphs=1 if small else p.n_graphs,
        out=out,
    )
    atomic_write_text(out / "circuits.json", json.dumps(_plain(metrics), indent=2))
    for name in ("progressive", "curves", "carriers", "verification"):
        atomic_write_text(out / f"{name}.csv", frames[name].to_csv(index=False))
    html_report("Circuits", [circuits_section(metrics, frames)], path=out / "circuits.html")
    flat = _flat({k: v for k, v in metrics.items() if k not in ("gates",)})
    return pd.DataFrame([flat])


@dataclass(frozen=True)
class R2Params:
    """Ridge R² of per-concept detection rates on transcoder features vs on the scalar
    projection of each concept vector on the vectors' PC1 (docs/protocols.md §7)."""

    sweep: Mapping[str, Any] = field(default_factory=dict)  # the detection sweep (a [sweep] table)
    transcoders: str = "builtin"  # builtin (the organism's) or a folder of layer_L folders
    outer: int = 5  # outer folds
    inner: int = 4  # inner folds (the penalty)
    seed: int = 0


def run_r2_kind(
    model: TLModel, cfg: Mapping[str, Any], out: Path, *, small: bool, batch_size: int = 32
) -> pd.DataFrame:
    """``experiment = "transcoder-r2"``: a detection sweep (``out/sweep``, resumable), then
    for each concept its detection rate (the sweep's rule grades), its transcoder features
    (each feature's mean activation over the positions of the concept's steered trial-1
    prompt, at the sweep's largest strength, every transcoder after the injection layer) and
    its vector's projection on the vectors' first principal component; nested ridge R² of
    the rates on each (``concepts.csv``: the rates and projections)."""
    import numpy as np
    import pandas as pd
    import torch

    from mechintro.analysis.directions.geometry import ridge_cv
    from mechintro.analysis.transcoders import feature_activations
    from mechintro.app.report import choose_grader, graded_trials, load_grades
    from mechintro.experiments.protocols import get
    from mechintro.experiments.sweeps import load_frozen, load_results, run_sweep
    from mechintro.models import tokenizer_of

    p = build(R2Params, cfg, "transcoder-r2")
    spec = sweep_spec(p.sweep, model=model)
    if small:
        spec = dataclasses.replace(
            spec, n_controls=min(spec.n_controls, 2), max_new_tokens=min(spec.max_new_tokens, 6)
        )
    run_sweep(model, spec, out / "sweep", batch_size=batch_size, progress=False)
    sweep_table(out / "sweep")
    trials, grades = load_results(out / "sweep"), load_grades(out / "sweep")
    graded = graded_trials(trials, grades, choose_grader(grades) or "rule")
    injected = graded[graded.injected.astype(bool) & ~graded.forced.astype(bool)]
    hits = (injected.detection == "YES").astype(float)
    rates = {str(w): float(r) for w, r in hits.groupby(injected.concept).mean().items()}
    words = sorted(rates)
    layer, strength = spec.layers[0], max(spec.strengths)
    frozen = load_frozen(out / "sweep")
    added = torch.stack([frozen.rows[(layer, w)] for w in words])  # what a strength of 1 adds
    tcs = {k: v for k, v in _transcoders(p.transcoders).items() if k > layer}
    protocol = get(spec.protocols[0])
    tok = tokenizer_of(model)
    prompts = [protocol.prompt(1, concept=w, tokenizer=tok) for w in words]
    inj = protocol.injection(layer, added, strength, mode=spec.modes[0], start=spec.start)
    fa = feature_activations(model, tcs, prompts, injection=inj, batch_size=batch_size)
    idx = fa.prompt.numpy()
    feats = []
    for L in sorted(fa.acts):
        dense = fa.acts[L].to_dense().numpy()
        feats.append(np.stack([dense[idx == i].mean(0) for i in range(len(words))]))
    X = np.concatenate(feats, axis=1)
    V = added.double().numpy()
    Vc = V - V.mean(0)
    pc1 = np.linalg.svd(Vc, full_matrices=False)[2][0]
    proj = (V @ pc1)[:, None]
    y = [rates[w] for w in words]
    kw = dict(outer=p.outer, inner=p.inner, seed=p.seed, words=words)
    try:
        res = {
            "transcoder_features": ridge_cv(X, y, **kw),
            "pc1_projection": ridge_cv(proj, y, **kw),
        }
    except ValueError as e:
        raise UsageError(f"[transcoder-r2]: {e}") from None
    per = pd.DataFrame({"concept": words, "detection_rate": y, "pc1_projection": proj[:, 0]})
    atomic_write_text(out / "concepts.csv", per.to_csv(index=False))
    return pd.DataFrame(
        [
            {
                "predictor": k,
                "r2": r.r2,
                "correlation": r.correlation,
                "n_concepts": len(words),
                "n_features": X.shape[1] if k == "transcoder_features" else 1,
            }
            for k, r in res.items()
        ]
    )


# ---------------------------------------------------------------------------------------------
# helpers


def build(cls: Any, cfg: Mapping[str, Any], where: str) -> Any:
    """``cls(**cfg)`` with unknown keys and refused values as a UsageError naming the valid
    keys."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(cfg) - set(names))
    if unknown:
        raise UsageError(f"[{where}]: unknown keys {unknown}: valid keys are {names}")
    try:
        return cls(**_tuples(cfg))
    except (TypeError, ValueError) as e:
        raise UsageError(f"[{where}]: {e}") from None


def _tuples(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as one row: ``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists as JSON."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(_plain(v))
        else:
            out[key] = v
    return out


def _plain(x: Any) -> Any:
    """JSON values of a result (dataclasses, tensors, numpy numbers)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _plain(dataclasses.asdict(x))
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)
