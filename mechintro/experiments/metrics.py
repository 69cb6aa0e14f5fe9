"""Rates with Wilson intervals, and the specificity of a belief shift (docs/metrics.md §1–§4).

:func:`rates` turns a table of graded trials into TPR, FPR, introspection, identification
and forced-identification rates per group, each with a Wilson interval and its counts.
A grade that is ``ERROR`` (or missing where it is needed) is left out of the denominator
and counted in ``n_errors``: never read as a NO. :func:`specificity` compares the belief
shift Δb of the introspection question with that of control questions (Godet).

Example::

    table = rates(trials, by=["layer", "strength"])
    table[["layer", "strength", "tpr", "tpr_lo", "tpr_hi", "fpr", "n_errors"]]
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from statistics import NormalDist
from typing import Any

import numpy as np
import pandas as pd

#: columns that only injected rows carry: controls are not matched on them by default
INJECTION_ONLY: tuple[str, ...] = ("concept", "strength")

METRICS: tuple[str, ...] = (
    "tpr",
    "fpr",
    "introspection_rate",
    "identification_given_claim",
    "forced_identification_rate",
)


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials; ``(nan, nan)`` when n = 0.

    ``(p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)`` with ``p = k/n`` and ``z``
    the normal quantile of ``(1 + confidence) / 2``.

    Example::

        wilson(8, 10)  # (0.4902, 0.9433)
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    z = _z(confidence)
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return (lo, hi)


def label_of(x: Any) -> str | None:
    """``"YES"``, ``"NO"``, ``"ERROR"`` or None (not graded) from a label, a bool or a Grade.

    Example::

        label_of("yes"), label_of(False), label_of(None)  # ('YES', 'NO', None)
    """
    if x is None:
        return None
    label = getattr(x, "label", x)
    if isinstance(label, (bool, np.bool_)):
        return "YES" if label else "NO"
    if isinstance(label, float) and math.isnan(label):
        return None
    if label is pd.NA or label is pd.NaT:
        return None
    s = str(label).strip().upper()
    if s in ("YES", "NO", "ERROR"):
        return s
    if s in ("", "NAN", "NONE"):
        return None
    raise ValueError(f"not a grade label: {x!r}")


class _Count:
    """Successes and graded trials of one rate (an ungraded trial is not added)."""

    def __init__(self) -> None:
        self.k = self.n = 0

    def add(self, success: bool | None) -> None:
        if success is not None:
            self.n += 1
            self.k += int(success)


def _count_rows(rows: pd.DataFrame, ident: bool) -> tuple[dict[str, _Count], int]:
    """Counts of every metric over ``rows``, and the number of needed grades not graded."""
    c = {m: _Count() for m in METRICS}
    errors = 0
    inj = rows["injected"].astype(bool)
    forced = rows["forced"].astype(bool)
    det = [label_of(x) for x in rows["detection"]] if "detection" in rows else [None] * len(rows)
    idf = [label_of(x) for x in rows["identification"]] if ident else [None] * len(rows)
    for is_inj, is_forced, d, i in zip(inj, forced, det, idf):
        if is_forced:
            if ident:
                errors += i in (None, "ERROR")
                c["forced_identification_rate"].add(None if i in (None, "ERROR") else i == "YES")
            continue
        if not is_inj:
            errors += d in (None, "ERROR")
            c["fpr"].add(None if d in (None, "ERROR") else d == "YES")
            continue
        if d in (None, "ERROR"):
            errors += 1
            continue
        c["tpr"].add(d == "YES")
        if not ident:
            continue
        if d == "NO":
            c["introspection_rate"].add(False)
        else:
            ok = None if i in (None, "ERROR") else i == "YES"
            errors += ok is None
            c["introspection_rate"].add(ok)
            c["identification_given_claim"].add(ok)
    return c, errors


def rates(
    df: pd.DataFrame,
    by: Sequence[str] = (),
    *,
    control_by: Sequence[str] | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Detection metrics per group of ``by``, each with its Wilson interval and counts.

    ``df`` has one row per trial: ``injected`` (bool), ``forced`` (bool, optional: False),
    ``detection`` (grade label of a non-forced trial) and, optionally, ``identification``
    (on non-forced rows the identification grade, needed only where detection is YES; on
    forced rows the forced-identification grade). Labels may be strings, bools or
    :class:`~mechintro.experiments.grading.Grade` objects.

    Per group, for each metric ``m`` in ``tpr`` = P(claim | injected), ``fpr`` =
    P(claim | control), ``introspection_rate`` = P(claim ∧ identified | injected),
    ``identification_given_claim`` = P(identified | claim, injected) and
    ``forced_identification_rate`` = P(identified | forced): ``m``, ``m_lo``, ``m_hi``,
    ``k_m`` (successes) and ``n_m`` (graded trials; NaN rate when 0). A needed grade that is
    ``ERROR`` or missing drops the trial from the metrics that need it, and ``n_errors``
    counts such grades once each: a detection error drops the trial from the TPR and the
    introspection rate; a claimed detection whose identification is an error still counts
    for the TPR but drops out of the two identification rates.

    Controls (``injected`` False, not forced) usually carry no concept and no strength, so
    the FPR of a group comes from the control rows that match it on ``control_by``, which
    defaults to the ``by`` columns other than ``concept`` and ``strength``
    (:data:`INJECTION_ONLY`); ``control_by=[]`` pools every control for every group. The
    same controls then serve several groups, and their errors count in each. Groups are the
    ``by`` values of injected and forced rows (and of control rows when ``control_by`` is
    all of ``by``).

    Example::

        rates(trials, by=["layer", "strength"])  # FPR per layer, from the controls at it
        rates(trials, by=["concept"], control_by=[])  # one pooled FPR on every row
    """
    by = list(by)
    if "injected" not in df:
        raise ValueError("rates() needs an 'injected' column")
    missing = [c for c in by if c not in df]
    if missing:
        raise ValueError(f"group columns not in the table: {missing}")
    cby = [c for c in by if c not in INJECTION_ONLY] if control_by is None else list(control_by)
    if not set(cby) <= set(by):
        raise ValueError(f"control_by {cby} must be a subset of by {by}")
    df = df.copy()
    if "forced" not in df:
        df["forced"] = False
    df["injected"] = df["injected"].astype(bool)
    df["forced"] = df["forced"].astype(bool)
    ident = "identification" in df
    is_ctrl = ~df["injected"] & ~df["forced"]
    main, ctrl = df[~is_ctrl], df[is_ctrl]

    main_groups = _groups(main, by)
    ctrl_groups = _groups(ctrl, cby)
    keys = list(main_groups)
    if cby == by:
        keys += [k for k in ctrl_groups if k not in main_groups and len(ctrl_groups[k])]
    if not by:
        keys = [()]
    rows: list[dict[str, Any]] = []
    for key in keys:
        g = main_groups.get(key, main.iloc[:0])
        ckey = tuple(key[by.index(c)] for c in cby)
        cg = _match(ctrl_groups, ckey)
        counts, errors = _count_rows(g, ident)
        ctrl_counts, ctrl_errors = _count_rows(cg, ident)
        counts["fpr"] = ctrl_counts["fpr"]
        row: dict[str, Any] = dict(zip(by, key))
        row["n_injected"] = int((g["injected"] & ~g["forced"]).sum())
        row["n_forced"] = int(g["forced"].sum())
        row["n_control"] = len(cg)
        for m in METRICS:
            c = counts[m]
            lo, hi = wilson(c.k, c.n, confidence)
            row[m] = c.k / c.n if c.n else math.nan
            row[f"{m}_lo"], row[f"{m}_hi"] = lo, hi
            row[f"k_{m}"], row[f"n_{m}"] = c.k, c.n
        row["n_errors"] = errors + ctrl_errors
        rows.append(row)
    return pd.DataFrame(rows)


