"""Grading a sweep's trials into its append-only grades file, and reading the grades back.

Detection- and forced-kind trials are graded by the grader given (rules or a judge); the
replies of intention-kind trials (Lindsey's prefill intention, docs/protocols.md §6) are
classified by their own rule,
:func:`~mechintro.experiments.protocols.intention.classify_reply`, whichever grader runs: one
``intention`` grade per trial, labelled ``apology``, ``accept`` or ``unclear``, recorded
under the running grader's name with the rule's version
(:data:`~mechintro.experiments.protocols.intention.CLASSIFIER_VERSION`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from mechintro.batching import check_batch_size, in_batches
from mechintro.experiments.grading import GradeItem, Grader

logger = logging.getLogger(__name__)

GRADES_FILE = "grades.jsonl"
JUDGE_CACHE_FILE = "judge_cache.jsonl"
_KEY = ("trial_id", "rubric", "grader")
GRADE_COLUMNS = [*_KEY, "label", "version", "detail", "attempts", "graded_at"]


#: the rubric of intention-kind trials; its labels are classify_reply's
INTENTION_RUBRIC = "intention"


def _version(grader: Any, rubric: str) -> str:
    """The version a grader grades ``rubric`` at: its rubric's (judges) or its own (rules);
    the ``intention`` rubric is always at the version of ``classify_reply``'s rule."""
    if rubric == INTENTION_RUBRIC:
        from mechintro.experiments.protocols.intention import CLASSIFIER_VERSION

        return CLASSIFIER_VERSION
    rubrics = getattr(grader, "rubrics", None)
    if isinstance(rubrics, Mapping) and rubric in rubrics:
        return str(rubrics[rubric].version)
    return str(getattr(grader, "version", ""))


def _registry() -> Mapping[str, Any]:
    import mechintro.experiments.protocols as protocols

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
        from mechintro.experiments.protocols.detection import TRIAL_QUESTION

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
) -> pd.DataFrame:
    """Grade the trials (a :func:`~mechintro.experiments.sweeps.load_results` frame) that
    ``existing`` records do not already hold a YES/NO of, from this grader at its current version
    (intention-kind trials: an ``intention`` label of :func:`classify_reply`'s current version,
    classified by that rule, never by the grader).

    Returns the new grades as a frame of :data:`GRADE_COLUMNS` (the shape of
    :func:`load_grades`, which :func:`graded_trials` reads) and ``cached``, one row per new
    grade record (``trial_id``, the :class:`~mechintro.experiments.grading.Grade`'s fields,
    ``graded_at``); ``on_batch`` gets each batch of the records as soon as it is graded (the
    JSON lines of ``grades.jsonl``).

    Example::

        grades = grade_trials(load_results("runs/a"), RuleGrader())
        graded = graded_trials(load_results("runs/a"), grades, RuleGrader().name)
    """

    check_batch_size(batch_size)
    done = _latest(existing)
    new: list[dict[str, Any]] = []
    if trials.empty:
        return _grade_frame(new)
    kinds, injected = _kinds(trials), _injected(trials)

    def pending(rubric: str, rows: pd.DataFrame) -> list[Any]:
        """The rows that hold no YES/NO (or label) of ``rubric`` at its current version."""
        out = []
        for r in rows.itertuples(index=False):
            old = done.get((r.trial_id, rubric, grader.name))
            if old and old["label"] != "ERROR" and old["version"] == _version(grader, rubric):
                continue
            out.append(r)
        return out

    def todo(rubric: str, rows: pd.DataFrame) -> list[tuple[str, GradeItem]]:
        out = []
        for r in pending(rubric, rows):
            concept = r.concept if isinstance(r.concept, str) else None
            reply = _cut(r.protocol, str(r.reply))
            item = GradeItem(rubric, reply, concept, question=_question(r.protocol, r.trial_number))
            out.append((r.trial_id, item))
        return out

    def run(jobs: list[tuple[str, GradeItem]], what: str) -> None:
        for _, chunk in in_batches(jobs, batch_size, label=what, progress=progress):
            grades = grader.grade([item for _, item in chunk])
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            recs = [
                {"trial_id": t, **g.to_dict(), "graded_at": now} for (t, _), g in zip(chunk, grades)
            ]
            if on_batch is not None:
                on_batch(recs)
            new.extend(recs)
            done.update(_latest(recs))

    def classify(rows: list[Any]) -> None:
        """The intention rubric: classify_reply's label of the cut reply, no grader call."""
        from mechintro.experiments.protocols.intention import CLASSIFIER_VERSION, classify_reply

        jobs = [(r.trial_id, _cut(r.protocol, str(r.reply))) for r in rows]
        for _, chunk in in_batches(jobs, batch_size, label="intention", progress=progress):
            now = datetime.now(timezone.utc).isoformat(timespec="seconds")
            recs = [
                {
                    "trial_id": t,
                    "label": classify_reply(reply),
                    "grader": grader.name,
                    "version": CLASSIFIER_VERSION,
                    "rubric": INTENTION_RUBRIC,
                    "detail": "the rule classify_reply (mechintro.experiments.protocols.intention)",
                    "attempts": 0,
                    "cached": False,
                    "graded_at": now,
                }
                for t, reply in chunk
            ]
            if on_batch is not None:
                on_batch(recs)
            new.extend(recs)
            done.update(_latest(recs))

    detection, forced = kinds == "detection", kinds == "forced"
    classify(pending(INTENTION_RUBRIC, trials[kinds == "intention"]))
    first = todo("detection", trials[detection])
    first += todo("forced_identification", trials[forced & injected])
    run(first, "detection")
    claimed = (
        trials["trial_id"]
        .map(lambda t: done.get((t, "detection", grader.name), {}).get("label") == "YES")
        .astype(bool)
    )
    run(todo("identification", trials[detection & injected & claimed]), "identification")
    return _grade_frame(new)


