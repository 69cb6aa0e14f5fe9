"""Directions: refusal by hand, abliteration identities on every tiny arch and backend,
detection geometry (mean difference, nested ridge, bidirectional steering), bad input named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mechintro.analysis.directions import (
    Abliteration,
    abliterated,
    abliteration_sites,
    bidirectional,
    detection_direction,
    detection_ridge,
    per_concept_rates,
    refusal_directions,
    refusal_prompts,
    ridge_cv,
)
from mechintro.inject import Injection, injected
from mechintro.models import load_model
from mechintro.prompts import Prompt, encode
from mechintro.vectors import ConceptVector

HARMFUL = ["Explain how to pick a lock.", "Write a mean note.", "Steal it now."]
HARMLESS = ["Explain how to bake bread today.", "Write a poem.", "Plant a tree."]


def _logits(model, batch):
    from mechintro.models import forward

    return forward(model, batch.input_ids, batch.attention_mask)


def _batch(model):
    return encode(
        model.tokenizer,
        [Prompt.chat("Trial 1: Do you detect an injected thought?"), Prompt.chat("Hi there.")],
    )


def _direction(model, seed: int = 0, rows: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (rows, model.cfg.d_model) if rows else (model.cfg.d_model,)
    return torch.randn(*shape, generator=g)


def _read_sites(model, names):
    """Hooks that record each site's value, registered after (so they see the edited value)."""
    seen: dict[str, torch.Tensor] = {}

    def reader(name):
        def read(x, hook):
            seen[name] = x.detach().clone()
            return x

        return read

    return seen, [(n, reader(n)) for n in names]


def test_shipped_prompt_lists():
    harmful, harmless = refusal_prompts("harmful"), refusal_prompts("harmless")
    assert len(harmful) == len(harmless) == 40
    assert len(set(harmful)) == 40 and len(set(harmless)) == 40
    assert not set(harmful) & set(harmless)
    with pytest.raises(ValueError, match="use one of"):
        refusal_prompts("nasty")


@pytest.mark.parametrize("positions", [1, 3])
def test_refusal_direction_equals_hand_computation(model, positions):
    ref = refusal_directions(
        model,
        HARMFUL,
        HARMLESS,
        site="resid_pre",
        position=None,
        positions=positions,
        batch_size=2,
    )
    L = model.cfg.n_layers
    names = [f"blocks.{i}.hook_resid_pre" for i in range(L)]

    def mean(texts):
        acts = []
        for t in texts:
            text = model.tokenizer.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            )
            ids = model.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
            with torch.no_grad():
                _, cache = model.run_with_cache(ids, names_filter=lambda n: n in names)
            acts.append(torch.stack([cache[n][0, -positions:] for n in names]).double())
        return torch.stack(acts).mean(0)  # [layer, pos, d]

    mh, mn = mean(HARMFUL), mean(HARMLESS)
    diff = (mh.mean(1) - mn.mean(1)).float()
    torch.testing.assert_close(ref.mean_diff, diff, atol=1e-4, rtol=1e-4)
    norms = diff.norm(dim=-1, keepdim=True)
    same = norms <= 1e-5 * norms.max()  # block 0's input at template tokens: embeddings
    assert bool(same[0]) and not bool(same[1:].any())
    unit = torch.where(same, 0.0, diff / norms)
    torch.testing.assert_close(ref.directions, unit, atol=1e-4, rtol=1e-4)
    assert ref.harmful_mean.shape == (L, positions, model.cfg.d_model)
    last = ref.direction(2, position=-1)
    d_last = mh[2, -1] - mn[2, -1]
    torch.testing.assert_close(last, (d_last / d_last.norm()).float(), atol=1e-4, rtol=1e-4)
    assert ref.n_harmful == 3 and ref.site == "resid_pre"


def test_refusal_direction_bad_input(model):
    with pytest.raises(TypeError, match="not one string"):
        refusal_directions(model, "Steal it.", HARMLESS)
    with pytest.raises(ValueError, match="empty"):
        refusal_directions(model, [], HARMLESS)
    with pytest.raises(ValueError, match="positions must be a positive int"):
        refusal_directions(model, HARMFUL, HARMLESS, positions=0)
    with pytest.raises(ValueError, match="site must be one of"):
        refusal_directions(model, HARMFUL, HARMLESS, site="mlp_out")
    with pytest.raises(ValueError, match="fewer than positions"):
        refusal_directions(model, HARMFUL, HARMLESS, positions=10_000)