def _groups(frame: pd.DataFrame, cols: list[str]) -> dict[tuple[Hashable, ...], pd.DataFrame]:
    """``frame`` split by ``cols`` (NaN a value of its own), keys always tuples, sorted."""
    if not cols:
        return {(): frame}
    return {
        (k if isinstance(k, tuple) else (k,)): g
        for k, g in frame.groupby(cols, dropna=False, sort=True)
    }


def _match(
    groups: dict[tuple[Hashable, ...], pd.DataFrame], key: tuple[Hashable, ...]
) -> pd.DataFrame:
    """The group under ``key``, with NaN equal to NaN; an empty frame if none."""
    if key in groups:
        return groups[key]
    for k, g in groups.items():
        if len(k) == len(key) and all(a == b or (_isnan(a) and _isnan(b)) for a, b in zip(k, key)):
            return g
    empty = next(iter(groups.values()), None)
    return empty.iloc[:0] if empty is not None else pd.DataFrame(columns=["injected", "forced"])


def _sorted_keys(keys: set[tuple[Hashable, ...]]) -> list[tuple[Hashable, ...]]:
    try:
        return sorted(keys)
    except TypeError:
        return sorted(keys, key=lambda k: tuple(map(str, k)))


def _isnan(x: Any) -> bool:
    try:
        return bool(pd.isna(x))
    except (TypeError, ValueError):
        return False


