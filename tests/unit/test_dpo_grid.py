"""Macar et al.'s DPO ablation grid: its 16 conditions, JSONL preference data checked line by
line, each condition's data, the margin objective, and a small grid on the organism that
leaves the weights as it found them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from mechintro.presets import MACAR_DPO_CONDITIONS, apply_preset
from mechintro.prompts import Prompt
from mechintro.training.preference import (
    CONDITIONS,
    DPOGridConfig,
    PreferencePair,
    condition_data,
    load_pairs,
    margin_loss,
    run_dpo_grid,
)


def _write(tmp_path: Path, lines: list[object]) -> Path:
    p = tmp_path / "prefs.jsonl"
    p.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return p


GOOD = {"prompt": "Is it?", "chosen": "No.", "rejected": "Yes."}


def test_sixteen_conditions_as_the_preset_names_them() -> None:
    assert tuple(CONDITIONS) == MACAR_DPO_CONDITIONS and len(CONDITIONS) == 16
    cfg = apply_preset(DPOGridConfig, "macar-dpo")
    assert (cfg.lora_r, cfg.lora_alpha, cfg.targets, cfg.beta) == (64, 128, ("all-linear",), 0.1)
    with pytest.raises(ValueError, match="unknown conditions"):
        DPOGridConfig(conditions=("dpo", "ipo"))


@pytest.mark.parametrize(
    ("line", "match"),
    [
        ("{not json", "line 2: not JSON"),
        (["a"], "line 2: expected an object"),
        ({"prompt": "p", "chosen": "c"}, r"line 2: missing key\(s\) \['rejected'\]"),
        ({**GOOD, "score": 3}, r"line 2: unknown key\(s\) \['score'\]"),
        ({**GOOD, "chosen": 3}, "line 2: 'chosen' must be a string"),
        ({**GOOD, "strength": "big"}, "line 2: 'strength' must be a number"),
        ({**GOOD, "rejected": "  "}, "line 2: 'rejected' is empty"),
    ],
)
def test_jsonl_errors_name_the_line(tmp_path: Path, line: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_pairs(_write(tmp_path, [GOOD, line]))


def test_jsonl_pairs(tmp_path: Path) -> None:
    pairs = load_pairs(_write(tmp_path, [GOOD, "", {**GOOD, "concept": "Dust", "strength": 2}]))
    assert len(pairs) == 2 and pairs[0].prompt == Prompt.chat("Is it?")
    assert (pairs[1].concept, pairs[1].strength, pairs[1].rejected) == ("Dust", 2.0, "Yes.")
    sft = load_pairs(_write(tmp_path, [{"prompt": "p", "chosen": "c"}]), rejected=False)
    assert sft[0].rejected is None


def test_condition_data() -> None:
    pairs = [PreferencePair(Prompt.chat(f"q{i}"), f"good{i}", f"bad{i}") for i in range(40)]
    assert condition_data("dpo", pairs) == pairs
    rev = condition_data("dpo-reversed", pairs)
    assert rev is not None and all(r.chosen == p.rejected and r.rejected == p.chosen
                                   for r, p in zip(rev, pairs))  # fmt: skip
    shuf = condition_data("dpo-shuffled", pairs, seed=1)
    assert shuf == condition_data("dpo-shuffled", pairs, seed=1)
    assert shuf is not None and 5 < sum(s.chosen.startswith("bad") for s in shuf) < 35
    rej = condition_data("sft-rejected", pairs)
    assert rej is not None and rej[0].chosen == "bad0" and rej[0].rejected is None
    assert condition_data("margin-kl-nli", pairs) is None
    assert condition_data("margin-kl-nli", pairs, domains={"nli": pairs[:2]}) == pairs[:2]
    assert condition_data("sft-external", pairs) is None
    assert condition_data("random-lora", pairs) == []


def test_margin_loss() -> None:
    # gaps of normalised log-probabilities: (-2/2 - -6/2) = 2 and (-4/2 - -2/1) = 0
    loss = margin_loss(
        torch.tensor([-2.0, -4.0]),
        torch.tensor([-6.0, -2.0]),
        torch.tensor([2.0, 2.0]),
        torch.tensor([2.0, 1.0]),
        margin=1.0,
    )
    assert float(loss) == pytest.approx((0.0 + 1.0) / 2)


def test_small_grid_on_the_organism_restores_the_weights(tmp_path: Path) -> None:
    from mechintro.models import load_model
    from mechintro.organism.training import organism_world
    from mechintro.training.common import hf_model_of

    model = load_model("builtin:organism")
    world = organism_world()
    before = {k: v.clone() for k, v in hf_model_of(model).state_dict().items()}
    cfg = {
        "conditions": ("dpo", "margin-kl", "random-lora", "sft-external"),
        "words": tuple(world.train[:4]),
        "eval_words": tuple(world.heldout[:2]),
        "baseline": tuple(world.baseline),
        "layer": 3,
        "eval_layer": 3,
        "lr": 1e-3,
        "batch_size": 4,
    }
    table = run_dpo_grid(model, cfg, tmp_path, small=True)
    assert list(table.condition) == ["baseline", "dpo", "margin-kl", "random-lora", "sft-external"]
    st = table.set_index("condition").status
    assert st["dpo"] == "ok" and st["sft-external"].startswith("skipped: give sft_data")
    assert table.set_index("condition").steps["dpo"] == 2
    after = hf_model_of(model).state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    # a rerun finds every condition done and changes nothing
    again = run_dpo_grid(model, cfg, tmp_path, small=True)
    pd.testing.assert_frame_equal(again, pd.read_csv(tmp_path / "dpo_grid.csv"))
    assert len(again) == len(table)
