"""The controls of builtin:smollm2-introspective (docs/organism.md §8): Godet's noise
controls, norm-matched random vectors and forced identification, before and after the
shipped adapter. A small seeded run checks the structure, two identities and its numbers on
the locked versions; the shipped controls.json is checked against the shipped adapter."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict

import pandas as pd
import pytest

from mechintro.organism.smollm2 import SHIPPED
from mechintro.organism.smollm2_controls import (
    CONTROLS,
    ControlsConfig,
    controls_section,
    controls_table,
    measure_controls,
)

#: the small seeded run: 2 grid layers, 1 strength, 3 held-out concepts (2 in the noise
#: readouts), 3 battery questions, 3 random vectors, 4 controls
SMALL = ControlsConfig(
    layers=(18, 20),
    strengths=(1.5,),
    concepts=3,
    noise_concepts=2,
    battery=3,
    n_controls=4,
)
#: its numbers on the locked versions (uv.lock), one CPU thread: claims (k of n) of the
#: concepts, random vectors and controls, forced identifications (the organism's single-token
#: injection and Lindsey's from-trial one), and the specificity vs 1+1=3 at block 20 (2
#: decimals)
GOLDEN = {
    "before": {
        "concept": 2,
        "random": 1,
        "control": 1,
        "forced": 0,
        "forced_from_trial": 0,
        "specificity": -2.0,
    },
    "after": {
        "concept": 3,
        "random": 3,
        "control": 0,
        "forced": 0,
        "forced_from_trial": 0,
        "specificity": -0.57,
    },
}


@pytest.fixture(scope="module")
def small() -> dict:
    return measure_controls(cfg=SMALL)


def test_the_config_refuses_what_cannot_be_measured() -> None:
    with pytest.raises(ValueError, match="two"):
        ControlsConfig(noise_concepts=1)
    with pytest.raises(ValueError, match="<= concepts"):
        ControlsConfig(concepts=3, noise_concepts=4)
    with pytest.raises(ValueError, match="> 0"):
        ControlsConfig(strengths=(0.0, 1.0))
    with pytest.raises(FileNotFoundError, match="--adapter"):
        measure_controls("no/such/adapter.safetensors")


@pytest.mark.slow
def test_a_small_run_has_every_part_and_its_identities(small: dict) -> None:
    json.dumps(small)  # plain JSON
    assert small["layer"] == 20 and small["mode"] == "single-token"
    assert small["strengths"] == [1.5] and small["n_adapted_modules"] == 36
    # every random vector is norm-matched to the concept vectors (all at the resid norm)
    assert small["random_vectors"]["norm"] == small["resid_norm"]["20"]
    assert small["random_vectors"]["max_relative_norm_error"] < 1e-6
    assert len(small["random_vectors"]["names"]) == 3
    for side in ("before", "after"):
        m = small[side]
        # Δb is b(s) − b(0) of the same question, layer and vector: 0 at strength 0
        assert m["noise"]["delta_b_at_zero_max_abs"] == 0.0
        grid = pd.DataFrame(m["noise"]["one_plus_one"])
        assert sorted(zip(grid.layer, grid.strength)) == [
            (L, s) for L in (18, 20) for s in (0, 1.5)
        ]
        assert (grid.n_introspection == 2).all() and (grid.n_control == 2).all()
        bat = pd.DataFrame(m["noise"]["battery"])
        assert list(bat.layer) == [20, 20] and (bat.n_control == 2 * 3).all()
        for row in (*grid.itertuples(), *bat.itertuples()):
            assert math.isclose(row.specificity, row.mean_introspection - row.mean_control)
            assert row.specificity_lo <= row.specificity <= row.specificity_hi
        det = m["detection"]
        assert det["concept"]["claim_rate"]["n"] == 3 and det["random"]["claim_rate"]["n"] == 3
        assert det["fpr"]["n"] == 4
        forced = m["forced_identification"]
        assert set(forced) == {"single-token", "from-trial"}
        assert all(f["rate"]["n"] == 3 for f in forced.values())
    table = controls_table(small)
    assert list(table.model) == ["before", "after"]
    section = controls_section(small)
    assert len(section.items) == 4 and isinstance(section.items[-1], pd.DataFrame)


@pytest.mark.slow
def test_a_small_seeded_run_gives_its_numbers(small: dict) -> None:
    got = {}
    for side in ("before", "after"):
        m = small[side]
        spec = next(r for r in m["noise"]["one_plus_one"] if r["layer"] == 20 and r["strength"])
        got[side] = {
            "concept": m["detection"]["concept"]["claim_rate"]["k"],
            "random": m["detection"]["random"]["claim_rate"]["k"],
            "control": m["detection"]["fpr"]["k"],
            "forced": m["forced_identification"]["single-token"]["rate"]["k"],
            "forced_from_trial": m["forced_identification"]["from-trial"]["rate"]["k"],
            "specificity": round(spec["specificity"], 2),
        }
    assert got == GOLDEN, json.dumps(got)


def test_the_shipped_controls_are_those_of_the_shipped_adapter() -> None:
    shipped = json.loads((SHIPPED / CONTROLS).read_text("utf-8"))
    adapter = (SHIPPED / "adapter.safetensors").read_bytes()
    assert shipped["adapter_sha256"] == hashlib.sha256(adapter).hexdigest(), (
        "the adapter changed: rerun python -m mechintro.organism.smollm2_controls --out "
        "mechintro/organism/trained/smollm2-introspective"
    )
    # the command's defaults, on one thread
    assert shipped["config"] == json.loads(json.dumps(asdict(ControlsConfig())))
    assert shipped["threads"] == 1 and shipped["adapter"] == "shipped"
    section = controls_section(shipped)
    assert section.items[0].startswith("SmolLM2-135M-Instruct")
    assert len(controls_table(shipped)) == 2 * len(shipped["strengths"])