def add_delta_b(
    df: pd.DataFrame,
    *,
    value: str = "b",
    strength: str = "strength",
    keys: Sequence[str] = ("question", "layer"),
    baseline: float = 0.0,
) -> pd.DataFrame:
    """A copy of ``df`` with ``delta_b`` = ``value`` minus its value at ``strength == baseline``
    in the same ``keys`` group (e.g. question, layer, vector).

    Example::

        add_delta_b(readouts, keys=["question", "layer", "vector"])
    """
    keys = list(keys)
    base = df[df[strength] == baseline]
    if base.duplicated(keys).any():
        raise ValueError(f"several baseline rows (strength {baseline}) per {keys} group")
    ref = base.set_index(keys)[value].rename("_b0")
    out = df.join(ref, on=keys)
    if out["_b0"].isna().any():
        raise ValueError(f"some {keys} groups have no row at strength {baseline}")
    out["delta_b"] = out[value] - out["_b0"]
    return out.drop(columns="_b0")


def specificity(
    df: pd.DataFrame,
    *,
    by: Sequence[str] = ("layer", "strength"),
    question: str = "question",
    value: str = "delta_b",
    introspection: str = "introspection",
    per_control: bool = False,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Specificity ``mean Δb(introspection) − mean Δb(controls)`` per group of ``by``.

    Rows whose ``question`` equals ``introspection`` form one side; every other question
    (``"control"``, or the ids of a battery of control questions) the other, pooled, or one
    output row per control question with ``per_control=True``. The interval is a normal
    approximation with the Welch standard error ``sqrt(s_i²/n_i + s_c²/n_c)`` (sample
    variances): it needs two or more readouts on each side (several vectors, concepts or
    control questions), else ``specificity_lo``/``_hi`` are NaN; with few readouts it is
    too narrow (no t correction). A specificity near 0 means the injection moves the
    control belief as much as the introspection belief: generic confusion, not
    introspection (Godet, docs/protocols.md §5).

    Example::

        specificity(add_delta_b(readouts))  # layer, strength, specificity, _lo, _hi, ...
    """
    by = list(by)
    for c in (*by, question, value):
        if c not in df:
            raise ValueError(f"specificity() needs a {c!r} column")
    z = _z(confidence)
    is_intro = df[question] == introspection
    intro, ctrl = df[is_intro], df[~is_intro]
    if per_control:
        sides = [(q, g) for q, g in ctrl.groupby(question, sort=True)]
    else:
        sides = [(None, ctrl)]
    rows: list[dict[str, Any]] = []
    gi = _groups(intro, by)
    for q, cside in sides:
        gc = _groups(cside, by)
        for key in _sorted_keys(set(gi) | set(gc)):
            xi = _match(gi, key)[value].to_numpy(float) if gi else np.array([])
            xc = _match(gc, key)[value].to_numpy(float) if gc else np.array([])
            row: dict[str, Any] = dict(zip(by, key))
            if per_control:
                row["control"] = q
            mi = float(xi.mean()) if len(xi) else math.nan
            mc = float(xc.mean()) if len(xc) else math.nan
            diff = mi - mc
            if len(xi) >= 2 and len(xc) >= 2:
                se = math.sqrt(xi.var(ddof=1) / len(xi) + xc.var(ddof=1) / len(xc))
            else:
                se = math.nan
            row.update(
                mean_introspection=mi,
                mean_control=mc,
                n_introspection=len(xi),
                n_control=len(xc),
                specificity=diff,
                se=se,
                specificity_lo=diff - z * se,
                specificity_hi=diff + z * se,
            )
            rows.append(row)
    return pd.DataFrame(rows)
