"""A sweep's grades, metrics tables and HTML report (PROTOCOLS.md §3–§5).

A results folder written by :func:`mechintro.sweeps.run_sweep` gains::

    grades.jsonl        one record per (trial, rubric, grader), appended batch by batch
    judge_cache.jsonl   the LLM judge's cache (JudgeGrader(cache_path=...)), if a judge graded
    report.html         the report (write_report)

:func:`grade_results` grades every finished trial that the grader (at its current version)
has not graded yet, by the kind of its protocol (:data:`mechintro.protocols.PROTOCOLS`):
``detection`` on every trial of a detection-kind protocol (``detection``, ``skeptical``,
``detection/raw``...), then ``identification`` on its injected trials whose detection is YES,
and ``forced_identification`` on the injected trials of a forced-kind protocol (``forced``,
``forced/raw``...); each reply is first cut at its protocol's turn markers. Records are only
appended, so a run stopped at any point resumes
where it stopped, and the latest record of a (trial, rubric, grader) wins. A judge that fails
gives an ``ERROR`` grade: it is recorded (with the failure), left out of every denominator and
retried by the next run, never counted as a NO.

:func:`write_report` joins trials and grades, computes :func:`mechintro.metrics.rates` per
layer × strength and per concept, the belief shift Δb of the introspection question against
any control question the sweep recorded readouts for (:func:`belief_readouts`, Godet), and
writes one self-contained HTML page.

Example::

    grade_results("runs/detection", RuleGrader())
    write_report("runs/detection")  # runs/detection/report.html
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from mechintro.grading import GradeItem, Grader
from mechintro.metrics import METRICS, add_delta_b, rates, specificity

logger = logging.getLogger(__name__)

GRADES_FILE = "grades.jsonl"
JUDGE_CACHE_FILE = "judge_cache.jsonl"
_KEY = ("trial_id", "rubric", "grader")
GRADE_COLUMNS = [*_KEY, "label", "version", "detail", "attempts", "graded_at"]


# ---------------------------------------------------------------------------------------------
# grades


def _version(grader: Any, rubric: str) -> str:
    """The version a grader grades ``rubric`` at: its rubric's (judges) or its own (rules)."""
    rubrics = getattr(grader, "rubrics", None)
    if isinstance(rubrics, Mapping) and rubric in rubrics:
        return str(rubrics[rubric].version)
    return str(getattr(grader, "version", ""))


def _registry() -> Mapping[str, Any]:
    import mechintro.protocols as protocols

    return getattr(protocols, "PROTOCOLS", {})


def protocol_kind(name: str) -> str:
    """``detection``, ``forced`` or ``intention``: the registered protocol's kind; a protocol
    the registry does not know (a custom builder) is ``forced`` if named ``forced...``, else
    ``detection``."""
    p = _registry().get(name)
    if p is not None:
        return str(p.kind)
    return "forced" if name.split("/")[0] == "forced" else "detection"


def _kinds(trials: pd.DataFrame) -> pd.Series:
    return trials["protocol"].map({p: protocol_kind(p) for p in trials["protocol"].unique()})


def _cut(protocol: str, reply: str) -> str:
    """``reply`` cut at the protocol's own turn markers (graders also cut at the usual ones)."""
    p = _registry().get(protocol)
    return str(p.cut(reply)) if p is not None else reply


def _question(protocol: str, trial_number: Any) -> str | None:
    """The question of a trial of the original dialogue (judges show it); None otherwise."""
    if protocol in ("detection", "forced"):
        from mechintro.protocols.detection import TRIAL_QUESTION

        return TRIAL_QUESTION.format(n=int(trial_number))
    return None


def _latest(records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["trial_id"], r["rubric"], r["grader"]): dict(r) for r in records}


def _injected(trials: pd.DataFrame) -> pd.Series:
    return trials["injected"].astype(bool) & trials["concept"].notna()


