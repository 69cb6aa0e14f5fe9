"""Named presets: the studies' numbers as cited, and apply_preset's checks."""

from __future__ import annotations

import dataclasses
import importlib
import itertools

import pytest

from mechintro.presets import CONFIG_CLASSES, KINDS, PRESETS, apply_preset, get_preset
from mechintro.training.lora import LoRAConfig


def test_required_presets_exist_and_cite_a_source() -> None:
    for name in (
        "macar-bias",
        "macar-abliteration",
        "macar-dpo",
        "fonseca-lora",
        "godet-noise",
        "lindsey-detection",
        "macar-detection",
    ):
        p = get_preset(name)
        assert p.kind in KINDS
        assert "docs/protocols.md §" in p.source


def test_unknown_preset_lists_the_names() -> None:
    with pytest.raises(KeyError, match="macar-bias"):
        get_preset("macar-bais")


def test_macar_numbers_as_in_the_released_code() -> None:
    bias = get_preset("macar-bias").fields
    assert bias["lr"] == 1e-3 and bias["batch_size"] == 8 and bias["epochs"] == 1
    assert bias["strength_set"] == (2.0, 3.0, 4.0, 5.0)
    assert bias["injection_layers"] == (29, 31, 33, 35, 37, 39, 41, 43, 45, 47, 49, 51, 53, 55)
    assert bias["seed"] == 42 and bias["eval_layer"] == 37
    assert bias["eval_temperature"] == 0.7 and bias["eval_max_new_tokens"] == 100
    abl = get_preset("macar-abliteration").fields
    assert (abl["site"], abl["position"], abl["n_harmful"], abl["n_harmless"]) == (
        "resid_post",
        -2,
        512,
        512,
    )
    ws = [w for _, _, w in abl["weights"]]
    assert len(ws) == 20 and min(ws) < 1e-4 and 0.11 < max(ws) < 0.12
    # the 20 regions tile the 62 blocks of Gemma3-27B, and so do the 14 searched ones
    for regions in (abl["weights"], abl["regions"]):
        assert regions[0][0] == 0 and regions[-1][1] == 61
        assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(regions))
    dpo = get_preset("macar-dpo").fields
    assert len(dpo["conditions"]) == 16 and len(set(dpo["conditions"])) == 16
    assert (dpo["lora_r"], dpo["lora_alpha"], dpo["target_modules"]) == (64, 128, "all-linear")


def test_fonseca_and_godet_numbers() -> None:
    lora = get_preset("fonseca-lora").fields
    assert (lora["r"], lora["alpha"], lora["dropout"], lora["lr"]) == (32, 64, 0.1, 2e-4)
    assert lora["strengths"] == (40.0, 60.0, 80.0, 100.0)
    noise = get_preset("godet-noise").fields
    assert noise["strengths"] == tuple(float(s) for s in range(11))
    assert noise["depths"] == (0.45, 0.6)


def test_apply_preset_then_overrides() -> None:
    cfg = apply_preset(LoRAConfig, "fonseca-lora", optimizer="adamw", epochs=1)
    assert (cfg.r, cfg.alpha, cfg.optimizer, cfg.epochs) == (32, 64, "adamw", 1)


def test_apply_preset_refuses_unknown_fields_and_wrong_kinds() -> None:
    with pytest.raises(TypeError, match="no field"):
        apply_preset(LoRAConfig, "fonseca-lora", rank=3)
    with pytest.raises(TypeError, match="configures 'bias'"):
        apply_preset(LoRAConfig, "macar-bias")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_names_fields_of_its_config_class(name: str) -> None:
    p = PRESETS[name]
    module, cls_name = CONFIG_CLASSES[p.kind].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    names = {f.name for f in dataclasses.fields(cls)}
    assert set(p.fields) <= names, sorted(set(p.fields) - names)
