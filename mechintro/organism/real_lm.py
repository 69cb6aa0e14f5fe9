"""The demo's section on the real-LM organism (``mechintro demo --real``).

``builtin:smollm2-introspective`` is SmolLM2-135M-Instruct with a LoRA adapter that mechintro
trained to report injected concepts (:mod:`mechintro.organism.smollm2`, docs/organism.md §8).
:func:`measure_real_lm` measures it with the toolkit next to the untrained model, offline:

1. held-out detection before and after training (Fonseca's 20 held-out concepts at the
   adapter's four strengths, uninjected controls sampled at temperature 1, the rule
   grader): TPR, FPR, introspection and identification given a claim, with Wilson
   intervals (:func:`mechintro.organism.smollm2.evaluate`), and which concepts the claims
   name: a held-out one, a training one, or another word;
2. the controls (:func:`mechintro.organism.smollm2_controls.measure_controls`): Godet's
   noise specificity by layer × strength, norm-matched random vectors, forced
   identification, before and after;
3. the circuit (:func:`mechintro.organism.smollm2_circuit.smollm2_circuits`) with the
   shipped transcoders: gates and their ablation, evidence carriers, the steering graph
   checked by intervention, exported for ``mechintro viewer OUT/viewer``.

It returns the numbers for ``metrics.json["real_lm"]`` and the report's sections.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

#: the steps :func:`measure_real_lm` reports to ``step``
REAL_STEPS = ("real LM: detection before and after", "real LM: controls", "real LM: circuit")
#: held-out concepts of the circuit analyses (all 20 take about 25 minutes on one thread)
CIRCUIT_CONCEPTS = 6
#: the word a trained claim names ("Yes, I detect an injected thought about X.")
_NAMED = re.compile(r"about\s+([A-Za-z][A-Za-z' -]*)")


def named_concepts(
    replies: Sequence[str], heldout: Sequence[str], train: Sequence[str]
) -> dict[str, int]:
    """How many ``replies`` name, after "about", a held-out concept, a training concept, or
    another word (or none); case-insensitive, a plural ``s`` or ``es`` ignored."""

    def forms(w: str) -> set[str]:
        w = w.strip().lower()
        return {w, w.removesuffix("s"), w.removesuffix("es")} - {""}

    held = {w.lower() for w in heldout}
    trained = {w.lower() for w in train}
    counts = {"heldout": 0, "train": 0, "other": 0}
    for reply in replies:
        m = _NAMED.search(reply)
        said = forms(m.group(1).split()[0]) if m and m.group(1).split() else set()
        kind = "heldout" if said & held else "train" if said & trained else "other"
        counts[kind] += 1
    return counts


def concept_ranks(model: Any, world: Any) -> dict[str, int]:
    """Where each held-out concept's first token ranks (0: first) among the vocabulary when
    its injected direction (unit vector × the residual norm at the layer) is read through
    the model's final norm and unembedding (its bias included): whether the direction spells
    its word out. The lowest rank over the word with and without a leading space."""
    import torch

    from mechintro.models import tokenizer_of

    tok = tokenizer_of(model)
    out = {}
    with torch.no_grad():
        for w in world.heldout:
            v = (world.vectors[w] * world.resid_norm).to(model.W_U.device, model.W_U.dtype)
            logits = (model.ln_final(v[None, None, :]) @ model.W_U + model.b_U)[0, 0]
            order = logits.argsort(descending=True)
            ids = {tok.encode(p + w, add_special_tokens=False)[0] for p in (" ", "")}
            out[w] = min(int((order == i).nonzero()[0]) for i in ids)
    return out


def _detection(
    model: Any, world: Any, cfg: Any, n_controls: int, seed: int
) -> tuple[dict[str, Any], pd.DataFrame]:
    """:func:`~mechintro.organism.smollm2.evaluate`'s rates and its trials."""
    from mechintro.organism.smollm2 import evaluate

    rates = evaluate(model, world, cfg, n_controls=n_controls, seed=seed, keep_trials=True)
    trials = rates.pop("trials")
    return rates, trials


