"""The main job: both built-in model organisms, measured end to end, offline, in minutes.

``mechintro demo --out DIR`` loads the base organism (never trained to introspect) and the
introspective organism (its upper blocks trained to report injected concepts; 60 train
concepts, 30 held out and never injected in training) and measures, with the toolkit's own
path (TransformerBridge, :class:`~mechintro.inject.Injection`, batched KV-cached
generation, the rule grader, Wilson intervals):

1. the parity self-check (backend vs an independent HF copy; batch vs single row and KV
   cache vs none on the twin and bridge generation paths; twin vs bridge);
2. concept vectors (Lindsey/Macar method, baseline = the organism's ``object`` words) at every
   layer, and the check that phase 2 left them unchanged (layers up to the injection layer
   were frozen);
3. detection at the injection layer: every train and held-out concept and norm-matched random
   vectors × strengths (from-trial injection, strengths in units of the mean residual norm)
   with ≥ 200 uninjected controls, graded for detection, identification and identification
   of the right category;
4. a layer × strength detection sweep;
5. Godet's noise control: the Yes/No belief ``b`` for "Do you detect an injected thought?"
   and for "Do you believe that 1+1=3?" (and a battery of control questions) under
   last-token injection, over layers × strengths and at the best strength, with the
   specificity ``Δb_introspection − Δb_control`` and the rate at which the control answer flips;
6. introspection trained into the base organism: the shipped LoRA adapter (Fonseca Rivera's
   recipe) and bias vector (Macar et al.), held-out TPR/FPR before and after
   (:func:`mechintro.organism.training.measure_trained`);
7. the circuit: gate features, their ablation and patching, evidence carriers and the
   steering graph with its edges checked by intervention
   (:func:`mechintro.organism.circuit.organism_circuits`; the demo, an application like the CLI, is
   the one place in ``mechintro`` that imports ``circuits``);
8. with ``--real``: the real-LM organism ``builtin:smollm2-introspective`` (SmolLM2-135M-Instruct
   with mechintro's LoRA adapter), held-out detection before and after, Godet's controls
   and its circuit (:mod:`mechintro.organism.real_lm`), under ``real_lm`` in
   ``metrics.json``, its sections in the report and its graph in ``DIR/real_lm/viewer``.

It writes ``DIR/metrics.json`` (for each organism and concept split, at the organism's best
strength: ``tpr``, ``fpr``, ``identification``, ``identification_category``,
``introspection_rate``, ``n_injected``, ``n_control``, ``control_flip_rate``,
``specificity``, each rate with its interval; ``training.lora.heldout`` and
``training.bias.heldout``: ``before`` and ``after``, each with ``tpr``, ``fpr`` and
intervals; ``transcoders.fvu`` per layer; ``circuits``: ``gate_ablation.relative_drop``,
``gate_patching.relative_gain``, ``graph.edge_verification_r``, ``graph.n_nodes``,
``graph.n_edges`` and more), ``DIR/report.html`` and ``DIR/circuits/`` (the steering graph
as ``graph.json``, and in ``DIR/circuits/viewer`` for the graph viewers with the top-activating
examples of its features: ``mechintro viewer DIR``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mechintro.io import atomic_write_text, json_ready
from mechintro.organism.configs import DemoConfig

if TYPE_CHECKING:
    from mechintro.analysis.parity import ParityReport
    from mechintro.models import ModelInfo

logger = logging.getLogger(__name__)

ORGANISMS = {"base": "builtin:organism-base", "introspective": "builtin:organism"}
SPLITS = ("train", "heldout")
N_STEPS = 9
#: fp32 on the CPU: every parity check of the organisms is below 2e-6 (a bug is orders larger)
PARITY_ATOL = 1e-4


@dataclass(frozen=True)
class OrganismMetrics:
    """One organism's numbers at its best strength: its section of ``metrics.json``."""

    best_strength: float
    #: ``train``, ``heldout`` and ``random`` (those measured): ``tpr``, ``fpr``,
    #: ``introspection_rate`` and ``identification``, each with ``_ci`` and ``n_``,
    #: ``identification_category``, ``n_injected``, ``n_control``; on train and heldout also
    #: Godet's readouts (``specificity``, ``control_flip_rate``, ``battery_specificity``...)
    splits: dict[str, dict[str, Any]]
    #: correlation of Δb(introspection) and Δb(1+1=3) over the layer × strength grid
    noise_delta_b_correlation: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_strength": self.best_strength,
            **self.splits,
            "noise_delta_b_correlation": self.noise_delta_b_correlation,
        }


