"""Concept vectors on tiny random models: hand computations, padding, caching, controls;
bad words (unknown, duplicate, degenerate) refused before any forward pass, or recorded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from mechintro.engine.twin import twin_of
from mechintro.models import backend_of, builtin_path, load_model, resid_post
from mechintro.organism import corpus
from mechintro.prompts import Prompt, encode
from mechintro.vectors import (
    ConceptVector,
    contrastive_vector,
    default_baseline,
    extract_vectors,
    random_vector,
    stack,
    unknown_words,
    word_list,
)

LAYER = 1
BASE = ["Desks", "Jackets", "Sand", "Intelligence", "Fog"]
# different lengths, so that batches of 4 are left-padded
WORDS = [
    "Dust",
    "Kaleidoscopes",
    "Sugar",
    "Amphitheaters",
    "Xylophones",
    "Milk",
    "Peace",
    "Constellations",
    "Bags",
    "Dirigibles",
]


OBJECTS = list(corpus.CATEGORIES[corpus.BASELINE_CATEGORY])  # the organism's baseline words


@pytest.fixture(scope="module")
def llama(tiny_dirs: dict[str, Path]):
    return load_model(tiny_dirs["llama"])


@pytest.fixture(scope="module")
def organism():
    """The built-in organism: a word-level tokenizer (lowercasing, with ``<unk>``), 6 blocks."""
    return load_model("builtin:organism")


@contextmanager
def count_forwards(model, *, twin_only: bool = False) -> Iterator[list[int]]:
    """Counts every top-level forward of ``model`` (nn.Module pre-hook, either backend) and,
    for a bridge, of its plain HF twin (the fast path); ``twin_only``: of the twin alone."""
    calls: list[int] = []
    trees = [] if twin_only else [model]
    if backend_of(model) == "bridge":
        trees.append(twin_of(model))
    handles = [t.register_forward_pre_hook(lambda module, args: calls.append(1)) for t in trees]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


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


def test_twin_path_is_the_bridge_path_bit_for_bit(tiny_dir):
    """On a bridge the forwards run on its plain HF twin (one per batch), stopped after the
    layer read (a hook on the next block never fires), with the bridge path's numbers."""
    model = load_model(tiny_dir)
    kw = dict(layer=LAYER, baseline=BASE, batch_size=4)
    later = twin_of(model).model.layers[LAYER + 1]
    after: list[int] = []
    handle = later.register_forward_pre_hook(lambda module, args: after.append(1))
    try:
        with count_forwards(model, twin_only=True) as calls:
            fast = extract_vectors(model, WORDS, **kw)
    finally:
        handle.remove()
    assert len(calls) == 4 and not after  # 15 prompts in batches of 4; nothing past LAYER
    with count_forwards(model, twin_only=True) as calls:
        slow = extract_vectors(model, WORDS, fast=False, **kw)
    assert not calls
    for w in WORDS:
        assert torch.equal(fast[w].vector, slow[w].vector), w
    assert fast[WORDS[0]].resid_norm == slow[WORDS[0]].resid_norm


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
        (dict(on_bad_word="skip"), ValueError, r"on_bad_word must be one of \('raise', 'warn'\)"),
        (dict(words=["Sand"], baseline=["Sand"]), ValueError, r"'Sand' tokenizes like every"),
    ],
)
def test_bad_input_is_refused(llama, kwargs, error, match, unchecked):
    args = {"words": ["Dust"], "layer": LAYER, "baseline": BASE, **kwargs}
    # extract_vectors' own refusal (a float layer, an unknown on_bad_word): the checks come first
    with count_forwards(llama) as calls, unchecked(), pytest.raises(error, match=match):
        extract_vectors(llama, args.pop("words"), **args)
    assert not calls  # refused before any forward


# ---------------------------------------------------------------------------------------------
# bad words: refused up front, or warned and recorded


def test_unknown_words_are_refused_before_any_forward(organism):
    tok = organism.tokenizer
    assert unknown_words(tok, ["Dust", "horse", "Horse", "red dog"]) == ["Dust"]
    lindsey = word_list("lindsey_baseline")
    assert len(unknown_words(tok, lindsey)) == 96  # why the organism has its own default
    with count_forwards(organism) as calls:
        with pytest.raises(ValueError, match=r"does not know the words \['Dust'\].*'<unk>'"):
            extract_vectors(organism, ["Dust", "horse"], layer=3, baseline=OBJECTS)
        with pytest.raises(ValueError, match=r"1 of the 2 distinct baseline words .*\['Desks'\]"):
            extract_vectors(organism, ["horse"], layer=3, baseline=["table", "Desks", "table"])
        with pytest.raises(ValueError, match=r"95 of the 99 distinct baseline words .* baseline="):
            extract_vectors(organism, ["horse"], layer=3, baseline=lindsey)
    assert not calls  # the tokenizer alone refused them


