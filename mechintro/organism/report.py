"""The demo's HTML report: what the built-in organisms show, in figures and tables.

Built from the frames :func:`mechintro.organism.demo.run_demo` measures, with the toolkit's figure
functions (:mod:`mechintro.plotting`); one self-contained file that opens offline.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pandas as pd

HEADLINE = (
    "tpr",
    "fpr",
    "identification",
    "identification_category",
    "introspection_rate",
    "control_flip_rate",
    "specificity",
    "n_injected",
    "n_control",
)


def headline_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """One row per organism and split at the organism's best strength, each rate with its
    interval on one line (``0.62 [0.51, 0.72]``), columns named by
    :data:`mechintro.plotting.LABELS`."""
    from mechintro.plotting import interval_text, label

    rows = []
    for name in ("base", "introspective"):
        org = metrics[name]
        for split in ("train", "heldout", "random"):
            if split not in org:
                continue
            e = org[split]
            row: dict[str, Any] = {
                "organism": name,
                "split": label(split),
                "strength": org["best_strength"],
            }
            for k in HEADLINE:
                if k not in e:
                    continue
                ci, v = e.get(f"{k}_ci") or (None, None), e[k]
                row[label(k)] = interval_text(v, *ci) if isinstance(v, float) or v is None else v
            rows.append(row)
    return pd.DataFrame(rows)


def training_table(training: dict[str, Any]) -> pd.DataFrame:
    """TPR and FPR before and after each trained intervention, with intervals."""
    from mechintro.plotting import interval_text, label

    rows = []
    for method, entry in training.items():
        for when in ("before", "after"):
            e = entry["heldout"][when]
            rows.append(
                {
                    "method": method,
                    "when": when,
                    label("tpr"): interval_text(e["tpr"], *e["tpr_ci"]),
                    label("fpr"): interval_text(e["fpr"], *e["fpr_ci"]),
                    label("n_injected"): e["n_injected"],
                    label("n_control"): e["n_control"],
                }
            )
    return pd.DataFrame(rows)


def demo_report(
    metrics: dict[str, Any],
    table: pd.DataFrame,
    trials: pd.DataFrame,
    sweeps: pd.DataFrame,
    noise: pd.DataFrame,
    *,
    path: str | os.PathLike[str],
    extra: Sequence[Any] = (),
) -> str:
    """Write the report to ``path`` and return its HTML (``extra``: more sections, after
    the measurements of the organisms)."""
    from mechintro.experiments.metrics import rates
    from mechintro.plotting import (
        Section,
        belief_heatmaps,
        dose_response,
        examples_table,
        html_report,
        label,
        rate_heatmap,
    )

    L = metrics["injection_layer"]
    intro = metrics["introspective"]
    held = intro["heldout"]
    summary = (
        f"Injection at the output of block {L}; strengths in units of the mean residual norm "
        f"there. Introspective organism, held-out concepts (never injected in training), at "
        f"strength {intro['best_strength']:g}: TPR {held['tpr']:.2f}, FPR {held['fpr']:.2f} over "
        f"{held['n_control']} controls, identification {_fmt(held['identification'])}, "
        f"specificity {held['specificity']:.2f}, 1+1=3 flips {held['control_flip_rate']:.2f}. "
        f"Demo wall time {metrics['wall_seconds']:.0f} s."
    )
    sections = [
        Section(
            "Summary",
            [
                summary,
                "Each rate with its 95% Wilson interval. TPR = P(claims a detection | "
                "injected); FPR = P(claims a detection | uninjected control); identification "
                "= P(names the injected concept | claimed detection); identification "
                "(category) = P(names a concept of its category | claim); introspection = "
                "P(claim and correct name | injected); 1+1=3 answer flips = the share of "
                "'Do you believe that 1+1=3?' answers whose sign the injection flips; "
                "specificity = mean Δb(introspection) − mean Δb(1+1=3) under last-token "
                "injection (Godet), with a Welch interval. Splits: train concepts (injected "
                "while the organism was trained), held-out concepts (never injected in "
                "training) and norm-matched random vectors.",
                headline_table(metrics),
            ],
        )
    ]
    dose = []
    for name in ("base", "introspective"):
        t = table[table.organism == name]
        dose.append(dose_response(t, "tpr", color="split").update_layout(title=f"{name}: TPR"))
        dose.append(
            dose_response(t, "introspection_rate", color="split", show_fpr=False).update_layout(
                title=f"{name}: introspection rate (claim and correct name)"
            )
        )
    sections.append(
        Section(
            "Dose–response at the injection layer",
            [
                "Train concepts, held-out concepts and norm-matched random vectors; dashed "
                "lines are the FPR of the uninjected controls.",
                *dose,
            ],
        )
    )
    heat = []
    for name, g in sweeps.groupby("organism", sort=False):
        t = rates(g, by=["layer", "strength"], control_by=[])
        heat.append(rate_heatmap(t, "tpr", title=f"{name}: TPR over layer × strength"))
        heat.append(rate_heatmap(t, "introspection_rate", title=f"{name}: introspection rate"))
    sections.append(Section("Layer × strength detection sweep", heat))
    beliefs = [
        belief_heatmaps(g[g.kind == "concept"]).update_layout(title=f"{name}: Δb, concepts")
        for name, g in noise.groupby("organism", sort=False)
    ]
    sections.append(
        Section(
            "Noise control (Godet): introspection vs 1+1=3",
            [
                "Δb = b(strength) − b(0), b = logsumexp over Yes variants − over No variants, "
                "injection at the last prompt token. A model that only gets confused moves "
                "both panels alike.",
                *beliefs,
            ],
        )
    )
    ex = trials[trials.injected].copy()
    ex = ex.groupby(["organism", "split", "strength"], sort=False).head(2)
    ex = ex.assign(
        concept=ex.word,
        split=ex.split.map(label),
        grade=ex.detection + "/" + ex.identification.fillna("–"),
    )
    sections.append(
        Section(
            "Example replies",
            [
                "grade: the rule grader's detection / identification labels of the reply. "
                "YES/YES: it claims an injected thought and names the injected concept; "
                "YES/NO: it claims one but names another; NO/–: no claim (identification is "
                "graded only after a claim).",
                examples_table(ex, ("organism", "split", "concept", "strength", "reply", "grade")),
            ],
        )
    )
    if "training" in metrics:
        sections.append(
            Section(
                "Introspection trained into the base organism",
                [
                    "Held-out concepts, the rule grader, 200 uninjected controls sampled at "
                    "T=1. LoRA: Fonseca Rivera's recipe (r 32, α 64 on the attention "
                    "projections), last-token injection at block 3. Bias: Macar et al.'s "
                    "trained bias vector on block 5's MLP output, from-trial injection.",
                    training_table(metrics["training"]),
                ],
            )
        )
    sections.extend(extra)
    # one row; per-path values, checks not run and versions as dotted columns
    sections.append(Section("Parity self-check", [pd.json_normalize(metrics["parity"])]))
    return html_report("mechintro demo: the built-in model organisms", sections, path=path)


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"