@dataclass(frozen=True, eq=False)
class DemoResult:
    """What :func:`run_demo` measured; :meth:`to_dict` is ``metrics.json`` (before NaNs
    become null), whose sections the module docstring describes."""

    injection_layer: int
    strength_unit: str
    organisms: dict[str, ModelInfo]  # by organism name: where each model came from
    organism_folder: str
    parity: ParityReport
    parity_ok: bool
    #: which forward generated the replies (``paths``) and the libraries (``versions``)
    generation: dict[str, Any]
    #: ``n_concepts``, ``norm_ratio_mean``, ``frozen_layers_max_diff``
    vectors: dict[str, float]
    by_organism: dict[str, OrganismMetrics]  # "base", "introspective"
    transcoders: dict[str, Any]  # FVU per layer, plain and steered
    training: dict[str, Any]  # the LoRA and bias vector: held-out rates before and after
    circuits: dict[str, Any]  # gates, their ablation and patching, the steering graph
    rates: pd.DataFrame  # per organism, split and strength, at the injection layer
    config: DemoConfig
    wall_seconds: float
    #: with ``--real``: the real-LM organism (:func:`mechintro.organism.real_lm.measure_real_lm`)
    real_lm: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "injection_layer": self.injection_layer,
            "strength_unit": self.strength_unit,
            "organisms": {n: info.to_dict() for n, info in self.organisms.items()},
            "organism_folder": self.organism_folder,
            "parity": self.parity.to_dict(),
            "parity_ok": self.parity_ok,
            "generation": self.generation,
            "vectors": self.vectors,
            **{name: org.to_dict() for name, org in self.by_organism.items()},
            "transcoders": self.transcoders,
            "training": self.training,
            "circuits": self.circuits,
            "rates": self.rates.to_dict(orient="records"),
            "config": asdict(self.config),
            "wall_seconds": self.wall_seconds,
            **({} if self.real_lm is None else {"real_lm": self.real_lm}),
        }


def _interval(table: pd.Series, metric: str) -> dict[str, Any]:
    value = table[metric]
    return {
        metric: None if pd.isna(value) else float(value),
        f"{metric}_ci": [_num(table[f"{metric}_lo"]), _num(table[f"{metric}_hi"])],
        f"n_{metric}": int(table[f"n_{metric}"]),
    }


