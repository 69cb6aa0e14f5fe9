"""The demo's headline numbers as committed expected values, and the README tables made from them.

``demo.json`` beside this file holds, for each headline metric of ``mechintro demo`` (both
organisms, the shipped LoRA adapter and bias vector before/after, the circuit), the value a run
with the default settings on the locked versions (``constraints.txt``) gave, the versions, and
the tolerance a new run is held to. ``tests/integration/test_golden.py`` reruns the demo and
compares; :func:`readme_tables` renders the README's tables from the same file, and a test
checks that the README shows exactly them.

After a change that moves a number on purpose: run the demo, then
``python tests/golden/golden.py DEMO_OUT/metrics.json`` (writes demo.json, prints the tables
to paste into the README), and say why in the commit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
GOLDEN = HERE / "demo.json"

#: dotted paths into metrics.json; "rate" values are proportions, held to an absolute tolerance
RATES = [
    f"{org}.{split}.{key}"
    for org, splits in (
        ("introspective", ("heldout", "train")),
        ("base", ("heldout",)),
    )
    for split in splits
    for key in ("tpr", "fpr", "introspection_rate", "control_flip_rate")
] + [
    "introspective.heldout.identification",
    "introspective.train.identification",
    *[
        f"training.{m}.heldout.{when}.{k}"
        for m in ("lora", "bias")
        for when in ("before", "after")
        for k in ("tpr", "fpr")
    ],
    "circuits.gate_ablation.relative_drop",
    "circuits.gate_ablation.control_unchanged",
    "circuits.gate_patching.relative_gain",
]
#: other values, held to a relative tolerance
VALUES = [
    "introspective.best_strength",
    "base.best_strength",
    "introspective.heldout.specificity",
    "introspective.train.specificity",
    "base.heldout.specificity",
    "circuits.graph.edge_verification_r",
    "transcoders.fvu.3",
    "transcoders.fvu.4",
    "transcoders.fvu.5",
]
SPLITS = (("introspective", "heldout"), ("introspective", "train"), ("base", "heldout"))
INTERVALS = [
    f"{org}.{split}.{key}_ci"
    for org, split in (
        ("introspective", "heldout"),
        ("introspective", "train"),
        ("base", "heldout"),
    )
    for key in ("tpr", "fpr", "identification", "specificity")
] + [f"training.{m}.heldout.after.fpr_ci" for m in ("lora", "bias")]
TOLERANCE = {
    "rate": 0.07,  # absolute: two of the 30 held-out trials
    "relative": 0.05,
    "absolute": 0.02,  # the floor for values near 0 (the base organism's Δb)
    "why": (
        "a CPU run on the locked versions repeats these exactly on one machine; the tolerance "
        "covers another CPU's float rounding flipping a sampled token or two"
    ),
}


def make(metrics: dict[str, Any]) -> dict[str, Any]:
    random = {
        f"introspective.random@{r['strength']:g}.{k}": r[k]
        for r in metrics["rates"]
        if r["organism"] == "introspective" and r["split"] == "random"
        for k in ("tpr", "fpr", "introspection_rate")
    }
    return {
        "versions": metrics["generation"]["versions"],
        "paths": metrics["generation"]["paths"],
        "tolerance": TOLERANCE,
        "rates": {**{p: get(metrics, p) for p in RATES}, **random},
        "values": {p: get(metrics, p) for p in VALUES},
        # shown in the README beside the values, from the same run (not compared)
        "intervals": {p: get(metrics, p) for p in INTERVALS},
    }


def get(metrics: dict[str, Any], path: str) -> Any:
    """The value at a dotted path; ``org.random@S.key``: the random vectors at strength S."""
    if "@" in path:
        head, _, rest = path.partition("@")
        org, split = head.split(".")
        strength, key = rest.rsplit(".", 1)
        rows = [
            r
            for r in metrics["rates"]
            if (r["organism"], r["split"], f"{r['strength']:g}") == (org, split, strength)
        ]
        return rows[0][key]
    value: Any = metrics
    for part in path.split("."):
        value = value[part]
    return value


def drift(golden: dict[str, Any], metrics: dict[str, Any]) -> list[str]:
    """Every headline value of ``metrics`` outside its tolerance of ``golden``."""
    tol = golden["tolerance"]
    out = []
    for path, want in golden["rates"].items():
        have = get(metrics, path)
        if (want is None) != (have is None) or (
            want is not None and abs(have - want) > tol["rate"]
        ):
            out.append(f"{path}: {have} (golden {want} ± {tol['rate']})")
    for path, want in golden["values"].items():
        have = get(metrics, path)
        if abs(have - want) > max(tol["relative"] * abs(want), tol["absolute"]):
            out.append(
                f"{path}: {have} (golden {want} ± {tol['relative']:.0%}, at least "
                f"{tol['absolute']})"
            )
    return out


TRAINED = (
    (
        "lora",
        "LoRA, Fonseca Rivera's recipe (r 32, α 64 on q/k/v/o, lr 2e-4, 3 epochs, last-token "
        "injection)",
    ),
    ("bias", "bias vector on block 5's MLP output (Macar et al.; one injected example in five)"),
)


def _f(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(ci: list[float | None], digits: int = 2) -> str:
    return "" if ci[0] is None else f" [{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def readme_tables(golden: dict[str, Any]) -> list[str]:
    """The README's two headline tables (organisms; trained introspection), from golden."""
    r, v, ci = golden["rates"], golden["values"], golden["intervals"]
    lines = [
        "| organism, concepts | strength | TPR | FPR (200 controls) | identification \\| claim "
        "| introspection | 1+1=3 flips | specificity Δb |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for org, split, label in (
        ("introspective", "heldout", "introspective, held-out"),
        ("introspective", "train", "introspective, train"),
        ("base", "heldout", "base, held-out"),
    ):
        p = f"{org}.{split}."
        ident = r.get(p + "identification")
        named = (
            _f(ident) + _ci(ci[p + "identification_ci"]) if ident is not None else "– (no claim)"
        )
        lines.append(
            f"| {label} | {v[org + '.best_strength']:g} "
            f"| {_f(r[p + 'tpr'])}{_ci(ci[p + 'tpr_ci'])} "
            f"| {_f(r[p + 'fpr'])}{_ci(ci[p + 'fpr_ci'], 3)} | {named} "
            f"| {_f(r[p + 'introspection_rate'])} | {_f(r[p + 'control_flip_rate'])} "
            f"| {_f(v[p + 'specificity'])}{_ci(ci[p + 'specificity_ci'])} |"
        )
    strengths = sorted({k.split("@")[1].rsplit(".", 1)[0] for k in r if "random@" in k}, key=float)

    def per(key: str) -> str:
        return " / ".join(_f(r[f"introspective.random@{s}.{key}"]) for s in strengths)

    lines.append(
        f"| introspective, random vectors | {' / '.join(strengths)} | {per('tpr')} "
        f"| {per('fpr')} | – | {per('introspection_rate')} | – | – |"
    )
    trained = [
        "| method | TPR before → after | FPR before → after (200 controls) |",
        "|---|---|---|",
    ]
    for m, label in TRAINED:
        p = f"training.{m}.heldout."
        trained.append(
            f"| {label} | {_f(r[p + 'before.tpr'], 3)} → {_f(r[p + 'after.tpr'], 3)} "
            f"| {_f(r[p + 'before.fpr'], 3)} → {_f(r[p + 'after.fpr'], 3)}"
            f"{_ci(ci[p + 'after.fpr_ci'], 3)} |"
        )
    return ["\n".join(lines) + "\n", "\n".join(trained) + "\n"]


def main(metrics_json: str) -> None:
    golden = make(json.loads(Path(metrics_json).read_text("utf-8")))
    GOLDEN.write_text(json.dumps(golden, indent=2) + "\n", "utf-8")
    print(f"wrote {GOLDEN}; the README's tables:\n")
    print("\n".join(readme_tables(golden)))


if __name__ == "__main__":
    main(sys.argv[1])