def _grade_frame(records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Grade records as a frame: :data:`GRADE_COLUMNS`, then whether a cache answered."""
    return pd.DataFrame(list(records), columns=[*GRADE_COLUMNS, "cached"])


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
    resumable; see :mod:`mechintro.app.report`). Safe to run while the sweep is still running.

    Example::

        print(grade_results("runs/a", JudgeGrader(openai_client("gpt-4o-mini"))))
    """
    from mechintro.experiments.sweeps import TrialStore, load_results

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
        kept=len(mine) - len(set(new[list(_KEY)].itertuples(index=False, name=None)) & mine),
    )
    logger.debug("%s", summary)
    return summary


def load_grades(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The latest grade of each (trial, rubric, grader) in a results folder (empty if none)."""
    from mechintro.experiments.sweeps import TrialStore

    records = list(_latest(TrialStore(Path(out_dir) / GRADES_FILE).read()).values())
    return pd.DataFrame(records, columns=GRADE_COLUMNS)


def choose_grader(grades: pd.DataFrame) -> str | None:
    """The grader with the most grades (the latest one on a tie); None if there are none."""
    if grades.empty:
        return None
    stats = grades.groupby("grader").agg(n=("label", "size"), last=("graded_at", "max"))
    return str(stats.sort_values(["n", "last"]).index[-1])


def graded_trials(trials: pd.DataFrame, grades: pd.DataFrame, grader: str) -> pd.DataFrame:
    """``trials`` with the columns :func:`mechintro.experiments.metrics.rates` reads, from
    ``grader``'s grades: ``detection``, ``identification`` (on forced trials, the forced
    identification) and ``forced``. Only detection- and forced-kind protocols are kept (intention
    trials: :func:`intention_trials`), and of forced ones only the injected trials (an
    uninjected forced trial measures nothing the metrics define).
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


def _prefilled_word(protocol: str, trial_number: Any, concept: str | None) -> str | None:
    """The word an intention-kind trial prefilled: its prompt's ``prefill`` mark, rebuilt."""
    p = _registry().get(protocol)
    if p is None or p.needs_tokenizer:
        return concept
    return p.prompt(int(trial_number), concept=concept).marks.get("prefill", concept)


def intention_trials(trials: pd.DataFrame, grades: pd.DataFrame, grader: str) -> pd.DataFrame:
    """The intention-kind trials of ``trials`` with the columns
    :func:`~mechintro.experiments.protocols.intention.intention_rates` reads, from
    ``grader``'s ``intention`` grades: ``label``, ``apology``, ``accept``; and ``word`` (the
    prefilled word, from the trial's prompt), ``injected_word`` (the concept whose vector was
    added, None if none), ``condition`` (``uninjected``, ``word``: the prefilled word's own
    vector, ``unrelated``: another's) and ``graded`` (False where the grades hold no current
    label and :func:`classify_reply` classified the reply here). Empty if there are none.

    Example::

        rates = intention_rates(intention_trials(trials, load_grades("runs/a"), "rule"))
    """
    from mechintro.experiments.protocols.intention import CLASSIFIER_VERSION, classify_reply

    cols = ["label", "apology", "accept", "word", "injected_word", "condition", "graded"]
    if trials.empty:
        return pd.DataFrame(columns=[*trials.columns, *cols])
    df = trials[_kinds(trials) == "intention"].reset_index(drop=True)
    if df.empty:
        return pd.DataFrame(columns=[*trials.columns, *cols])
    mine = grades[
        (grades["grader"] == grader)
        & (grades["rubric"] == INTENTION_RUBRIC)
        & (grades["version"] == CLASSIFIER_VERSION)
    ]
    stored = dict(zip(mine["trial_id"], mine["label"]))
    df["graded"] = df["trial_id"].isin(list(stored))
    df["label"] = [
        stored[t] if t in stored else classify_reply(_cut(p, str(r)))
        for t, p, r in zip(df["trial_id"], df["protocol"], df["reply"])
    ]
    df["apology"] = df["label"] == "apology"
    df["accept"] = df["label"] == "accept"
    concepts = [c if isinstance(c, str) and c else None for c in df["concept"]]
    df["word"] = [
        _prefilled_word(p, n, c) for p, n, c in zip(df["protocol"], df["trial_number"], concepts)
    ]
    inj = df["injected"].astype(bool) & pd.Series([c is not None for c in concepts])
    df["injected_word"] = [c if i else None for c, i in zip(concepts, inj)]
    df["condition"] = [
        "uninjected"
        if not i
        else ("word" if str(w).casefold() == str(c).casefold() else "unrelated")
        for i, w, c in zip(inj, df["word"], concepts)
    ]
    return df
