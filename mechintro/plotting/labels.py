"""How figures and summary tables name and print things: :data:`LABELS` (read with
:func:`label`) maps the identifiers of results tables to human labels, :data:`RATE_NAMES`
says what each rate means, :func:`interval_text` writes a value and its interval on one line,
:func:`plot_text` escapes text for plotly, :data:`PALETTE` colours lines in order, and
:func:`need_columns` refuses a table that lacks the columns a figure reads (docs/figures.md)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd

#: what each rate of ``mechintro.experiments.metrics.rates`` means, for titles and hovers
RATE_NAMES: dict[str, str] = {
    "tpr": "TPR = P(claim | injected)",
    "fpr": "FPR = P(claim | control)",
    "introspection_rate": "introspection = P(claim ∧ identified | injected)",
    "identification_given_claim": "identification = P(identified | claim, injected)",
    "forced_identification_rate": "forced identification = P(identified | prefill)",
}
#: the one mapping from the identifiers in results tables (metric and column names, Godet's
#: question ids) to the labels figures, legends and summary tables show; :func:`label` reads it
LABELS: dict[str, str] = {
    "tpr": "TPR",
    "fpr": "FPR",
    "introspection_rate": "introspection",
    "identification_given_claim": "identification | claim",
    "forced_identification_rate": "forced identification",
    "identification": "identification",
    "identification_category": "identification (category)",
    "control_flip_rate": "1+1=3 answer flips",
    "b": "b = logit(Yes) − logit(No)",
    "b_variants": "b, Yes/No spellings pooled",
    "delta_b": "Δb (belief shift)",
    "delta_b_variants": "Δb (belief shift), Yes/No spellings pooled",
    "n_injected": "n injected",
    "n_control": "n controls",
    "n_errors": "grading errors",
    "trial_number": "trial",
    "train": "train concepts",
    "heldout": "held-out concepts",
    "random": "random vectors",
    # Godet's two questions (mechintro.experiments.protocols.noise): the ids that name panels
    "introspection": "“Do you detect an injected thought?”",
    "one_plus_one_is_three": "“Do you believe that 1+1=3?”",
}
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def label(key: Any) -> str:
    """The human label of an identifier (:data:`LABELS`), else the identifier itself.

    Example::

        label("delta_b")  # 'Δb (belief shift)'
    """
    return LABELS.get(str(key), str(key))


def interval_text(value: Any, lo: Any, hi: Any, digits: int = 2) -> str:
    """``value [lo, hi]`` on one line (no-break spaces, so a table cell does not wrap it);
    "–" for a missing value, the value alone without bounds.

    Example::

        interval_text(0.62, 0.514, 0.72)  # '0.62\xa0[0.51,\xa00.72]'
    """
    v, a, b = plot_number(value), plot_number(lo), plot_number(hi)
    if v is None:
        return "–"
    if a is None or b is None:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f}\N{NO-BREAK SPACE}[{a:.{digits}f},\N{NO-BREAK SPACE}{b:.{digits}f}]"


def tick_text(v: Any) -> str:
    """A tick or legend value: 3.0 → "3", NaN → "–"."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def plot_number(v: Any) -> float | None:
    """A number for plotly's JSON (NaN → None, a gap)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def plot_text(text: Any) -> str:
    """``text`` escaped for plotly's labels and table cells (which read a subset of HTML)."""
    return html.escape(str(text)).replace("\n", "<br>")


def need_columns(df: pd.DataFrame, cols: Sequence[str], what: str, hint: str) -> None:
    """Refuse a table without ``cols``, naming those it has and ``hint`` (what to pass)."""
    missing = [c for c in cols if c not in df]
    if missing:
        raise ValueError(f"{what} needs columns {missing} (has {list(df.columns)}): {hint}")