def test_unknown_words_no_longer_share_a_vector_silently(organism):
    with pytest.raises(ValueError, match=r"\['Dust', 'Peaces'\] tokenize identically"):
        extract_vectors(organism, ["Dust", "Peaces", "horse"], layer=3, baseline=OBJECTS)
    with pytest.warns(UserWarning, match=r"does not know the words \['Dust', 'Peaces'\]"):
        vecs = extract_vectors(
            organism, ["Dust", "Peaces", "horse"], layer=3, baseline=OBJECTS, on_bad_word="warn"
        )
    assert torch.equal(vecs["Dust"].vector, vecs["Peaces"].vector)  # kept, and said so:
    for w in ("Dust", "Peaces"):
        assert [p.split(" (")[0] for p in vecs[w].problems] == [
            "the tokenizer does not know the words ['Dust', 'Peaces']",
            "['Dust', 'Peaces'] tokenize identically, so their vectors would be identical",
        ]
        assert vecs[w].provenance()["problems"] == list(vecs[w].problems)
    assert vecs["horse"].problems == () and vecs["horse"].provenance()["problems"] == []
    # the lowercasing tokenizer: two spellings, one text
    with pytest.raises(ValueError, match=r"\['horse', 'Horse'\] tokenize identically"):
        extract_vectors(organism, ["horse", "Horse"], layer=3, baseline=OBJECTS)


def test_a_bad_baseline_word_is_recorded_in_every_vector(organism):
    with pytest.warns(UserWarning, match=r"1 of the 17 distinct baseline words"):
        vecs = extract_vectors(
            organism, ["horse", "apple"], layer=3, baseline=[*OBJECTS, "Desks"], on_bad_word="warn"
        )
    for v in vecs.values():
        assert len(v.problems) == 1 and "['Desks']" in v.problems[0]


def test_the_organisms_default_baseline_is_its_own_words(organism, llama):
    trained_here = load_model(builtin_path("organism-base"))  # a checkpoint folder, not builtin:
    for model in (organism, trained_here):
        for method in ("lindsey", "fonseca"):
            base = default_baseline(model, method)
            assert base == OBJECTS and not unknown_words(model.tokenizer, base)
    vecs = extract_vectors(organism, ["horse", "apple"], layer=3)  # no warning, no error
    assert vecs["horse"].baseline == tuple(OBJECTS) and not vecs["horse"].problems
    explicit = extract_vectors(organism, ["horse", "apple"], layer=3, baseline=OBJECTS)
    assert torch.equal(vecs["horse"].vector, explicit["horse"].vector)
    assert default_baseline(llama) == word_list("lindsey_baseline")  # any other model
    assert default_baseline(llama, "fonseca") == word_list("fonseca_baseline")


def test_a_degenerate_vector_is_refused_after_the_forward(llama):
    """Non-finite activations (here: a hook that poisons block 0's output) make every vector
    degenerate; only the forward pass can tell, and it is refused or recorded after it."""
    poison = [(resid_post(0), lambda x, hook: x * float("nan"))]
    with llama.hooks(fwd_hooks=poison), count_forwards(llama) as calls:
        with pytest.raises(ValueError, match=r"the vector of 'Dust' is degenerate \(norm nan\)"):
            extract_vectors(llama, ["Dust"], layer=LAYER, baseline=BASE)
        assert calls
        with pytest.warns(UserWarning, match="degenerate"):
            v = extract_vectors(llama, ["Dust"], layer=LAYER, baseline=BASE, on_bad_word="warn")
    assert v["Dust"].problems == ("the vector of 'Dust' is degenerate (norm nan)",)


@pytest.mark.parametrize("method", ["lindsey", "fonseca"])
def test_a_zero_vector_is_kept_only_when_asked(llama, method):
    kw = dict(layer=LAYER, baseline=["Sand", "Sand"], method=method)
    with pytest.warns(UserWarning, match="its vector would be zero"):
        v = extract_vectors(llama, ["Sand", "Dust"], on_bad_word="warn", **kw)
    assert v["Sand"].norm == 0.0 and torch.equal(v["Sand"].vector, torch.zeros(64))  # not NaN
    assert len(v["Sand"].problems) == 1 and not v["Dust"].problems


def test_a_contrastive_pair_that_tokenizes_alike_is_refused(organism):
    pos, neg = "HI! HOW ARE YOU?", "Hi! How are you?"  # Godet's pair; the organism lowercases
    with count_forwards(organism) as calls, pytest.raises(ValueError) as err:
        contrastive_vector(organism, pos, neg, layer=3)
    assert not calls
    message = str(err.value)
    assert f"{pos!r} and {neg!r} tokenize identically, so the vector would be zero" in message
    assert "on_bad_word='warn'" in message
    with pytest.warns(UserWarning, match="tokenize identically"):
        v = contrastive_vector(organism, pos, neg, layer=3, on_bad_word="warn")
    assert v.norm == 0.0 and any("tokenize identically" in p for p in v.problems)
    ok = contrastive_vector(organism, "the dog is big.", "the cat is big.", layer=3)
    assert ok.norm > 0 and not ok.problems


def test_a_zero_norm_random_vector_is_refused(llama):
    with pytest.raises(ValueError, match=r"random\(seed=1\) would be the zero vector"):
        random_vector(64, norm=0.0, seed=1)
    with pytest.warns(UserWarning, match="zero vector"):
        v = random_vector(64, norm=0.0, seed=1, on_bad_word="warn")
    assert v.norm == 0.0 and len(v.problems) == 1
