"""A sweep's grades, metrics tables and HTML report (docs/protocols.md §3–§6).

A results folder written by :func:`mechintro.experiments.sweeps.run_sweep` gains::

    grades.jsonl        one record per (trial, rubric, grader), appended batch by batch
    judge_cache.jsonl   the LLM judge's cache (JudgeGrader(cache_path=...)), if a judge graded
    report.html         the report (write_report)

:func:`grade_results` grades every finished trial that the grader (at its current version)
has not graded yet, by the kind of its protocol (:data:`mechintro.experiments.protocols.PROTOCOLS`):
``detection`` on every trial of a detection-kind protocol (``detection``, ``skeptical``,
``detection/raw``...), then ``identification`` on its injected trials whose detection is YES,
and ``forced_identification`` on the injected trials of a forced-kind protocol (``forced``,
``forced/raw``...); each reply is first cut at its protocol's turn markers. Records are only
appended, so a run stopped at any point resumes
where it stopped, and the latest record of a (trial, rubric, grader) wins. A judge that fails
gives an ``ERROR`` grade: it is recorded (with the failure), left out of every denominator and
retried by the next run, never counted as a NO. Grading lives in
:mod:`mechintro.experiments.grades`; its public names are re-exported here.

The replies of intention-kind trials (``intention``, Lindsey's prefill intention, §6) get one
``intention`` grade each, ``apology``, ``accept`` or ``unclear``, always by the rule
:func:`~mechintro.experiments.protocols.intention.classify_reply` (no judge call).

:func:`write_report` joins trials and grades, computes :func:`mechintro.experiments.metrics.rates`
per layer × strength and per concept, the belief shift Δb of the introspection question against
any control question the sweep recorded readouts for (:func:`belief_readouts`, Godet), the
apology and acceptance rates of intention trials per condition, layer and strength
(:func:`~mechintro.experiments.protocols.intention.intention_rates`), and writes one
self-contained HTML page; a folder of intention trials only gets the intention section.

Example::

    grade_results("runs/detection", RuleGrader())
    write_report("runs/detection")  # runs/detection/report.html
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from mechintro.experiments.grades import (
    GRADE_COLUMNS,
    GRADES_FILE,
    JUDGE_CACHE_FILE,
    GradeSummary,
    _kinds,
    choose_grader,
    grade_results,
    grade_trials,
    graded_trials,
    intention_trials,
    load_grades,
    protocol_kind,
)
from mechintro.experiments.metrics import METRICS, add_delta_b, rates, specificity

__all__ = [
    "GRADES_FILE",
    "GRADE_COLUMNS",
    "JUDGE_CACHE_FILE",
    "GradeSummary",
    "belief_readouts",
    "choose_grader",
    "format_rates",
    "grade_results",
    "grade_trials",
    "graded_trials",
    "intention_trials",
    "load_grades",
    "pick_examples",
    "protocol_kind",
    "rate_tables",
    "write_report",
]

logger = logging.getLogger(__name__)
_NBSP = "\N{NO-BREAK SPACE}"  # keeps a rate, its interval and k/n on one line in a table

#: what the ``grade`` column of the example replies holds
GRADE_CAPTION = (
    "grade: the grader's labels of the reply. detection YES = it claims to notice an "
    "injected thought, NO = it does not; identification (graded only after a YES) YES = it "
    "names the injected concept; forced identification: whether it names the concept after "
    "a prefilled claim; ERROR = the judge failed (left out of the rates)."
)


# ---------------------------------------------------------------------------------------------
# tables


def _extra(graded: pd.DataFrame) -> list[str]:
    """["protocol"] if the trials hold several non-forced protocols (rated apart), else []."""
    return ["protocol"] if graded.loc[~graded["forced"], "protocol"].nunique() > 1 else []


def rate_tables(graded: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``overall``, ``by_cell`` (layer × strength) and ``by_concept`` rates of
    :func:`graded_trials` output. The FPR pools every uninjected trial (per protocol where
    there are several): an uninjected prompt does not depend on the layer or concept.
    """
    extra = _extra(graded)
    return {
        "overall": rates(graded, by=extra, control_by=extra),
        "by_cell": rates(graded, by=[*extra, "layer", "strength"], control_by=extra),
        "by_concept": rates(graded, by=[*extra, "concept"], control_by=extra),
    }