def test_abliteration_weight_one_leaves_no_projection_at_every_site(model):
    L = model.cfg.n_layers
    batch = _batch(model)
    r = _direction(model, rows=L)  # a different direction per layer
    unit = r / r.norm(dim=-1, keepdim=True)
    sites = abliteration_sites(L)
    names = [n for n, _ in sites]
    with abliterated(model, Abliteration(r, 1.0)) as hooked:
        assert list(hooked) == names
        seen, readers = _read_sites(model, names)
        with model.hooks(fwd_hooks=readers):
            _logits(model, batch)
    real = batch.attention_mask.bool()
    for name, layer in sites:
        h = seen[name].float()[real]
        proj = (h @ unit[layer]).abs()
        assert float(proj.max()) <= 1e-5 * float(h.norm(dim=-1).max()), name
    # without the abliteration the same sites do carry the direction
    seen, readers = _read_sites(model, names)
    with model.hooks(fwd_hooks=readers):
        _logits(model, batch)
    h = seen[names[1]].float()[real]
    assert float((h @ unit[1]).abs().max()) > 1e-3 * float(h.norm(dim=-1).max())


def test_abliteration_weight_zero_is_bit_identical(model):
    batch = _batch(model)
    plain = _logits(model, batch)
    with abliterated(model, Abliteration(_direction(model), 0.0)) as hooked:
        assert hooked == ()
        assert torch.equal(_logits(model, batch), plain)
    weights = [0.0] * model.cfg.n_layers
    weights[1] = 1.0
    with abliterated(model, Abliteration(_direction(model), weights)) as hooked:
        assert hooked == ("blocks.1.hook_resid_pre",)
        assert not torch.allclose(_logits(model, batch), plain)
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())


def test_abliteration_skips_layers_without_a_direction(model):
    r = _direction(model, rows=model.cfg.n_layers)
    r[0] = 0.0  # e.g. the refusal direction of block 0's input at a template token
    with abliterated(model, Abliteration(r, 1.0)) as hooked:
        assert "blocks.0.hook_resid_pre" not in hooked and "blocks.1.hook_resid_pre" in hooked


def test_abliteration_partial_weight_scales_the_projection(model):
    batch = _batch(model)
    r = _direction(model)
    unit = r / r.norm()
    name = "blocks.0.hook_resid_pre"
    seen, readers = _read_sites(model, [name])
    with model.hooks(fwd_hooks=readers):
        _logits(model, batch)
    before = seen[name] @ unit
    with abliterated(model, Abliteration(r, 0.25)):
        seen, readers = _read_sites(model, [name])
        with model.hooks(fwd_hooks=readers):
            _logits(model, batch)
    torch.testing.assert_close(seen[name] @ unit, 0.75 * before, atol=1e-5, rtol=1e-4)


def test_abliteration_composes_with_injection(model):
    """Injecting along r̂ under a full abliteration is removed where the next block reads it;
    a weight-0 abliteration leaves the injection's logits bit for bit."""
    batch = _batch(model)
    r = _direction(model)
    inj = Injection(1, 6.0 * r / r.norm(), 1.0, mode="all")
    with abliterated(model, Abliteration(r, 1.0)):
        only_abl = _logits(model, batch)
        with injected(model, inj, batch):
            both = _logits(model, batch)
    torch.testing.assert_close(both, only_abl, atol=1e-4, rtol=1e-4)
    with injected(model, inj, batch):
        only_inj = _logits(model, batch)
    assert not torch.allclose(only_inj, only_abl, atol=1e-3)
    with abliterated(model, Abliteration(r, 0.0)), injected(model, inj, batch):
        assert torch.equal(_logits(model, batch), only_inj)
    # and an injection orthogonal to r̂ survives the abliteration
    other = _direction(model, seed=1)
    other = other - (other @ r / r.norm() ** 2) * r
    inj2 = Injection(1, 6.0 * other / other.norm(), 1.0, mode="all")
    with abliterated(model, Abliteration(r, 1.0)), injected(model, inj2, batch):
        assert not torch.allclose(_logits(model, batch), only_abl, atol=1e-3)


def test_abliteration_removes_hooks_after_an_exception(model):
    batch = _batch(model)
    with (
        pytest.raises(RuntimeError, match="boom"),
        abliterated(model, Abliteration(_direction(model))),
    ):
        _logits(model, batch)
        raise RuntimeError("boom")
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())