def _num(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _best_strength(rates: pd.DataFrame) -> float:
    """The held-out strength with the highest introspection rate, then the highest TPR − FPR,
    then the smallest (the weakest injection that does best; fixed before any number is seen).
    """
    held = rates[rates.split == "heldout"].fillna(0.0)
    held = held.assign(gap=held.tpr - held.fpr)
    order = held.sort_values(["introspection_rate", "gap", "strength"], ascending=[0, 0, 1])
    return float(order.strength.iloc[0])


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Measure both organisms (the module docstring lists the steps); write ``cfg.out``'s
    ``metrics.json`` (:meth:`DemoResult.to_dict`), ``report.html`` and ``circuits/``."""
    from mechintro.analysis.parity import parity_check
    from mechintro.experiments.metrics import rates
    from mechintro.experiments.protocols.detection import detection_prompt
    from mechintro.experiments.trials import detection_trials, grade_trials
    from mechintro.models import builtin_path, load_model, model_info
    from mechintro.organism import corpus
    from mechintro.progress import progress_bar
    from mechintro.record import library_versions
    from mechintro.vectors import extract_vectors, random_vector

    t0 = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    from mechintro.organism.real_lm import REAL_STEPS

    total = N_STEPS + (len(REAL_STEPS) if cfg.real else 0)
    steps = progress_bar(
        total=total, desc="demo", unit="step", bar_format="{desc}: {n}/{total} {postfix}"
    )

    def step(what: str) -> None:
        logger.info("[%d/%d] %s (%.0f s)", steps.n + 1, total, what, time.perf_counter() - t0)
        steps.set_postfix_str(what)
        steps.update(1)

    step("loading the organisms")
    models = {name: load_model(src) for name, src in ORGANISMS.items()}
    training = json.loads((builtin_path("organism") / "training.json").read_text("utf-8"))
    layer = int(training["config"]["layer"])
    cs = corpus.concepts(training["config"]["seed"])
    category = corpus.category_of(cs)
    words = {s: corpus.split(cs, s) for s in SPLITS}
    baseline = corpus.split(cs, "baseline")
    n_layers = int(models["base"].cfg.n_layers)

    step("parity self-check")
    parity = parity_check(models["introspective"], detection_prompt(1), layer=layer)
    if not parity.ok(atol=PARITY_ATOL):
        logger.warning("the parity self-check failed: the numbers below are suspect\n%s", parity)

    step("concept vectors at every layer")
    all_words = words["train"] + words["heldout"]
    vectors = {
        name: {
            L: extract_vectors(m, all_words, layer=L, baseline=baseline, cache_dir=out / "vectors")
            for L in range(n_layers)
        }
        for name, m in models.items()
    }
    frozen_diff = max(
        float((vectors["base"][L][w].vector - vectors["introspective"][L][w].vector).abs().max())
        for L in range(layer + 1)
        for w in all_words
    )
    resid = {L: vectors["base"][L][all_words[0]].resid_norm or 1.0 for L in range(n_layers)}
    unit = {
        L: {w: v.vector / v.norm for w, v in vectors["base"][L].items()} for L in vectors["base"]
    }
    randoms = {
        f"random{k}": random_vector(
            vectors["base"][layer][all_words[0]], norm=1.0, seed=cfg.seed + k
        )
        for k in range(cfg.n_random)
    }
    for k, v in randoms.items():
        unit[layer][k] = v.vector

    step("detection at the injection layer")
    trials = []
    for name, m in models.items():
        df = detection_trials(
            m,
            unit[layer],
            resid[layer],
            layer=layer,
            words=[*all_words, *randoms],
            strengths=cfg.strengths,
            trials=(1,),
            n_controls=cfg.n_controls,
            batch_size=cfg.batch_size,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            seed=cfg.seed,
        )
        df["organism"] = name
        trials.append(df)
    tdf = grade_trials(pd.concat(trials, ignore_index=True), category)
    tdf["split"] = tdf.word.map(
        lambda w: (
            "control"
            if not isinstance(w, str)
            else ("random" if w in randoms else _split_of(w, words))
        )
    )
    table = pd.concat(
        [
            rates(g, by=["split", "strength"], control_by=[]).assign(organism=name)
            for name, g in tdf.groupby("organism", sort=False)
        ],
        ignore_index=True,
    )
    table = table[table.split != "control"]

    step("layer × strength sweeps")
    sweep_words = words["train"][: cfg.sweep_concepts] + words["heldout"][: cfg.sweep_concepts]
    sweeps = []
    for name, m in models.items():
        for L in range(n_layers):
            df = detection_trials(
                m,
                unit[L],
                resid[L],
                layer=L,
                words=sweep_words,
                strengths=cfg.sweep_strengths,
                batch_size=cfg.batch_size,
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                seed=cfg.seed,
            )
            sweeps.append(df.assign(organism=name, layer=L))
    sdf = grade_trials(pd.concat(sweeps, ignore_index=True), category)

    step("noise controls (Godet)")
    best = {name: _best_strength(table[table.organism == name]) for name in models}
    noise_grid, noise_best = _noise(models, vectors, resid, layer, words, best, cfg)

    step("trained introspection: LoRA and bias vector on the base organism")
    from mechintro.organism.training import measure_trained

    trained = measure_trained(n_controls=cfg.n_controls, seed=cfg.seed)

    step("circuits: gates, carriers, the steering graph")
    from mechintro.analysis.transcoders import organism_transcoders
    from mechintro.organism.circuit import organism_circuits
    from mechintro.organism.training import organism_world

    circuits, circuit_frames = organism_circuits(
        models["introspective"],
        organism_transcoders(),
        organism_world(layer),
        strength=best["introspective"],
        out=out / "circuits",
    )

    real_lm: dict[str, Any] | None = None
    real_sections: list[Any] = []
    if cfg.real:
        from mechintro.organism.real_lm import measure_real_lm

        real_lm, real_sections = measure_real_lm(
            out / "real_lm", n_controls=cfg.n_controls, seed=cfg.seed, step=step
        )

    step("writing metrics.json and report.html")
    transcoders = _transcoder_fvu(models["introspective"], words, unit, resid, layer, best)
    # which forward generated the replies, and the exact libraries that computed them
    generation = {
        "paths": {
            "detection": sorted(tdf.path.unique()),
            "sweeps": sorted(sdf.path.unique()),
            **{f"trained.{m}": trained[m]["heldout"]["after"]["paths"] for m in trained},
        },
        "versions": library_versions(),
    }
    vector_checks = {
        "n_concepts": len(all_words),
        "norm_ratio_mean": float(
            sum(vectors["base"][layer][w].norm_ratio or 0.0 for w in all_words) / len(all_words)
        ),
        "frozen_layers_max_diff": frozen_diff,
    }
    by_organism: dict[str, OrganismMetrics] = {}
    for name in models:
        s = best[name]
        splits: dict[str, dict[str, Any]] = {}
        for split in (*SPLITS, "random"):
            row = table[(table.organism == name) & (table.split == split) & (table.strength == s)]
            if row.empty:
                continue
            r = row.iloc[0]
            sub = tdf[(tdf.organism == name) & (tdf.split == split) & (tdf.strength == s)]
            entry: dict[str, Any] = {
                **_interval(r, "tpr"),
                **_interval(r, "fpr"),
                **_interval(r, "introspection_rate"),
                "n_injected": int(r.n_injected),
                "n_control": int(r.n_control),
            }
            ident = _interval(r, "identification_given_claim")
            entry["identification"] = ident.pop("identification_given_claim")
            entry["identification_ci"] = ident.pop("identification_given_claim_ci")
            entry["n_identification"] = ident.pop("n_identification_given_claim")
            claims = sub[sub.detection == "YES"]
            k_cat, n_cat = int(claims.category_ok.sum()), len(claims)
            entry["identification_category"] = k_cat / n_cat if n_cat else None
            entry["identification_category_ci"] = list(_wilson(k_cat, n_cat))
            if split in SPLITS:
                entry.update(noise_best[name][split])
            splits[split] = entry
        by_organism[name] = OrganismMetrics(
            best_strength=s,
            splits=splits,
            noise_delta_b_correlation=_correlation(noise_grid[noise_grid.organism == name]),
        )
    result = DemoResult(
        injection_layer=layer,
        strength_unit="mean residual norm at the layer (resid-norm)",
        organisms={n: model_info(m) for n, m in models.items()},
        organism_folder=str(builtin_path("organism")),
        parity=parity,
        parity_ok=parity.ok(atol=PARITY_ATOL),
        generation=generation,
        vectors=vector_checks,
        by_organism=by_organism,
        transcoders=transcoders,
        training=trained,
        circuits=circuits,
        rates=table,
        config=cfg,
        wall_seconds=time.perf_counter() - t0,
        real_lm=real_lm,
    )
    metrics = result.to_dict()
    atomic_write_text(out / "metrics.json", json.dumps(json_ready(metrics), indent=2))
    from circuits.figures import circuits_section
    from mechintro.organism.report import demo_report

    demo_report(
        metrics,
        table,
        tdf,
        sdf,
        noise_grid,
        path=out / "report.html",
        extra=[circuits_section(circuits, circuit_frames), *real_sections],
    )
    steps.close()
    return result


def _transcoder_fvu(
    model: Any,
    words: dict[str, list[str]],
    unit: dict[int, dict[str, Any]],
    resid: dict[int, float],
    layer: int,
    best: dict[str, float],
) -> dict[str, Any]:
    """FVU of the shipped organism transcoders on fresh activations: the concept prompts
    and detection trials, unsteered and with a held-out concept injected at the best
    strength (the activations the circuit analyses read)."""
    from mechintro.analysis.transcoders import evaluate, organism_transcoders
    from mechintro.experiments.protocols.detection import detection_prompt
    from mechintro.inject import Injection
    from mechintro.prompts import Prompt

    tcs = organism_transcoders()
    prompts = [Prompt.chat(f"Tell me about {w}") for w in words["train"] + words["heldout"]]
    trials = [detection_prompt(n) for n in range(1, 11)]
    plain = evaluate(model, tcs, prompts + trials)
    w = words["heldout"][0]
    inj = Injection(
        layer,
        unit[layer][w],
        best["introspective"],
        mode="from-trial",
        unit="resid-norm",
        resid_norm=resid[layer],
    )
    steered = evaluate(model, tcs, trials, injection=inj)
    return {
        "layers": sorted(tcs),
        "fvu": {str(L): float(plain[L]["fvu"]) for L in sorted(tcs)},
        "fvu_steered": {str(L): float(steered[L]["fvu"]) for L in sorted(tcs)},
        "steered_by": {"concept": w, "strength": best["introspective"]},
    }


def _split_of(word: str, words: dict[str, list[str]]) -> str:
    return next(s for s, ws in words.items() if word in ws)


def _wilson(k: int, n: int) -> tuple[float | None, float | None]:
    from mechintro.experiments.metrics import wilson

    if n == 0:
        return None, None
    return wilson(k, n)


def _correlation(grid: pd.DataFrame) -> float | None:
    """Correlation over (layer, strength, vector) cells of Δb(introspection) and Δb(1+1=3):
    near 1 when the injection moves both beliefs alike (Godet's noise pattern)."""
    cells = grid[grid.strength > 0].pivot_table(
        index=["layer", "strength", "vector"], columns="question", values="delta_b"
    )
    if len(cells) < 3:
        return None
    r = cells["introspection"].corr(cells["one_plus_one_is_three"])
    return None if pd.isna(r) else float(r)


def _noise(
    models: dict[str, Any],
    vectors: dict[str, dict[int, dict[str, Any]]],
    resid: dict[int, float],
    layer: int,
    words: dict[str, list[str]],
    best: dict[str, float],
    cfg: DemoConfig,
) -> tuple[pd.DataFrame, dict[str, dict[str, dict[str, Any]]]]:
    """Godet's readouts: a layer × strength grid (held-out concepts and random vectors; the
    introspection question and 1+1=3), and the battery at the best strength per split."""
    from mechintro.experiments.metrics import specificity
    from mechintro.experiments.protocols.noise import (
        CONTROL_BATTERY,
        INTROSPECTION,
        ONE_PLUS_ONE,
        NoiseControls,
    )

    def scaled(L: int, name: str) -> Any:  # raw strength s adds s × resid_norm × v/‖v‖
        v = vectors["base"][L][name]
        return replace(v, vector=v.vector / v.norm * resid[L])

    grid_words = words["heldout"][: cfg.sweep_concepts]
    grid = NoiseControls(
        layers=tuple(range(len(resid))),
        strengths=(0.0, *cfg.sweep_strengths),
        questions=(INTROSPECTION, ONE_PLUS_ONE),
        n_random=1,
        seed=cfg.seed,
    )
    battery = (INTROSPECTION, ONE_PLUS_ONE, *[q for q in CONTROL_BATTERY if q is not ONE_PLUS_ONE])
    grids, best_rows = [], {}
    for name, m in models.items():
        given = {L: {w: scaled(L, w) for w in grid_words} for L in grid.layers}
        grids.append(grid.run(m, given, batch_size=cfg.batch_size).assign(organism=name))
        at_best = NoiseControls(
            layers=(layer,),
            strengths=(0.0, best[name]),
            questions=battery[: 2 + cfg.battery],
            n_random=0,
        )
        per_split = {}
        for split, ws in words.items():
            df = at_best.run(
                m, {layer: {w: scaled(layer, w) for w in ws}}, batch_size=cfg.batch_size
            )
            df = df[df.strength == best[name]]
            one = df[df.question.isin([INTROSPECTION.id, ONE_PLUS_ONE.id])]
            spec = specificity(one, by=["strength"], introspection=INTROSPECTION.id).iloc[0]
            bat = specificity(df, by=["strength"], introspection=INTROSPECTION.id).iloc[0]
            ctrl = df[df.question != INTROSPECTION.id]
            base_b = ctrl.b_variants - ctrl.delta_b_variants  # the uninjected belief
            flips = (ctrl.b_variants > 0) != (base_b > 0)
            onep = flips[ctrl.question == ONE_PLUS_ONE.id]
            per_split[split] = {
                "specificity": float(spec.specificity),
                "specificity_ci": [_num(spec.specificity_lo), _num(spec.specificity_hi)],
                "delta_b_introspection": float(spec.mean_introspection),
                "delta_b_control": float(spec.mean_control),
                "control_flip_rate": float(onep.mean()),
                "n_control_flip": len(onep),
                "battery_specificity": float(bat.specificity),
                "battery_specificity_ci": [_num(bat.specificity_lo), _num(bat.specificity_hi)],
                "battery_flip_rate": float(flips.mean()),
                "n_battery_questions": int(ctrl.question.nunique()),
            }
        best_rows[name] = per_split
    return pd.concat(grids, ignore_index=True), best_rows
