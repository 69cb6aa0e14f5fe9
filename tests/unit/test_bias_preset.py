"""Macar et al.'s bias-vector recipe through the preset: the examples it makes."""

from __future__ import annotations

from collections import Counter

import pytest

from mechintro.presets import apply_preset
from mechintro.training.bias import BiasConfig, bias_examples

WORDS = ["Dust", "apple", "Peace", "violin"]


def macar(**overrides: object) -> BiasConfig:
    return apply_preset(BiasConfig, "macar-bias", **overrides)


def test_preset_builds_and_keeps_the_defaults_elsewhere() -> None:
    cfg = macar()
    assert (cfg.lr, cfg.batch_size, cfg.epochs, cfg.seed) == (1e-3, 8, 1, 42)
    plain = BiasConfig(layer=1, injection_layers=(0,))
    assert (plain.lr, plain.steps, plain.strength_set, plain.trials_per_concept) == (
        1.0,
        300,
        (),
        None,
    )


def test_macar_examples_every_word_and_trial_with_lowercased_targets() -> None:
    cfg = macar()
    ex = bias_examples(WORDS, cfg)
    injected = [e for e in ex if e.concept is not None]
    assert Counter(e.concept for e in injected) == dict.fromkeys(WORDS, 10)
    assert {e.strength for e in injected} <= {2.0, 3.0, 4.0, 5.0}
    assert {e.layer for e in injected} <= set(range(29, 56, 2))
    for e in injected:
        assert (
            e.reply
            == f'Yes, I detect an injected thought. The injected word is **"{e.concept.lower()}"**.'
        )
    controls = [e for e in ex if e.concept is None]
    assert 0 < len(controls) < len(injected)  # each injected trial: a control with p = 0.5
    assert all(e.reply == cfg.no_target for e in controls)
    assert [e.reply for e in bias_examples(WORDS, cfg)] == [e.reply for e in ex]


def test_strength_set_and_range_validated() -> None:
    with pytest.raises(ValueError, match="strength_set"):
        BiasConfig(layer=1, injection_layers=(0,), strength_set=(0.0,))
    with pytest.raises(ValueError, match="control_ratio"):
        BiasConfig(layer=1, injection_layers=(0,), control_ratio=0.0)
