"""Metrics: Wilson intervals, rates with errors left out, and specificity, against hand sums."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mechintro.experiments.grading import Grade
from mechintro.experiments.metrics import add_delta_b, label_of, rates, specificity, wilson

Z95 = 1.959963984540054  # the 0.975 normal quantile


def test_wilson_reference_values():
    lo, hi = wilson(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson(0, 200)
    assert lo == 0.0 and hi == pytest.approx(0.01884, abs=1e-5)
    # 5/10 by hand: centre 0.5; half-width 1.96*sqrt(0.025 + 1.96²/400)/(1 + 1.96²/10)
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.23659, abs=1e-5) and hi == pytest.approx(0.76341, abs=1e-5)
    assert wilson(10, 10)[1] == 1.0
    assert all(math.isnan(x) for x in wilson(0, 0))


def test_wilson_matches_the_formula_and_confidence_widens():
    k, n = 3, 17
    p, z = k / n, Z95
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert wilson(k, n) == pytest.approx((centre - half, centre + half), abs=1e-12)
    lo90, hi90 = wilson(k, n, confidence=0.90)
    lo99, hi99 = wilson(k, n, confidence=0.99)
    assert lo99 < centre - half < lo90 and hi90 < centre + half < hi99
    with pytest.raises(ValueError):
        wilson(5, 4)
    with pytest.raises(ValueError):
        wilson(1, 4, confidence=1.0)


def trials() -> pd.DataFrame:
    """Layer 1: 10 graded injected trials, 6 claims, 4 identified, plus errors; 5 controls."""
    rows = []
    for i in range(10):
        det = "YES" if i < 6 else "NO"
        ident = ("YES" if i < 4 else "NO") if det == "YES" else None
        rows.append(
            dict(
                injected=True,
                concept="Dust",
                layer=1,
                strength=4.0,
                detection=det,
                identification=ident,
            )
        )
    # a claim whose identification errored: in the TPR, not in the identification rates
    rows.append(
        dict(
            injected=True,
            concept="Dust",
            layer=1,
            strength=4.0,
            detection="YES",
            identification="ERROR",
        )
    )
    # a detection error: in no rate at all
    rows.append(
        dict(
            injected=True,
            concept="Dust",
            layer=1,
            strength=4.0,
            detection="ERROR",
            identification=None,
        )
    )
    for i in range(5):  # controls: no concept, no strength
        rows.append(
            dict(
                injected=False,
                concept=None,
                layer=1,
                strength=np.nan,
                detection="YES" if i == 0 else "NO",
                identification=None,
            )
        )
    rows.append(
        dict(
            injected=False,
            concept=None,
            layer=1,
            strength=np.nan,
            detection="ERROR",
            identification=None,
        )
    )
    for i in range(4):  # forced identification: 3 of 4 right, and one error
        rows.append(
            dict(
                injected=True,
                forced=True,
                concept="Dust",
                layer=1,
                strength=4.0,
                detection=None,
                identification="YES" if i < 3 else "NO",
            )
        )
    rows.append(
        dict(
            injected=True,
            forced=True,
            concept="Dust",
            layer=1,
            strength=4.0,
            detection=None,
            identification="ERROR",
        )
    )
    df = pd.DataFrame(rows)
    df["forced"] = df["forced"].fillna(False).astype(bool)
    return df


def test_rates_by_hand():
    (row,) = rates(trials(), by=["layer", "strength"]).to_dict("records")
    assert (row["layer"], row["strength"]) == (1, 4.0)
    # TPR: 7 claims of 11 graded (the detection error left out)
    assert (row["k_tpr"], row["n_tpr"], row["tpr"]) == (7, 11, pytest.approx(7 / 11))
    assert (row["tpr_lo"], row["tpr_hi"]) == pytest.approx(wilson(7, 11))
    # introspection: 4 of 10 (4 NO claims are 0, the errored identification is out)
    assert (row["k_introspection_rate"], row["n_introspection_rate"]) == (4, 10)
    assert row["introspection_rate"] == pytest.approx(0.4)
    assert (row["k_identification_given_claim"], row["n_identification_given_claim"]) == (4, 6)
    # FPR: 1 of 5 controls (the control error left out), matched on layer only
    assert (row["k_fpr"], row["n_fpr"], row["fpr"]) == (1, 5, pytest.approx(0.2))
    assert (row["fpr_lo"], row["fpr_hi"]) == pytest.approx(wilson(1, 5))
    assert (row["k_forced_identification_rate"], row["n_forced_identification_rate"]) == (3, 4)
    assert row["forced_identification_rate_hi"] == pytest.approx(wilson(3, 4)[1])
    # errors: detection, identification, control detection, forced identification
    assert row["n_errors"] == 4
    assert (row["n_injected"], row["n_forced"], row["n_control"]) == (12, 5, 6)


def test_errors_are_never_counted_as_no():
    df = trials()
    as_no = df.replace({"ERROR": "NO"})
    a = rates(df, by=["layer"]).iloc[0]
    b = rates(as_no, by=["layer"]).iloc[0]
    assert a["n_tpr"] == b["n_tpr"] - 1 and a["tpr"] > b["tpr"]
    assert b["n_errors"] == 0 and a["n_errors"] == 4


def test_controls_match_on_layer_or_pool():
    rows = []
    for layer, (claims, n) in {1: (1, 4), 2: (3, 4)}.items():
        for i in range(n):
            rows.append(
                dict(injected=False, layer=layer, concept=None, strength=0.0, detection=i < claims)
            )
        for concept in ("Dust", "Snow"):
            rows.append(
                dict(
                    injected=True,
                    layer=layer,
                    concept=concept,
                    strength=4.0,
                    detection=Grade("YES", "rule", "1", "detection"),
                )
            )
    df = pd.DataFrame(rows)
    per = rates(df, by=["layer", "concept", "strength"]).set_index(["layer", "concept"])
    assert len(per) == 4  # controls (concept None) make no group of their own
    assert per.loc[(1, "Dust"), "fpr"] == pytest.approx(1 / 4)
    assert per.loc[(2, "Snow"), "fpr"] == pytest.approx(3 / 4)
    assert per.loc[(2, "Snow"), "tpr"] == 1.0 and per.loc[(2, "Snow"), "n_tpr"] == 1
    pooled = rates(df, by=["layer", "concept"], control_by=[])
    assert (pooled["fpr"] == 4 / 8).all() and (pooled["n_fpr"] == 8).all()
    overall = rates(df).iloc[0]
    assert (overall["k_tpr"], overall["n_tpr"], overall["k_fpr"], overall["n_fpr"]) == (4, 4, 4, 8)
    # no identification column: those rates are NaN, not zero, and no error is counted
    assert math.isnan(overall["introspection_rate"]) and overall["n_errors"] == 0
    with pytest.raises(ValueError, match="subset"):
        rates(df, by=["layer"], control_by=["concept"])


def test_label_of():
    assert label_of("yes") == "YES" and label_of(" No ") == "NO" and label_of(np.bool_(True))
    assert label_of(float("nan")) is None and label_of(None) is None
    assert label_of(Grade("ERROR", "judge:x", "v1", "detection")) == "ERROR"
    with pytest.raises(ValueError):
        label_of("maybe")


def test_specificity_by_hand():
    rows = [("introspection", x) for x in (1.0, 2.0, 3.0)]
    rows += [("control", x) for x in (0.0, 0.0)] + [("1+1=3", x) for x in (1.0, 1.0)]
    df = pd.DataFrame(
        [dict(question=q, layer=5, strength=2.0, delta_b=x) for q, x in rows]
        + [
            dict(question="introspection", layer=5, strength=4.0, delta_b=7.0),
            dict(question="control", layer=5, strength=4.0, delta_b=3.0),
        ]
    )
    out = specificity(df).set_index("strength")
    # means 2 and 0.5; variances 1 and 1/3; se = sqrt(1/3 + (1/3)/4) = sqrt(5/12)
    r = out.loc[2.0]
    assert r["specificity"] == pytest.approx(1.5)
    assert r["se"] == pytest.approx(math.sqrt(5 / 12))
    assert r["specificity_lo"] == pytest.approx(1.5 - Z95 * math.sqrt(5 / 12))
    assert r["specificity_hi"] == pytest.approx(1.5 + Z95 * math.sqrt(5 / 12))
    assert (r["n_introspection"], r["n_control"]) == (3, 4)
    # one readout a side: a difference, no interval
    r = out.loc[4.0]
    assert r["specificity"] == pytest.approx(4.0) and math.isnan(r["specificity_lo"])
    per = specificity(df[df.strength == 2.0], per_control=True).set_index("control")
    assert per.loc["control", "specificity"] == pytest.approx(2.0)
    assert per.loc["1+1=3", "specificity"] == pytest.approx(1.0)


def test_add_delta_b():
    df = pd.DataFrame(
        dict(
            question=["introspection"] * 3 + ["control"] * 3,
            layer=[3] * 6,
            strength=[0.0, 2.0, 4.0] * 2,
            b=[-1.0, 0.5, 2.0, -3.0, -3.0, 1.0],
        )
    )
    out = add_delta_b(df)
    assert out["delta_b"].tolist() == [0.0, 1.5, 3.0, 0.0, 0.0, 4.0]
    spec = specificity(out).set_index("strength")["specificity"]
    assert spec.to_dict() == pytest.approx({0.0: 0.0, 2.0: 1.5, 4.0: -1.0})
    with pytest.raises(ValueError, match="no row at strength"):
        add_delta_b(df[df.strength != 0.0])
