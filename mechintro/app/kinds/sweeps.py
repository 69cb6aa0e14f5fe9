"""The sweep kinds of ``mechintro run``: ``sweep`` (any protocol of the registry) and
``intention`` (Lindsey's prefill intention with its unrelated-concept control), each a
resumable :func:`~mechintro.experiments.sweeps.run_sweep`, rule-graded, with ``report.html``
(docs/protocols.md §10). :func:`sweep_spec` turns a sweep table into a ``SweepSpec`` (the
other kinds' sweeps too) and :func:`sweep_table` grades a sweep folder into its rates."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechintro.app.options import UsageError

if TYPE_CHECKING:
    import pandas as pd

    from mechintro.experiments.sweeps import SweepSpec
    from mechintro.models import TLModel

#: keys a sweep table takes besides SweepSpec's fields
SWEEP_EXTRAS: tuple[str, ...] = ("depths", "word_list")


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
