"""Concept vectors on tiny random models: hand computations, padding, caching, controls."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from mechintro.models import load_model, resid_post
from mechintro.prompts import Prompt, encode
from mechintro.vectors import (
    ConceptVector,
    contrastive_vector,
    extract_vectors,
    random_vector,
    stack,
    word_list,
)

LAYER = 1
BASE = ["Desks", "Jackets", "Sand", "Intelligence", "Fog"]
# different lengths, so that batches of 4 are left-padded
WORDS = ["Dust", "Kaleidoscopes", "Sugar", "Amphitheaters", "Xylophones", "Milk", "Peace",
         "Constellations", "Bags", "Dirigibles"]  # fmt: skip


@pytest.fixture(scope="module")
def llama(tiny_dirs: dict[str, Path]):
    return load_model(tiny_dirs["llama"])


@contextmanager
def count_forwards(model) -> Iterator[list[int]]:
    """Counts every top-level forward of ``model`` (nn.Module pre-hook, either backend)."""
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


def _hand_act(model, text: str, *, raw: bool = False, layer: int = LAYER) -> torch.Tensor:
    """``hook_resid_post`` at the last token of one un-padded prompt, by hand.

    A chat template writes its own BOS; raw text gets the tokenizer's default specials.
    """
    ids = model.tokenizer(text, add_special_tokens=raw, return_tensors="pt").input_ids
    name = resid_post(layer)
    with torch.no_grad():
        _, cache = model.run_with_cache(ids, names_filter=lambda n: n == name)
    return cache[name][0, -1].float()


def _chat(model, word: str) -> str:
    msgs = [{"role": "user", "content": f"Tell me about {word}"}]
    return model.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def test_word_lists():
    counts = {"lindsey_concepts": 50, "lindsey_baseline": 100, "fonseca_train": 40}
    counts |= {"fonseca_heldout": 20, "fonseca_baseline": 32}
    for name, n in counts.items():
        assert len(word_list(name)) == n, name
    assert word_list("lindsey_baseline").count("Butterflies") == 2  # as in the paper
    assert word_list("lindsey_concepts")[:3] == ["Dust", "Satellites", "Trumpets"]
    assert not set(word_list("fonseca_train")) & set(word_list("fonseca_heldout"))
    with pytest.raises(ValueError, match="use one of fonseca_baseline, fonseca_heldout"):
        word_list("nope")


def test_lindsey_vector_matches_hand_computation(tiny_dir):
    model = load_model(tiny_dir)
    vec = extract_vectors(model, ["Dust"], layer=LAYER, baseline=BASE)["Dust"]
    text = _chat(model, "Dust")
    last = model.tokenizer(text, add_special_tokens=False).input_ids[-1]
    assert model.tokenizer.decode([last]) == "\n"  # the \n after the assistant/model header
    word = _hand_act(model, text)
    base = torch.stack([_hand_act(model, _chat(model, w)) for w in BASE])
    torch.testing.assert_close(vec.vector, word - base.mean(0), atol=1e-5, rtol=0)
    norms = torch.cat([word[None], base]).norm(dim=-1)
    assert vec.resid_norm == pytest.approx(float(norms.mean()), rel=1e-5)
    assert vec.method == "lindsey" and vec.baseline == tuple(BASE) and vec.layer == LAYER


@pytest.mark.parametrize("backend", ["bridge", "hooked"])
def test_last_layer_runs_the_whole_model(tiny_dirs, backend):
    model = load_model(tiny_dirs["llama"], backend=backend)
    last = model.cfg.n_layers - 1  # no stop_at_layer: the full forward
    vec = extract_vectors(model, ["Dust"], layer=last, baseline=BASE[:1])["Dust"]
    hand = _hand_act(model, _chat(model, "Dust"), layer=last)
    hand = hand - _hand_act(model, _chat(model, BASE[0]), layer=last)
    torch.testing.assert_close(vec.vector, hand, atol=1e-5, rtol=0)


def test_batched_extraction_equals_one_at_a_time(tiny_dir):
    model = load_model(tiny_dir)
    padded = encode(model.tokenizer, [Prompt.chat(f"Tell me about {w}") for w in WORDS[:4]])
    assert int(padded.n_pad.max()) > 0  # the batched run really is left-padded
    batched = extract_vectors(model, WORDS, layer=LAYER, baseline=BASE, batch_size=4)
    single = extract_vectors(model, WORDS, layer=LAYER, baseline=BASE, batch_size=1)
    for w in WORDS:
        torch.testing.assert_close(batched[w].vector, single[w].vector, atol=1e-5, rtol=0)
    assert batched[WORDS[0]].resid_norm == pytest.approx(single[WORDS[0]].resid_norm, rel=1e-5)


def test_cache_hit_is_bit_identical_and_runs_no_forward(llama, tmp_path):
    kw = dict(layer=LAYER, baseline=BASE, cache_dir=tmp_path)
    with count_forwards(llama) as calls:
        first = extract_vectors(llama, WORDS[:3], **kw)
    assert calls, "the first extraction must run the model"
    with count_forwards(llama) as calls:
        again = extract_vectors(llama, WORDS[:3], **kw)
    assert not calls, "a cache hit must not run the model"
    for w in WORDS[:3]:
        assert torch.equal(again[w].vector, first[w].vector)
        assert again[w].resid_norm == first[w].resid_norm
    with count_forwards(llama) as calls:  # one new word: only its prompt runs
        more = extract_vectors(llama, WORDS[:4], **kw)
    assert len(calls) == 1
    assert all(torch.equal(more[w].vector, first[w].vector) for w in WORDS[:3])
    assert len(list(tmp_path.glob("*.safetensors"))) == len(list(tmp_path.glob("*.json"))) == 1
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files
    side = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert side["spec"]["baseline"] == BASE and side["words"] == sorted(WORDS[:4])

    changes = [dict(baseline=BASE[:-1]), dict(layer=LAYER + 1), dict(method="fonseca")]
    for change in changes:
        with count_forwards(llama) as calls:
            other = extract_vectors(llama, WORDS[:3], **{**kw, **change})
        assert calls, f"{change} must miss the cache"
        assert not torch.equal(other[WORDS[0]].vector, first[WORDS[0]].vector), change


def test_changed_weights_miss_the_cache(tiny_dirs, tmp_path):
    model = load_model(tiny_dirs["llama"])
    first = extract_vectors(model, ["Dust"], layer=LAYER, baseline=BASE, cache_dir=tmp_path)
    with torch.no_grad():  # a "fine-tune" under the same name
        next(model.parameters()).add_(0.05)
    with count_forwards(model) as calls:
        tuned = extract_vectors(model, ["Dust"], layer=LAYER, baseline=BASE, cache_dir=tmp_path)
    assert calls, "changed weights must miss the cache"
    assert not torch.equal(tuned["Dust"].vector, first["Dust"].vector)
    assert tuned["Dust"].fingerprint != first["Dust"].fingerprint


def test_fonseca_is_unit_norm_and_provenance_is_consistent(llama):
    vecs = extract_vectors(llama, ["bomb", "love"], layer=LAYER, method="fonseca")
    v = vecs["bomb"]
    assert float(v.vector.norm()) == pytest.approx(1.0, abs=1e-5)
    assert v.norm == pytest.approx(1.0, abs=1e-5)
    assert v.baseline == tuple(word_list("fonseca_baseline"))
    assert v.template == "Human: Tell me about {w}.\n\nAssistant:" and v.prompt_format == "text"
    prov = json.loads(json.dumps(v.provenance()))
    for key in ("norm", "resid_norm", "norm_ratio", "layer", "method", "baseline", "fingerprint"):
        assert key in prov, key
    assert prov["layer"] == LAYER and prov["method"] == "fonseca" and prov["d_model"] == 64
    assert prov["norm_ratio"] == pytest.approx(prov["norm"] / prov["resid_norm"], rel=1e-12)
    assert prov["resid_norm"] > 0 and prov["baseline"] == word_list("fonseca_baseline")

    raw = extract_vectors(llama, ["Dust"], layer=LAYER)["Dust"]  # Lindsey: default baseline
    assert raw.baseline == tuple(word_list("lindsey_baseline"))
    assert raw.norm == pytest.approx(float(raw.vector.norm()))
    assert raw.norm_ratio == pytest.approx(raw.norm / raw.resid_norm)
    assert abs(raw.norm - 1.0) > 1e-3  # not normalised


def test_bridge_and_hooked_give_the_same_vector(tiny_dir):
    hooked = load_model(tiny_dir, backend="hooked")
    bridge = load_model(tiny_dir)
    for method in ("lindsey", "fonseca"):
        a = extract_vectors(bridge, WORDS[:4], layer=LAYER, baseline=BASE, method=method)
        b = extract_vectors(hooked, WORDS[:4], layer=LAYER, baseline=BASE, method=method)
        for w in WORDS[:4]:
            torch.testing.assert_close(a[w].vector, b[w].vector, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", ["bridge", "hooked"])
def test_forward_stops_after_the_layer(tiny_dirs, backend):
    model = load_model(tiny_dirs["llama"], backend=backend)
    fired: dict[int, int] = {LAYER: 0, LAYER + 1: 0}

    def counter(layer):
        def hook(x, hook):
            fired[layer] += 1

        return hook

    hooks = [(resid_post(i), counter(i)) for i in fired]
    with model.hooks(fwd_hooks=hooks):
        extract_vectors(model, WORDS[:3], layer=LAYER, baseline=BASE, batch_size=4)
    assert fired == {LAYER: 2, LAYER + 1: 0}  # 8 prompts in 2 batches; block 2 never ran


def test_contrastive_vector(llama):
    pos, neg = "HI! HOW ARE YOU?", "Hi! How are you?"
    v = contrastive_vector(llama, pos, neg, layer=LAYER)
    hand = _hand_act(llama, pos, raw=True) - _hand_act(llama, neg, raw=True)
    torch.testing.assert_close(v.vector, hand)
    assert v.method == "contrastive" and v.baseline == neg and v.layer == LAYER
    assert v.norm_ratio == pytest.approx(v.norm / v.resid_norm)
    with pytest.raises(ValueError, match="same string"):
        contrastive_vector(llama, pos, pos, layer=LAYER)


def test_random_vector_is_seeded_and_norm_matched(llama):
    like = extract_vectors(llama, ["Dust"], layer=LAYER, baseline=BASE)["Dust"]
    a, b = random_vector(like, seed=1), random_vector(like, seed=1)
    c = random_vector(like, seed=2)
    assert torch.equal(a.vector, b.vector) and not torch.allclose(a.vector, c.vector)
    assert a.norm == pytest.approx(like.norm, rel=1e-5)
    assert a.method == "random" and a.layer == LAYER and a.resid_norm == like.resid_norm
    assert a.norm_ratio == pytest.approx(like.norm_ratio, rel=1e-5)
    d = random_vector(64, norm=3.0, seed=1)
    assert d.vector.shape == (64,) and d.norm == pytest.approx(3.0, rel=1e-5)
    with pytest.raises(ValueError, match="needs norm="):
        random_vector(64, seed=1)


def test_stack(llama):
    vecs = extract_vectors(llama, WORDS[:3], layer=LAYER, baseline=BASE)
    rows = stack(vecs, [WORDS[2], WORDS[0]])
    assert rows.shape == (2, 64) and torch.equal(rows[0], vecs[WORDS[2]].vector)
    with pytest.raises(KeyError, match="extract them first"):
        stack(vecs, ["Unicorns"])
    other = ConceptVector("x", torch.ones(64), LAYER + 1, "random")
    with pytest.raises(ValueError, match="one Injection has one layer"):
        stack({**vecs, "x": other}, [WORDS[0], "x"])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(words=[]), ValueError, r"no words given: pass at least one"),
        (dict(words=["Dust", "Dust"]), ValueError, r"duplicate words \['Dust'\]: pass each"),
        (dict(words="Dust"), TypeError, r"not one string: pass \['Dust'\]"),
        (dict(layer=4), ValueError, r"out of range .* use 0\.\.3"),
        (dict(layer=0.5), TypeError, r"layer_at_depth"),
        (dict(method="mean"), ValueError, r"unknown method 'mean': use one of lindsey, fonseca"),
        (dict(baseline=[]), ValueError, r"baseline list is empty: pass baseline=None"),
        (dict(baseline=["Sand", ""]), ValueError, r"empty or non-string entries"),
        (dict(batch_size=0), ValueError, r"batch_size must be a positive int"),
    ],
)
def test_bad_input_is_refused(llama, kwargs, error, match):
    args = {"words": ["Dust"], "layer": LAYER, "baseline": BASE, **kwargs}
    with count_forwards(llama) as calls, pytest.raises(error, match=match):
        extract_vectors(llama, args.pop("words"), **args)
    assert not calls  # refused before any forward