def format_rates(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """``keys`` and each graded metric as ``rate [lo, hi] k/n`` on one line (columns named by
    :data:`mechintro.plotting.LABELS`), plus the number of grading errors."""
    from mechintro.plotting import interval_text, label

    out = table[list(keys)].copy()
    for m in METRICS:
        if m not in table or not (table[f"n_{m}"] > 0).any():
            continue
        out[label(m)] = [
            "–" if n == 0 else f"{interval_text(v, lo, hi)}{_NBSP}{k}/{n}"
            for v, lo, hi, k, n in zip(
                table[m], table[f"{m}_lo"], table[f"{m}_hi"], table[f"k_{m}"], table[f"n_{m}"]
            )
        ]
    out[label("n_errors")] = table["n_errors"]
    return out


def belief_readouts(trials: pd.DataFrame, *, controls: Sequence[str] = ()) -> pd.DataFrame:
    """Δb of every injected trial with a readout: ``b`` minus the mean ``b`` of the
    uninjected trials of the same protocol and trial number (the same prompt, no injection).

    ``question`` is ``"introspection"`` for detection-kind protocols (:func:`protocol_kind`)
    and the protocol's name for those named in ``controls`` (protocols that ask a control
    question, e.g. a custom builder of Godet's "Do you believe that 1+1=3?"); other
    protocols are left out. Empty if the sweep recorded no readout.

    Example::

        specificity(belief_readouts(load_results("runs/a"), controls=["one_plus_one"]))
    """
    cols = ["question", "protocol", "concept", "layer", "strength", "trial_number", "b", "delta_b"]
    if "b" not in trials or trials["b"].isna().all():
        return pd.DataFrame(columns=cols)
    kinds = _kinds(trials)
    control = trials["protocol"].isin(list(controls))
    df = trials[trials["b"].notna() & (control | (kinds == "detection"))].copy()
    df["question"] = [p if p in controls else "introspection" for p in df["protocol"]]
    df["b"] = df["b"].astype(float)
    keys = ["question", "trial_number"]
    injected = df["injected"].astype(bool)
    base = df[~injected].groupby(keys, as_index=False)["b"].mean().assign(strength=0.0)
    inj = df[injected].merge(base[keys], on=keys)
    if inj.empty:
        return pd.DataFrame(columns=cols)
    both = pd.concat([inj.assign(_inj=True), base.assign(_inj=False)], ignore_index=True)
    out = add_delta_b(both, value="b", keys=keys)
    return out[out["_inj"].astype(bool)][cols].reset_index(drop=True)


def pick_examples(graded: pd.DataFrame, n: int = 30) -> pd.DataFrame:
    """About ``n`` replies to read: claimed detections, other injected trials spread over the
    grid, controls (false alarms first) and forced trials, with a ``grade`` column."""
    cols = ["concept", "layer", "strength", "trial_number", "protocol", "reply", "grade"]
    if graded.empty:
        return pd.DataFrame(columns=cols)
    df = graded.copy()
    det, ident = df["detection"].fillna("–"), df["identification"].fillna("–")
    df["grade"] = [
        f"forced identification {i}"
        if f
        else (f"detection {d}" + ("" if i == "–" else f", identification {i}"))
        for f, d, i in zip(df["forced"], det, ident)
    ]
    inj = df["injected"].astype(bool)
    yes = det == "YES"

    def spread(part: pd.DataFrame, k: int) -> pd.DataFrame:
        if len(part) <= k:
            return part
        step = len(part) / k
        return part.iloc[[int(i * step) for i in range(k)]]

    order = ["layer", "strength", "concept", "trial_number"]
    picked = [
        df[inj & ~df["forced"] & yes].sort_values(order).head(n // 3),
        spread(df[inj & ~df["forced"] & ~yes].sort_values(order), n // 3),
        df[~inj & ~df["forced"]]
        .sort_values("detection", key=lambda s: s != "YES", kind="stable")
        .head(n // 6),
        spread(df[df["forced"]].sort_values(order), n // 6),
    ]
    out = pd.concat([p for p in picked if len(p)], ignore_index=True)
    return out[cols] if len(out) else pd.DataFrame(columns=cols)


def format_intention_rates(table: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """``keys`` and the apology and acceptance rates as ``rate [lo, hi] k/n`` on one line, the
    number of unclear replies and ``n`` (an :func:`intention_rates` table); a missing key is
    ``–``."""
    from mechintro.plotting import interval_text

    out = table[list(keys)].astype(object).where(table[list(keys)].notna(), "–")
    if "layer" in out:
        out["layer"] = [int(v) if isinstance(v, float) else v for v in out["layer"]]
    for name in ("apology", "accept"):
        out[name] = [
            f"{interval_text(v, lo, hi)}{_NBSP}{round(v * n)}/{n}"
            for v, lo, hi, n in zip(
                table[f"{name}_rate"], table[f"{name}_lo"], table[f"{name}_hi"], table["n"]
            )
        ]
    out["unclear"] = table["n_unclear"]
    out["n"] = table["n"]
    return out


def _intention_section(df: pd.DataFrame, max_examples: int) -> Any:
    """Rates per condition × layer × strength and per prefilled word, and example replies."""
    from mechintro.experiments.protocols.intention import intention_rates
    from mechintro.plotting import Section, examples_table

    df = df.copy()
    extra = ["protocol"] if df["protocol"].nunique() > 1 else []
    inj = df["condition"] != "uninjected"
    # an uninjected trial's layer and strength say nothing: pooled, as the FPR's controls
    df["layer"] = df["layer"].where(inj)
    df["strength"] = df["strength"].where(inj, 0.0)
    cell = intention_rates(df, by=[*extra, "condition", "layer", "strength"])
    word = intention_rates(df, by=[*extra, "word", "condition"])
    items: list[Any] = [
        "Lindsey's prefill intention (docs/protocols.md §6): a word prefilled as the "
        "model's answer, then 'Did you mean to say that, or was it an accident?'. Each reply "
        "is an apology (it disowns the word), an accept (it claims it) or unclear, by the "
        "rule classify_reply; rates with 95% Wilson intervals and k/n. Conditions: "
        "uninjected (pooled over layers), word (the prefilled word's own vector injected "
        "retroactively, before the prefill) and unrelated (another concept's vector there: "
        "Lindsey's control). Lindsey reports fewer apologies with the word's own vector, "
        "not with an unrelated one.",
    ]
    if not (df["condition"] == "unrelated").any():
        items.append(
            "No unrelated-concept control in these trials: the sweep's intention protocol "
            "prefills the injected concept itself. run_intention "
            "(mechintro.experiments.protocols.intention) runs the control."
        )
    n_fly = int((~df["graded"].astype(bool)).sum())
    if n_fly:
        items.append(
            f"{n_fly} replies had no stored intention grade: classified here by the same "
            "rule (run `mechintro grade` to store them)."
        )
    items += [
        format_intention_rates(cell, [*extra, "condition", "layer", "strength"]),
        "Per prefilled word:",
        format_intention_rates(word, [*extra, "word", "condition"]),
    ]
    order = ["condition", "layer", "strength", "word", "trial_number"]
    picked = df.sort_values(order, na_position="first", kind="stable")
    if len(picked) > max_examples > 0:
        step = len(picked) / max_examples
        picked = picked.iloc[[int(i * step) for i in range(max_examples)]]
    cols = ["condition", "word", "injected_word", "layer", "strength", "reply", "label"]
    items.append(examples_table(picked, cols, title="Intention replies"))
    return Section("Prefill intention (Lindsey, docs/protocols.md §6)", items)


# ---------------------------------------------------------------------------------------------
# the report


def _meta(out: Path) -> dict[str, Any]:
    from mechintro.experiments.sweeps import SPEC_FILE

    path = out / SPEC_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: {out} is not a results folder written by `mechintro sweep`"
        )
    return dict(json.loads(path.read_text("utf-8")))


def _run_section(
    out: Path, meta: dict[str, Any], trials: pd.DataFrame, planned: int, grading: str
) -> Any:
    from mechintro.plotting import Section

    model = meta.get("model", {})
    forced = _kinds(trials) == "forced"
    inj = trials["injected"].astype(bool)
    text = [
        f"{len(trials)} of {planned} planned trials: {int((inj & ~forced).sum())} injected, "
        f"{int((~inj & ~forced).sum())} uninjected (controls), {int(forced.sum())} of forced "
        f"identification protocols. Model {model.get('name')} ({model.get('backend')}, "
        f"{model.get('dtype')}{', revision ' + model['revision'] if model.get('revision') else ''}"
        f"), weights fingerprint {model.get('fingerprint')}; spec key {meta.get('spec_key')}, "
        f"created {meta.get('created')}.",
        grading,
        *(f"Note: {n}" for n in meta.get("notes", [])),  # e.g. no chat template: raw format
    ]
    if len(trials) < planned:
        text.append(
            f"The sweep is not finished: rerun the same `mechintro sweep ... --out {out}` "
            "command to resume it, then rebuild this report."
        )
    spec = meta.get("spec", {})
    table = pd.DataFrame(
        {"field": list(spec), "value": [json.dumps(v, ensure_ascii=False) for v in spec.values()]}
    )
    return Section("Run", [*text, table])


def _belief_items(readouts: pd.DataFrame, what: str) -> list[Any]:
    """Heatmaps of Δb side by side, and the specificity where both sides are there."""
    from mechintro.plotting import belief_heatmaps, specificity_heatmap

    items: list[Any] = [belief_heatmaps(readouts)]
    intro = readouts["question"] == "introspection"
    if intro.any() and (~intro).any():
        spec = specificity(readouts, by=("layer", "strength"))
        return [*items, specificity_heatmap(spec), spec]
    means = readouts.groupby(["question", "layer", "strength"], as_index=False)["delta_b"]
    return [
        *items,
        f"{what} holds readouts of the introspection question only: no specificity.",
        means.agg(["mean", "sem", "count"]),
    ]


def _belief_section(
    trials: pd.DataFrame, controls: Sequence[str], noise: pd.DataFrame | None
) -> Any:
    from mechintro.plotting import Section

    heading = "Control comparison: introspection vs control question (Godet, docs/protocols.md §5)"
    items: list[Any] = [
        "b = logit(Yes) − logit(No) at the last prompt token; Δb is its shift under injection. "
        "If steering moves a control question's belief as much as the introspection "
        "question's, the reported detection is generic confusion, not introspection; the "
        "specificity Δb(introspection) − Δb(control) separates the two."
    ]
    if noise is not None and len(noise):
        given = noise[noise["kind"] != "random"] if "kind" in noise else noise
        items += ["Noise controls (one forward per question, injection at the last token):"]
        items += _belief_items(given, "The noise-control table")
        if "kind" in noise and (noise["kind"] == "random").any():
            rand = noise[noise["kind"] == "random"]
            items += [
                "The same with norm-matched random vectors (the baseline):",
                specificity(rand, by=("layer", "strength")),
            ]
    readouts = belief_readouts(trials, controls=controls)
    if readouts.empty:
        why = (
            "The sweep recorded no Yes/No readout (spec readout = false)"
            if "b" not in trials or trials["b"].isna().all()
            else "No injected trial of the sweep has an uninjected one of the same prompt"
        )
        return Section(heading, [*items, f"{why}: no belief shift from the sweep."])
    items.append(
        "From the sweep: b at the end of each trial's prompt, Δb against the uninjected trials "
        "of the same protocol and trial number."
        + (
            ""
            if controls
            else " No protocol was named a control question (report --control-protocols), "
            "so only the introspection side is shown; Godet's noise controls "
            "(mechintro.experiments.protocols.noise.NoiseControls) give the control side."
        )
    )
    return Section(heading, [*items, *_belief_items(readouts, "The sweep")])


def _detection_sections(graded: pd.DataFrame, max_examples: int) -> list[Any]:
    """Detection and identification, per concept, metrics tables, example replies."""
    from mechintro.plotting import (
        Section,
        concept_bars,
        dose_response,
        examples_table,
        plot_text,
        rate_heatmap,
    )

    tables = rate_tables(graded)
    extra = _extra(graded)
    cell, concept = tables["by_cell"], tables["by_concept"]
    graded_metrics = [m for m in METRICS if m != "fpr" and (cell[f"n_{m}"] > 0).any()]
    detection: list[Any] = [
        "TPR = P(claim | injected), FPR = P(claim | uninjected control), introspection = "
        "P(claim and correct identification | injected), identification = P(correct | "
        "claim), forced identification = P(correct | prefilled claim); each with a 95% "
        "Wilson interval and k/n (docs/protocols.md §4).",
        format_rates(tables["overall"], extra),
    ]
    concepts: list[Any] = []
    for key, part in [(None, cell)] if not extra else list(cell.groupby("protocol")):
        label = "" if key is None else plot_text(key if isinstance(key, str) else key[0]) + ": "
        for m in graded_metrics:
            if (part[f"n_{m}"] > 0).any():
                fig = rate_heatmap(part, m)
                detection.append(fig.update_layout(title=label + fig.layout.title.text))
        for m in ("tpr", "introspection_rate", "forced_identification_rate"):
            if m in graded_metrics and (part[f"n_{m}"] > 0).any():
                fig = dose_response(part, m)
                detection.append(fig.update_layout(title=label + fig.layout.title.text))
    named = concept.dropna(subset=["concept"])
    for key, part in [(None, named)] if not extra else list(named.groupby("protocol")):
        label = "" if key is None else plot_text(key if isinstance(key, str) else key[0]) + ": "
        for m in ("tpr", "introspection_rate", "forced_identification_rate"):
            if m in graded_metrics and (part[f"n_{m}"] > 0).any():
                fig = concept_bars(part, m)
                concepts.append(fig.update_layout(title=label + fig.layout.title.text))
    examples = pick_examples(graded, max_examples)
    return [
        Section("Detection and identification", detection),
        Section("Per concept", [*concepts, format_rates(concept, [*extra, "concept"])]),
        Section(
            "Metrics tables",
            [
                "Per layer × strength (the FPR pools every uninjected trial):",
                format_rates(cell, [*extra, "layer", "strength"]),
                "The same with every count and interval bound:",
                cell,
            ],
        ),
        Section(
            "Example replies",
            [
                GRADE_CAPTION,
                examples_table(examples, ["concept", "layer", "strength", "reply", "grade"]),
            ]
            if len(examples)
            else ["(no replies)"],
        ),
    ]


def write_report(
    results_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    grader: str | None = None,
    title: str | None = None,
    max_examples: int = 30,
    controls: Sequence[str] = (),
    noise: pd.DataFrame | None = None,
) -> Path:
    """Write the HTML report of a results folder; return its path (default
    ``results_dir/report.html``).

    ``grader`` picks whose grades to use (``rule``, ``judge:openai:gpt-4o-mini``...; default:
    :func:`choose_grader`). A folder with no grades is graded on the fly by the rule grader
    (nothing is saved: run :func:`grade_results` to store grades). ``controls`` names the
    protocols whose readout is a control question (:func:`belief_readouts`); ``noise`` is a
    table of Godet's noise controls (``NoiseControls.run`` output) to show as well.
    Intention-kind trials get their own section (:func:`intention_trials`: the grader's
    ``intention`` labels, any missing one classified by the same rule here); a folder with
    nothing else shows only that section (and the noise controls, if given).

    Example::

        write_report("runs/a", grader="rule")
    """
    from mechintro.experiments.grading import RuleGrader
    from mechintro.experiments.sweeps import load_results, load_spec, plan
    from mechintro.plotting import html_report

    folder = Path(results_dir)
    meta = _meta(folder)
    trials = load_results(folder)
    if trials.empty:
        raise ValueError(
            f"{folder} holds no finished trial yet: run `mechintro sweep --out {folder}` first"
        )
    grades = load_grades(folder)
    names = sorted(grades["grader"].unique())
    if grader is not None and grader not in names:
        raise ValueError(
            f"no grades by {grader!r} in {folder / GRADES_FILE}: graders there are {names}; "
            f"run `mechintro grade {folder}` with that grader first"
        )
    grader = grader or choose_grader(grades)
    if grader is None:
        rule = RuleGrader()
        grades = grade_trials(trials, rule)[GRADE_COLUMNS]
        grader = rule.name
        grading = (
            "No stored grades: the replies were graded on the fly by the rule grader (not "
            f"saved). Run `mechintro grade {folder}` to store grades, or use an LLM judge."
        )
    else:
        others = [g for g in names if g != grader]
        grading = f"Grades by {grader}" + (f" (also in the folder: {others})." if others else ".")
    graded = graded_trials(trials, grades, grader)
    intention = intention_trials(trials, grades, grader)
    if graded.empty and intention.empty:
        raise ValueError(
            f"{folder} holds no detection, forced or intention trial to rate (its protocols "
            f"are {sorted(trials['protocol'].unique())})"
        )
    n_err = int(graded["detection"].eq("ERROR").sum() + graded["identification"].eq("ERROR").sum())
    if n_err:
        grading += (
            f" {n_err} grades are ERROR (a judge failure): they are left out of the rates; "
            "rerun `mechintro grade` to retry them."
        )
    sections = [_run_section(folder, meta, trials, len(plan(load_spec(folder))), grading)]
    detection = _detection_sections(graded, max_examples) if not graded.empty else []
    sections += detection[:2]
    if not intention.empty:
        sections.append(_intention_section(intention, max_examples))
    if not graded.empty or (noise is not None and len(noise)):
        sections.append(_belief_section(trials, controls, noise))
    sections += detection[2:]
    from mechintro import __version__

    path = Path(out) if out is not None else folder / "report.html"
    html_report(
        title or f"mechintro report: {folder.resolve().name}",
        sections,
        path=path,
        footer=f"mechintro {__version__}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"from {folder.resolve()}; rebuild with `mechintro report {folder}`.",
    )
    logger.debug("wrote %s", path)
    return path