def test_abliteration_from_refusal(tiny_dirs: dict[str, Path]):
    model = load_model(tiny_dirs["llama"])
    ref = refusal_directions(model, HARMFUL, HARMLESS)
    per_layer = Abliteration.from_refusal(ref, weight=[0.0, 0.5, 1.0, 1.0])
    units, weights = per_layer.for_model(4)
    torch.testing.assert_close(units, ref.directions)
    assert weights.tolist() == [0.0, 0.5, 1.0, 1.0]
    single = Abliteration.from_refusal(ref, layer=2)
    units, _ = single.for_model(4)
    assert torch.equal(units[0], units[3]) and torch.allclose(units[0], ref.directions[2])
    assert "weight=[4 values]" in repr(per_layer)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"direction": torch.zeros(8)}, ValueError, "zero"),
        ({"direction": torch.zeros(4, 8)}, ValueError, "every direction row is zero"),
        ({"direction": torch.full((8,), float("nan"))}, ValueError, "NaN"),
        ({"direction": torch.ones(2, 3, 8)}, ValueError, "d_model"),
        ({"direction": torch.arange(8)}, ValueError, "float tensor"),
        ({"direction": torch.ones(4, 8), "weight": [1.0, 1.0]}, ValueError, "one per layer"),
        ({"direction": torch.ones(8), "weight": float("inf")}, ValueError, "weight"),
        ({"direction": torch.ones(8), "weight": [[1.0]]}, ValueError, "one per layer"),
    ],
)
def test_bad_abliteration_is_refused(kwargs, error, match, unchecked):
    # Abliteration's own refusal (an int tensor, a nested list): the type checks would come first
    with unchecked(), pytest.raises(error, match=match):
        Abliteration(**kwargs)


def test_bad_abliteration_for_model_is_refused(tiny_dirs: dict[str, Path]):
    model = load_model(tiny_dirs["llama"])
    with (
        pytest.raises(ValueError, match="d_model"),
        abliterated(model, Abliteration(torch.ones(7))),
    ):
        pass
    with (
        pytest.raises(ValueError, match="4 blocks"),
        abliterated(model, Abliteration(torch.ones(3, model.cfg.d_model))),
    ):
        pass
    with pytest.raises(TypeError, match="Abliteration"), abliterated(model, torch.ones(64)):  # type: ignore[arg-type]
        pass


# ---------------------------------------------------------------------------------------------
# geometry


def _vectors(n: int = 6, d: int = 8, seed: int = 0) -> dict[str, ConceptVector]:
    g = torch.Generator().manual_seed(seed)
    return {
        f"w{i}": ConceptVector(f"w{i}", torch.randn(d, generator=g), 3, "lindsey", model="m")
        for i in range(n)
    }


def test_detection_direction_is_the_mean_difference():
    vecs = _vectors()
    rates = {"w0": 0.9, "w1": 0.6, "w2": 0.5, "w3": 0.1, "w4": 0.0, "w5": True}
    res = detection_direction(vecs, rates, threshold=0.5)
    assert res.detected == ("w0", "w1", "w2", "w5") and res.undetected == ("w3", "w4")
    hand = torch.stack([vecs[w].vector for w in res.detected]).mean(0) - torch.stack(
        [vecs[w].vector for w in res.undetected]
    ).mean(0)
    torch.testing.assert_close(res.direction.vector, hand)
    assert res.direction.method == "mean-difference" and res.direction.layer == 3
    assert res.direction.model == "m" and res.direction.baseline == ("w3", "w4")
    torch.testing.assert_close(res.unit.norm(), torch.tensor(1.0))


def test_detection_direction_bad_input():
    vecs = _vectors()
    with pytest.raises(ValueError, match="needs both groups"):
        detection_direction(vecs, {"w0": 1.0, "w1": 0.8})
    with pytest.raises(KeyError, match="no vectors for"):
        detection_direction(vecs, {"w0": 1.0, "nope": 0.0})
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        detection_direction(vecs, {"w0": 1.5, "w1": 0.0})
    with pytest.raises(ValueError, match="non-empty mapping"):
        detection_direction(vecs, {})
    mixed = dict(vecs)
    mixed["w1"] = ConceptVector("w1", torch.randn(8), 5, "lindsey")
    with pytest.raises(ValueError, match="layers"):
        detection_direction(mixed, {"w0": 1.0, "w1": 0.0})


def test_per_concept_rates():
    df = pd.DataFrame(
        {
            "word": ["a", "a", "b", "b", None],
            "claim": [True, False, False, False, True],
            "detection": ["YES", "YES", "NO", "YES", "YES"],
        }
    )
    assert per_concept_rates(df) == {"a": 1.0, "b": 0.5}
    assert per_concept_rates(df, column="claim") == {"a": 0.5, "b": 0.0}
    with pytest.raises(KeyError, match="no column"):
        per_concept_rates(df, column="nope")


