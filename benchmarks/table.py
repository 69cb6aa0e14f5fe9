"""Rows of the results table, their ratios to each group's reference row, and rendering.

Every row is one measurement (or a computed roofline) with its time per unit (a trial, a
patched cell, a concept, a forward row). In each (shape, group) one row is the *reference*:
mechintro's own path on the TransformerBridge. A row's ratio is

    ratio = time per unit of the row / time per unit of the reference

i.e. how many times faster mechintro is than that row (< 1: that row is faster). A target is
a lower bound on the ratio (``≥ 50×`` over per-trial HookedTransformer generation, ``≥ 0.9×``
batched HF generation: mechintro at most ~10% slower, ``≥ 0.33×`` the roofline: within 3×).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

STATUSES = ("ok", "model", "skipped", "error", "not implemented")


@dataclass
class Row:
    shape: str
    group: str
    name: str
    backend: str  # "bridge", "hooked", "hf" or "-"
    unit: str  # what one unit is: "trial", "cell", "concept", "row"
    seconds: float | None = None  # per unit
    tokens_per_unit: float | None = None  # generated (or forwarded) tokens per unit
    how: str = ""  # "median of 3 calls of 64 trials", "2 of 512 cells, extrapolated", ...
    peak_bytes: int | None = None
    extra_bytes: int | None = None
    ref: bool = False
    target: float | None = None  # lower bound on the ratio
    status: str = "ok"
    note: str = ""
    ratio: float | None = None
    detail: dict[str, Any] | None = None
    bound: str = ""  # a target on something other than time (e.g. "≤ 2% of dense")
    met: bool | None = None  # whether ``bound`` is met

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown status {self.status!r}")

    @property
    def passed(self) -> bool | None:
        if self.bound:
            return self.met
        if self.target is None or self.ratio is None:
            return None
        return self.ratio >= self.target


def add_ratios(rows: list[Row]) -> None:
    """Fill ``ratio`` of every timed row from its (shape, group) reference."""
    refs = {(r.shape, r.group): r for r in rows if r.ref and r.status == "ok" and r.seconds}
    for r in rows:
        ref = refs.get((r.shape, r.group))
        if r.seconds is None or ref is None or ref.seconds is None:
            r.ratio = None
        else:
            r.ratio = r.seconds / ref.seconds


GROUP_ORDER = (
    "detection",
    "patch resid_pre",
    "patch heads",
    "vectors",
    "forward",
    "transcoders",
    "steering",
)


def ordered(rows: list[Row]) -> list[Row]:
    """Rows by shape (first seen first), group (:data:`GROUP_ORDER`), reference first, then
    in the order they were measured."""
    shapes = list(dict.fromkeys(r.shape for r in rows))

    def key(ir: tuple[int, Row]) -> tuple[int, int, bool, int]:
        i, r = ir
        g = GROUP_ORDER.index(r.group) if r.group in GROUP_ORDER else len(GROUP_ORDER)
        return shapes.index(r.shape), g, not r.ref, i

    return [r for _, r in sorted(enumerate(rows), key=key)]


def _time(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def _num(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}"


def _gib(r: Row) -> str:
    if r.peak_bytes is None:
        return "—"
    extra = "" if r.extra_bytes is None else f" (+{r.extra_bytes / 2**30:.2f})"
    return f"{r.peak_bytes / 2**30:.2f}{extra}"


def _ratio(r: Row) -> str:
    if r.ref and r.status == "ok":
        return "1 (ref)"
    return "—" if r.ratio is None else f"{r.ratio:.3g}×"


def _target(r: Row) -> tuple[str, str]:
    if r.target is None and not r.bound:
        return "", ""
    verdict = {True: "PASS", False: "FAIL", None: "n/a"}[r.passed]
    return r.bound or f"≥ {r.target:.3g}×", verdict


HEADER = (
    "shape",
    "group",
    "row",
    "backend",
    "time / unit",
    "units/s",
    "tok/s",
    "peak GiB (+over resident)",
    "ratio",
    "target",
    "",
    "how / note",
)


def markdown(rows: list[Row]) -> str:
    """One markdown table of every row: absolute numbers, ratios, targets."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        per_s = None if not r.seconds else 1.0 / r.seconds
        tok_s = None if not (r.seconds and r.tokens_per_unit) else r.tokens_per_unit / r.seconds
        time = _time(r.seconds) if r.status in ("ok", "model") else f"*{r.status}*"
        target, verdict = _target(r)
        note = "; ".join(x for x in (r.how, r.note) if x).replace("|", "/")
        cells = (
            r.shape,
            r.group,
            f"**{r.name}**" if r.ref else r.name,
            r.backend,
            f"{time} / {r.unit}",
            _num(per_s),
            _num(tok_s),
            _gib(r),
            _ratio(r),
            target,
            verdict,
            note,
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_json(rows: list[Row], meta: dict[str, Any]) -> str:
    out = []
    for r in rows:
        d = asdict(r)
        d["passed"] = r.passed
        out.append(d)
    return json.dumps({"meta": meta, "rows": out}, indent=2, default=str)
