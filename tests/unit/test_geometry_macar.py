"""Macar et al.'s geometry: PC1 and mean-difference cosines on vectors with known answers,
the swap's decomposition, rate regressions, detection vs identification by layer, and a whole
small run on the built-in organism (its swap baseline reproduces the sweep's rates)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mechintro.analysis.directions.geometry import (
    detection_identification_by_layer,
    direction_cosines,
    pc1_direction,
    rate_regressions,
    swap_vectors,
    verbalizability,
)
from mechintro.experiments.geometry import GeometryConfig, run_geometry
from mechintro.presets import apply_preset

THETAS = [-0.3, -0.2, -0.1, 0.1, 0.2, 0.3]


def _arc() -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Unit vectors on an arc in the e1-e2 plane, symmetric about e1: PC1 is e2 exactly, and
    the detected (θ > 0) minus undetected mean is along e2."""
    vecs = {f"c{i}": torch.tensor([math.cos(t), math.sin(t), 0.0]) for i, t in enumerate(THETAS)}
    rates = {f"c{i}": float(t > 0) for i, t in enumerate(THETAS)}
    return vecs, rates


def test_pc1_and_mean_difference_cosines_known_answers() -> None:
    vecs, rates = _arc()
    pc1, share = pc1_direction(vecs, list(vecs), rates)
    torch.testing.assert_close(pc1, torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    assert 0.9 < share <= 1.0
    cos = direction_cosines(vecs, rates, refusal=torch.tensor([0.0, 0.0, 2.0]))
    assert cos.pc1_mean_diff == pytest.approx(1.0)
    assert cos.pc1_refusal == pytest.approx(0.0) and cos.mean_diff_refusal == pytest.approx(0.0)
    against = direction_cosines(vecs, rates, refusal=torch.tensor([0.0, -1.0, 0.0]))
    assert against.pc1_refusal == pytest.approx(-1.0)
    # PC1's sign follows the rates: reversing them flips it, and the mean difference with it
    flipped = {w: 1.0 - r for w, r in rates.items()}
    assert pc1_direction(vecs, list(vecs), flipped)[0][1] == pytest.approx(-1.0)
    assert direction_cosines(vecs, flipped).pc1_mean_diff == pytest.approx(1.0)
    assert set(cos.to_frame().b) == {"mean_diff", "refusal"}


def test_swap_vectors_decompose_and_recombine() -> None:
    w = torch.tensor([1.0, 0.0, 0.0])
    vecs = {
        "a": torch.tensor([3.0, 1.0, 0.0]),  # detected
        "b": torch.tensor([2.0, 0.0, 1.0]),  # detected
        "c": torch.tensor([0.0, 0.9, 0.1]),  # undetected, residual like a's
        "d": torch.tensor([1.0, 0.0, -1.0]),  # undetected
    }
    rates = {"a": 1.0, "b": 0.8, "c": 0.0, "d": 0.1}
    swaps = {(s.word, s.condition): s for s in swap_vectors(vecs, rates, 2 * w)}
    assert len(swaps) == 16
    torch.testing.assert_close(swaps[("a", "baseline")].vector, vecs["a"])
    # detected: mean projection 2.5; undetected: 0.5, so a's projection moves by -2
    torch.testing.assert_close(swaps[("a", "projection-swap")].vector, torch.tensor([1.0, 1, 0]))
    torch.testing.assert_close(
        swaps[("c", "projection-swap")].vector, torch.tensor([2.0, 0.9, 0.1])
    )
    near = swaps[("a", "residual-swap-nearest")]
    assert near.source == "c"
    torch.testing.assert_close(near.vector, torch.tensor([3.0, 0.9, 0.1]))
    rand = swaps[("b", "residual-swap-random")]
    assert rand.source in ("c", "d") and float(rand.vector[0]) == 2.0
    assert swaps[("d", "residual-swap-nearest")].group == "undetected"


def test_rate_regressions_find_a_planted_predictor_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    x = rng.normal(size=40)
    rates = {w: float(1 / (1 + np.exp(-2 * v))) for w, v in zip(words, x)}
    table = rate_regressions(
        rates,
        {"signal": dict(zip(words, x)), "noise": {w: rng.normal(size=5) for w in words}},
        outer=5,
        inner=3,
    )
    pooled = table[table.fold == "pooled"].set_index("predictor").r2
    assert pooled["signal"] > 0.8 and pooled["noise"] < 0.3
    per = table[table.predictor == "signal"]
    assert list(per.fold) == ["0", "1", "2", "3", "4", "mean", "pooled"]
    mean = per[per.fold == "mean"].r2.item()
    assert mean == pytest.approx(per[per.fold.isin(list("01234"))].r2.mean())


class _Tok:
    def __init__(self) -> None:
        self.ids = {"Cat": [5], " cat": [6], "Dog": [7, 8], " dog": [3], "Zebra": [1, 2]}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.ids.get(text, [0, 0])


def test_verbalizability_is_the_best_single_token_logit() -> None:
    W = torch.zeros(2, 10)
    W[0, 5], W[0, 6], W[1, 3] = 1.0, 3.0, 2.0
    vecs = {
        "Cat": torch.tensor([1.0, 0.0]),
        "Dog": torch.tensor([0.5, 1.0]),
        "Zebra": torch.ones(2),
    }
    verb = verbalizability(vecs, ["Cat", "Dog", "Zebra"], W, _Tok())
    assert verb == {"Cat": 3.0, "Dog": 2.0}  # Zebra has no single-token spelling


def test_detection_identification_by_layer() -> None:
    rows = []
    for layer, det, ident in ((1, 0.0, 0.25), (2, 0.5, 0.5), (3, 1.0, 0.75)):
        for i in range(4):
            rows.append((layer, True, False, "YES" if i < det * 4 else "NO", None))
            rows.append((layer, True, True, None, "YES" if i < ident * 4 else "NO"))
        rows.append((None, False, False, "YES", None))  # a control: not counted
    df = pd.DataFrame(rows, columns=["layer", "injected", "forced", "detection", "identification"])
    res = detection_identification_by_layer(df)
    assert res.table.layer.tolist() == [1, 2, 3]
    assert res.table.detection.tolist() == [0.0, 0.5, 1.0]
    assert res.table.forced_identification.tolist() == [0.25, 0.5, 0.75]
    assert res.correlation == pytest.approx(1.0)


def test_run_geometry_on_the_organism(tmp_path: Path) -> None:
    from mechintro.models import load_model
    from mechintro.organism.training import organism_world

    cfg = apply_preset(GeometryConfig, "macar-geometry")
    assert (cfg.layer, cfg.strength, cfg.seed) == (37, 4.0, 42)
    model = load_model("builtin:organism")
    words = ("horse", "whale", "apple", "lemon", "storm", "frost", "drill", "ladder")
    params = dict(
        concepts=words,
        baseline=tuple(organism_world().baseline),
        layer=4,
        layers=(2, 3, 4),
        strength=1.0,
        unit="resid-norm",
        transcoders="builtin",
    )
    table = run_geometry(model, params, tmp_path, small=True)
    assert set(table.analysis) == {"by_layer", "cosines", "swap", "regressions"}
    assert len(table[table.analysis == "by_layer"]) == 3
    summary = json.loads((tmp_path / "geometry.json").read_text())
    assert summary["layer"] == 4 and summary["threshold_used"] is not None
    # the swap's baseline vectors are the sweep's own: the same greedy trials, the same rates
    swap = pd.read_csv(tmp_path / "swap.csv")
    base = swap[swap.condition == "baseline"].set_index("concept").detection
    from mechintro.experiments.grades import graded_trials, load_grades
    from mechintro.experiments.sweeps import load_results

    sweep = tmp_path / "sweep"
    g = graded_trials(load_results(sweep), load_grades(sweep), "rule")
    g = g[(g.layer == 4) & ~g.forced & g.injected]
    rates = (g.detection == "YES").groupby(g.concept).mean()
    assert base.sort_index().tolist() == rates.sort_index().tolist()
    regs = pd.read_csv(tmp_path / "regressions.csv")
    assert {"vector", "projection", "transcoder_features"} <= set(regs.predictor)