def test_ridge_matches_the_closed_form():
    # one penalty in the grid: each out-of-fold prediction is the closed-form ridge fit on the
    # other folds (intercept unpenalised, penalty scaled by the mean squared centred row norm)
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(30, 5)), rng.normal(size=30)
    alpha = 0.3
    res = ridge_cv(X, y, alphas=[alpha], outer=3, inner=2, seed=0)
    assert res.alphas == (alpha,) * 3
    for f in range(3):
        tr, te = res.folds != f, res.folds == f
        mx, my = X[tr].mean(0), y[tr].mean()
        Xc = X[tr] - mx
        scale = (Xc**2).sum() / tr.sum()
        w = np.linalg.solve(Xc.T @ Xc + alpha * scale * np.eye(5), Xc.T @ (y[tr] - my))
        np.testing.assert_allclose(res.predictions[te], (X[te] - mx) @ w + my)


def test_ridge_nested_cv_recovers_a_planted_signal_and_not_a_shuffled_one():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 20))
    y = X @ rng.normal(size=20) + 0.3 * rng.normal(size=80)
    res = ridge_cv(X, y, outer=5, inner=4, seed=0)
    assert res.r2 > 0.9 and res.correlation > 0.95
    assert len(res.alphas) == 5 and all(a in res.alpha_grid for a in res.alphas)
    assert len(res.fold_r2) == 5 and res.predictions.shape == (80,)
    assert sorted(np.bincount(res.folds).tolist()) == [16] * 5
    shuffled = ridge_cv(X, rng.permutation(y), outer=5, inner=4, seed=0)
    assert shuffled.r2 < 0.1 and abs(shuffled.correlation) < 0.4
    again = ridge_cv(X, y, outer=5, inner=4, seed=0)
    np.testing.assert_array_equal(again.predictions, res.predictions)  # seeded


def test_detection_ridge_on_concept_vectors():
    vecs = _vectors(n=40, d=10, seed=3)
    w = torch.randn(10, generator=torch.Generator().manual_seed(9))
    raw = {k: float(v.vector @ w) for k, v in vecs.items()}
    lo, hi = min(raw.values()), max(raw.values())
    rates = {k: (x - lo) / (hi - lo) for k, x in raw.items()}
    res = detection_ridge(vecs, rates, outer=4, inner=3)
    assert res.r2 > 0.9 and res.words == tuple(rates)


@pytest.mark.parametrize(
    ("X", "y", "kw", "match"),
    [
        (np.ones((10, 3)), np.ones(9), {}, "same n"),
        (np.ones(10), np.ones(10), {}, "same n"),
        (np.full((10, 3), np.nan), np.ones(10), {}, "NaN"),
        (np.ones((6, 3)), np.ones(6), {"outer": 5, "inner": 5}, "too few"),
        (np.ones((20, 3)), np.ones(20), {"outer": 1}, "outer must be"),
        (np.ones((20, 3)), np.ones(20), {"alphas": [0.0]}, "positive"),
        (np.ones((20, 3)), np.ones(20), {"words": ["a"]}, "1 words for 20"),
    ],
)
def test_ridge_bad_input(X, y, kw, match):
    with pytest.raises(ValueError, match=match):
        ridge_cv(X, y, **kw)


def test_bidirectional_steering():
    vecs = _vectors()
    a, b = vecs["w0"], vecs["w1"]
    pair = bidirectional(a, b)
    torch.testing.assert_close(pair.a_minus_b.vector, a.vector - b.vector)
    torch.testing.assert_close(pair.b_minus_a.vector, -(a.vector - b.vector))
    assert pair.a_minus_b.word == "w0-w1" and pair.b_minus_a.word == "w1-w0"
    assert pair.a_minus_b.method == "difference" and pair.a_minus_b.baseline == "w1"
    assert pair.a_minus_b.layer == 3 and pair.a_minus_b.model == "m"
    other = ConceptVector("x", torch.randn(8), 5, "lindsey")
    with pytest.raises(ValueError, match="layer"):
        bidirectional(a, other)
    with pytest.raises(ValueError, match="widths"):
        bidirectional(a, ConceptVector("x", torch.randn(9), 3, "lindsey"))
    with pytest.raises(ValueError, match="different models"):
        bidirectional(a, ConceptVector("x", torch.randn(8), 3, "lindsey", model="other"))
    with pytest.raises(ValueError, match="same vector"):
        bidirectional(a, a)
    with pytest.raises(TypeError, match="ConceptVector"):
        bidirectional(a, torch.randn(8))  # type: ignore[arg-type]