def grade_trials(
    trials: pd.DataFrame,
    grader: Grader,
    *,
    existing: Sequence[Mapping[str, Any]] = (),
    batch_size: int = 64,
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Grade the trials (a :func:`~mechintro.sweeps.load_results` frame) that ``existing``
    records do not already hold a YES/NO of, from this grader at its current version.

    Returns the new grade records (``trial_id``, the :class:`~mechintro.grading.Grade`'s
    fields, ``graded_at``); ``on_batch`` gets each batch of them as soon as it is graded.

    Example::

        records = grade_trials(load_results("runs/a"), RuleGrader())
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    done = _latest(existing)
    new: list[dict[str, Any]] = []
    if trials.empty:
        return new
    kinds, injected = _kinds(trials), _injected(trials)

    def todo(rubric: str, rows: pd.DataFrame) -> list[tuple[str, GradeItem]]:
        out = []
        for r in rows.itertuples(index=False):
            old = done.get((r.trial_id, rubric, grader.name))
            if old and old["label"] != "ERROR" and old["version"] == _version(grader, rubric):
                continue
            concept = r.concept if isinstance(r.concept, str) else None
            reply = _cut(r.protocol, str(r.reply))
            item = GradeItem(rubric, reply, concept, question=_question(r.protocol, r.trial_number))
            out.append((r.trial_id, item))
        return out

    def run(jobs: list[tuple[str, GradeItem]], what: str) -> None:
        bar = tqdm(total=len(jobs), unit="reply", desc=what, disable=not progress or not jobs)
        for i in range(0, len(jobs), batch_size):
            chunk = jobs[i : i + batch_size]
            grades = grader.grade([item for _, item in chunk])
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            recs = [
                {"trial_id": t, **g.to_dict(), "graded_at": now} for (t, _), g in zip(chunk, grades)
            ]
            if on_batch is not None:
                on_batch(recs)
            new.extend(recs)
            done.update(_latest(recs))
            bar.update(len(chunk))
        bar.close()

    detection, forced = kinds == "detection", kinds == "forced"
    first = todo("detection", trials[detection])
    first += todo("forced_identification", trials[forced & injected])
    run(first, "detection")
    claimed = (
        trials["trial_id"]
        .map(lambda t: done.get((t, "detection", grader.name), {}).get("label") == "YES")
        .astype(bool)
    )
    run(todo("identification", trials[detection & injected & claimed]), "identification")
    return new


@dataclass(frozen=True)
class GradeSummary:
    """What :func:`grade_results` did: new grades per rubric and label, and those kept."""

    grader: str
    path: Path
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    kept: int = 0

    @property
    def graded(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    @property
    def errors(self) -> int:
        return sum(c.get("ERROR", 0) for c in self.counts.values())

    def __str__(self) -> str:
        parts = [
            f"{rubric}: " + ", ".join(f"{n} {label}" for label, n in sorted(c.items()))
            for rubric, c in sorted(self.counts.items())
        ]
        text = f"{self.graded} new grades by {self.grader} in {self.path} ({self.kept} kept)"
        if parts:
            text += "; " + "; ".join(parts)
        if self.errors:
            text += f". {self.errors} ERROR grades: run the same command again to retry them"
        return text


def grade_results(
    out_dir: str | os.PathLike[str],
    grader: Grader,
    *,
    batch_size: int = 64,
    progress: bool = True,
) -> GradeSummary:
    """Grade a results folder's finished trials into ``out_dir/grades.jsonl`` (append-only,
    resumable; see the module doc). Safe to run while the sweep is still running.

    Example::

        print(grade_results("runs/a", JudgeGrader(openai_client("gpt-4o-mini"))))
    """
    from mechintro.sweeps import TrialStore, load_results

    out = Path(out_dir)
    trials = load_results(out)
    if trials.empty:
        raise ValueError(f"{out} holds no finished trial: run `mechintro sweep --out {out}` first")
    store = TrialStore(out / GRADES_FILE)  # the same append-only JSONL store as the trials
    existing = store.repair()
    counts: dict[str, Counter[str]] = {}

    def append(recs: list[dict[str, Any]]) -> None:
        store.append(recs)
        for r in recs:
            counts.setdefault(r["rubric"], Counter())[r["label"]] += 1

    new = grade_trials(
        trials, grader, existing=existing, batch_size=batch_size, on_batch=append, progress=progress
    )
    mine = {k for k in _latest(existing) if k[2] == grader.name}
    summary = GradeSummary(
        grader.name,
        store.path,
        {k: dict(v) for k, v in counts.items()},
        kept=len(mine) - len({tuple(r[k] for k in _KEY) for r in new} & mine),
    )
    logger.debug("%s", summary)
    return summary


def load_grades(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The latest grade of each (trial, rubric, grader) in a results folder (empty if none)."""
    from mechintro.sweeps import TrialStore

    records = list(_latest(TrialStore(Path(out_dir) / GRADES_FILE).read()).values())
    return pd.DataFrame(records, columns=GRADE_COLUMNS)


def choose_grader(grades: pd.DataFrame) -> str | None:
    """The grader with the most grades (the latest one on a tie); None if there are none."""
    if grades.empty:
        return None
    stats = grades.groupby("grader").agg(n=("label", "size"), last=("graded_at", "max"))
    return str(stats.sort_values(["n", "last"]).index[-1])


def graded_trials(trials: pd.DataFrame, grades: pd.DataFrame, grader: str) -> pd.DataFrame:
    """``trials`` with the columns :func:`mechintro.metrics.rates` reads, from ``grader``'s
    grades: ``detection``, ``identification`` (on forced trials, the forced identification)
    and ``forced``. Only detection- and forced-kind protocols are kept (intention trials are
    classified by :mod:`mechintro.protocols.intention`), and of forced ones only the injected
    trials (an uninjected forced trial measures nothing the metrics define).
    """
    mine = grades[grades["grader"] == grader]
    wide = mine.pivot(index="trial_id", columns="rubric", values="label")
    df = trials.drop(columns=["detection", "identification", "forced"], errors="ignore")
    df = df.merge(wide, left_on="trial_id", right_index=True, how="left")
    for col in ("detection", "identification", "forced_identification"):
        if col not in df:
            df[col] = None
    kinds = _kinds(df)
    df["forced"] = kinds == "forced"
    df["identification"] = df["forced_identification"].where(df["forced"], df["identification"])
    keep = (kinds == "detection") | (df["forced"] & df["injected"].astype(bool))
    return df[keep].reset_index(drop=True)


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
    """``keys`` and each graded metric as ``rate [lo, hi] k/n``, plus ``n_errors``."""
    from mechintro.plotting import SHORT_NAMES

    out = table[list(keys)].copy()
    for m in METRICS:
        if m not in table or not (table[f"n_{m}"] > 0).any():
            continue
        out[SHORT_NAMES[m]] = [
            "–" if n == 0 else f"{v:.2f} [{lo:.2f}, {hi:.2f}] {k}/{n}"
            for v, lo, hi, k, n in zip(
                table[m], table[f"{m}_lo"], table[f"{m}_hi"], table[f"k_{m}"], table[f"n_{m}"]
            )
        ]
    out["errors"] = table["n_errors"]
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


# ---------------------------------------------------------------------------------------------
# the report


def _meta(out: Path) -> dict[str, Any]:
    from mechintro.sweeps import SPEC_FILE

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
        f"{model.get('dtype')}), weights fingerprint {model.get('fingerprint')}; spec key "
        f"{meta.get('spec_key')}, created {meta.get('created')}.",
        grading,
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

    heading = "Control comparison: introspection vs control question (Godet, PROTOCOLS.md §5)"
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
            "(mechintro.protocols.noise.NoiseControls) give the control side."
        )
    )
    return Section(heading, [*items, *_belief_items(readouts, "The sweep")])


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

    Example::

        write_report("runs/a", grader="rule")
    """
    from mechintro.grading import RuleGrader
    from mechintro.plotting import (
        Section,
        concept_bars,
        dose_response,
        examples_table,
        html_report,
        plot_text,
        rate_heatmap,
    )
    from mechintro.sweeps import load_results, load_spec, plan

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
        grades = pd.DataFrame(grade_trials(trials, rule), columns=GRADE_COLUMNS)
        grader = rule.name
        grading = (
            "No stored grades: the replies were graded on the fly by the rule grader (not "
            f"saved). Run `mechintro grade {folder}` to store grades, or use an LLM judge."
        )
    else:
        others = [g for g in names if g != grader]
        grading = f"Grades by {grader}" + (f" (also in the folder: {others})." if others else ".")
    graded = graded_trials(trials, grades, grader)
    if graded.empty:
        raise ValueError(
            f"{folder} holds no detection or forced trial to rate (its protocols are "
            f"{sorted(trials['protocol'].unique())}); intention trials are summarised by "
            "mechintro.protocols.intention"
        )
    tables = rate_tables(graded)
    extra = _extra(graded)
    n_err = int(graded["detection"].eq("ERROR").sum() + graded["identification"].eq("ERROR").sum())
    if n_err:
        grading += (
            f" {n_err} grades are ERROR (a judge failure): they are left out of the rates; "
            "rerun `mechintro grade` to retry them."
        )

    cell, concept = tables["by_cell"], tables["by_concept"]
    graded_metrics = [m for m in METRICS if m != "fpr" and (cell[f"n_{m}"] > 0).any()]
    detection: list[Any] = [
        "TPR = P(claim | injected), FPR = P(claim | uninjected control), introspection = "
        "P(claim and correct identification | injected), identification = P(correct | "
        "claim), forced identification = P(correct | prefilled claim); each with a 95% "
        "Wilson interval and k/n (PROTOCOLS.md §4).",
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
    sections = [
        _run_section(folder, meta, trials, len(plan(load_spec(folder))), grading),
        Section("Detection and identification", detection),
        Section("Per concept", [*concepts, format_rates(concept, [*extra, "concept"])]),
        _belief_section(trials, controls, noise),
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
            [examples_table(examples, ["concept", "layer", "strength", "reply", "grade"])]
            if len(examples)
            else ["(no replies)"],
        ),
    ]
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