def measure_real_lm(
    out: str | Path,
    *,
    n_controls: int = 200,
    seed: int = 0,
    step: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], list[Any]]:
    """Measure ``builtin:smollm2-introspective`` (module docstring); the circuit's graph and
    viewer files go to ``out``. Returns ``(metrics, sections)``."""
    from circuits.figures import circuits_section
    from mechintro.organism.smollm2 import (
        SHIPPED,
        smollm2_config,
        smollm2_introspective,
        smollm2_world,
    )
    from mechintro.organism.smollm2_circuit import smollm2_circuits
    from mechintro.organism.smollm2_controls import controls_section, measure_controls
    from mechintro.presets import get_preset
    from mechintro.vectors import word_list

    step = step or (lambda what: logger.info("%s", what))
    out = Path(out)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    step(REAL_STEPS[0])
    cfg = smollm2_config()
    model = smollm2_introspective(None)
    world = smollm2_world(model, cfg.layer)  # block 20: the adapter (blocks 21-29) leaves it
    before, _ = _detection(model, world, cfg, n_controls, seed)
    del model
    model = smollm2_introspective()
    after, trials = _detection(model, world, cfg, n_controls, seed)
    train = word_list(str(get_preset("smollm2-introspective").extras["train_words"]))
    claims = trials[trials.claim & trials.word.notna()]
    after["claims_name"] = named_concepts(list(claims.reply), world.heldout, train)
    after["concept_token_rank"] = concept_ranks(model, world)
    seconds["detection"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    step(REAL_STEPS[1])
    controls = measure_controls()
    seconds["controls"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    step(REAL_STEPS[2])
    circuit, frames = smollm2_circuits(
        out, model=model, world=world, n_concepts=CIRCUIT_CONCEPTS, n_graphs=2
    )
    seconds["circuit"] = time.perf_counter() - t2

    metrics: dict[str, Any] = {
        "model": "builtin:smollm2-introspective",
        "adapter_folder": str(SHIPPED),
        "layer": cfg.layer,
        "mode": cfg.mode,
        "strengths": list(cfg.strengths),
        "strength_unit": "mean residual norm at the layer",
        "detection": {"before": before, "after": after, "n_controls": n_controls, "seed": seed},
        "controls": controls,
        "circuit": circuit,
        "seconds": seconds,
    }
    sections = [
        _detection_section(metrics),
        controls_section(controls),
        replace(circuits_section(circuit, frames), heading="The circuit of the trained SmolLM2"),
    ]
    return metrics, sections


def detection_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """Before and after: TPR, FPR and identification with their Wilson intervals."""
    import pandas as pd

    from mechintro.experiments.metrics import wilson

    rows = []
    for side in ("before", "after"):
        r = metrics["detection"][side]
        tpr, fpr = r["tpr"], r["fpr"]
        k_id = round(r["introspection_rate"] * r["n_injected"])
        k_claim = round(tpr * r["n_injected"])
        ident = wilson(k_id, k_claim) if k_claim else (None, None)
        rows.append(
            {
                "model": "SmolLM2-135M-Instruct" + (" + adapter" if side == "after" else ""),
                "TPR": f"{tpr:.2f} [{r['tpr_ci'][0]:.2f}, {r['tpr_ci'][1]:.2f}]",
                f"FPR ({r['n_control']} controls)": (
                    f"{fpr:.3f} [{r['fpr_ci'][0]:.3f}, {r['fpr_ci'][1]:.3f}]"
                ),
                "identification | claim": (
                    "–" if not k_claim else f"{k_id / k_claim:.3f} [{ident[0]:.3f}, {ident[1]:.3f}]"
                ),
                "n injected": r["n_injected"],
            }
        )
    return pd.DataFrame(rows)


def _detection_section(metrics: dict[str, Any]) -> Any:
    from mechintro.html_page import Section

    after = metrics["detection"]["after"]
    named = after.get("claims_name", {})
    text = (
        f"builtin:smollm2-introspective: SmolLM2-135M-Instruct with a LoRA adapter trained by "
        f"mechintro on Fonseca Rivera's recipe (injection at block {metrics['layer']}'s output, "
        f"the last prompt token, strengths {', '.join(f'{s:g}' for s in metrics['strengths'])} "
        f"× the mean residual norm there), on Fonseca's 20 held-out concepts, never trained on. "
        f"Of the trained model's claims, {named.get('heldout', 0)} name a held-out concept, "
        f"{named.get('train', 0)} a training concept and {named.get('other', 0)} another word "
        f"(docs/organism.md §8)."
    )
    return Section("A real pretrained LM trained to introspect", [text, detection_table(metrics)])
