"""Lindsey's prefill intention with its unrelated-concept control, and intentional control
measured on the sentence the model writes (docs/protocols.md §6)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from tiny_models import vec

import mechintro.generation
from mechintro.experiments.protocols.control import (
    control_prompt,
    control_summary,
    intentional_control,
    sentence_tokens,
)
from mechintro.experiments.protocols.intention import (
    CONDITIONS,
    classify_reply,
    intention_prompt,
    intention_rates,
    run_intention,
    unrelated_words,
)
from mechintro.generation import generate
from mechintro.inject import Injection
from mechintro.models import resid_post
from mechintro.prompts import encode
from mechintro.vectors import ConceptVector

LAYER = 1
SENTENCES = ("The painting hung crookedly on the wall.", "Rain fell.")


# ---------------------------------------------------------------------------------------------
# prefill intention: the unrelated-concept control


@pytest.fixture(scope="module")
def vectors(llama):
    """Three words whose vectors differ in direction and norm."""
    return {
        w: ConceptVector(w, (i + 1) * vec(llama, i), LAYER, "test")
        for i, w in enumerate(("bread", "fish", "Dust"))
    }


def test_unrelated_words_are_seeded_never_the_word_and_independent_of_the_others():
    pool = ["bread", "Bread", "fish", "Dust", "moon"]
    one = unrelated_words(["bread"], pool, seed=3)
    both = unrelated_words(["bread", "fish"], pool, seed=3)
    assert one["bread"] == both["bread"]  # a word's pick does not depend on the others listed
    assert both == unrelated_words(["fish", "bread"], pool, seed=3)
    for w, other in both.items():
        assert other in pool and other.casefold() != w.casefold()
    picks = {unrelated_words(["bread"], pool, seed=s)["bread"] for s in range(20)}
    assert len(picks) > 1 and picks <= {"fish", "Dust", "moon"}  # the seed chooses
    with pytest.raises(ValueError, match="unrelated=False"):
        unrelated_words(["bread"], ["bread", "BREAD"])


def test_run_intention_unrelated_control_injects_another_words_vector_at_the_own_norm(
    llama, vectors
):
    kwargs = dict(layer=LAYER, strengths=(0.0, 6.0), sentences=SENTENCES, max_new_tokens=4)
    words = ["bread", "fish"]
    df = run_intention(llama, vectors, words=words, seed=5, batch_size=5, **kwargs)
    plain = run_intention(llama, vectors, words=words, seed=5, unrelated=False, **kwargs)
    n = len(words) * len(SENTENCES)
    assert len(df) == 3 * n and len(plain) == 2 * n
    assert df.groupby("condition").size().to_dict() == dict.fromkeys(CONDITIONS, n)
    # the first two conditions: the rows and seeds of a run without the control
    cols = ["word", "sentence", "strength", "condition", "reply", "seed", "injected_word"]
    pd.testing.assert_frame_equal(df[cols].head(2 * n), plain[cols])
    assert (plain["condition"] == plain["strength"].map({0.0: "uninjected", 6.0: "word"})).all()
    assert plain["injected_word"].where(plain["injected"], "-").tolist() == [
        w if k else "-" for w, k in zip(plain["word"], plain["strength"])
    ]
    picks = unrelated_words(words, list(vectors), seed=5)
    control = df[df["condition"] == "unrelated"]
    assert (control["strength"] == 6.0).all() and control["injected"].all()
    for r in control.itertuples():
        assert r.injected_word == picks[r.word] != r.word
        own, other = vectors[r.word].vector, vectors[r.injected_word].vector
        added = other * (own.norm() / other.norm())  # norm-matched: only the direction differs
        assert r.injected_norm == pytest.approx(float(own.norm()), rel=1e-5)
        batch = encode(llama.tokenizer, [intention_prompt(r.sentence, r.word)])
        inj = Injection(LAYER, added, r.strength, mode="span", start="context")
        assert r.reply == generate(llama, batch, injection=inj, max_new_tokens=4).replies[0]
        assert r.label == classify_reply(r.reply_cut)
    for r in df[df["condition"] == "word"].itertuples():
        assert r.injected_norm == pytest.approx(float(vectors[r.word].vector.norm()), rel=1e-5)
    # named pairs, and the errors that name the fix
    named = run_intention(
        llama, vectors, words=["bread"], unrelated={"bread": "Dust"}, **kwargs
    ).query("condition == 'unrelated'")
    assert set(named["injected_word"]) == {"Dust"}
    with pytest.raises(ValueError, match="unrelated=False"):
        run_intention(llama, {"bread": vectors["bread"]}, **kwargs)
    with pytest.raises(ValueError, match="themselves"):
        run_intention(llama, vectors, words=["bread"], unrelated={"bread": "bread"}, **kwargs)
    with pytest.raises(KeyError, match="no vectors for the unrelated"):
        run_intention(llama, vectors, words=["bread"], unrelated={"bread": "moon"}, **kwargs)
    with pytest.raises(KeyError, match="every word"):
        run_intention(llama, vectors, words=words, unrelated={"bread": "Dust"}, **kwargs)


def test_intention_rates_by_condition_keep_missing_keys():
    df = pd.DataFrame(
        {
            "condition": ["uninjected"] * 2 + ["word"] * 2 + ["unrelated"] * 2,
            "strength": [0.0, 0.0, 4.0, 4.0, 4.0, 4.0],
            "layer": [None, None, 1, 1, 1, 1],
            "label": ["apology", "apology", "accept", "unclear", "apology", "accept"],
        }
    )
    df["apology"] = df.label == "apology"
    df["accept"] = df.label == "accept"
    out = intention_rates(df).set_index(["condition", "strength"])  # the default keys
    assert out.loc[("uninjected", 0.0), "apology_rate"] == 1.0
    assert out.loc[("word", 4.0), "accept_rate"] == 0.5
    assert out.loc[("unrelated", 4.0), "apology_rate"] == 0.5
    by_layer = intention_rates(df, by=["condition", "layer"])
    assert len(by_layer) == 3 and by_layer["n"].sum() == 6  # the layerless rows are kept
    assert by_layer.loc[by_layer.condition == "uninjected", "layer"].isna().all()


# ---------------------------------------------------------------------------------------------
# intentional control on the generated sentence


def test_sentence_tokens_finds_the_sentence_in_a_reply(toks):
    tok = toks["llama"]  # byte-level: one token per character
    ids = tok('Sure! Here it is: "Rain fell."', add_special_tokens=False)["input_ids"]
    idx, found = sentence_tokens(tok, ids, "Rain fell.")
    assert found and tok.decode([ids[k] for k in idx]) == "Rain fell."
    assert idx == list(range(idx[0], idx[0] + len("Rain fell.")))
    no_stop = tok("Rain fell and", add_special_tokens=False)["input_ids"]
    idx, found = sentence_tokens(tok, no_stop, "Rain fell.")  # the final stop dropped
    assert found and tok.decode([no_stop[k] for k in idx]) == "Rain fell"
    other = tok("Snow.", add_special_tokens=False)["input_ids"]
    assert sentence_tokens(tok, other, "Rain fell.") == (list(range(len(other))), False)
    assert sentence_tokens(tok, [], "Rain fell.") == ([], False)


def _control_vectors(model, layers=(1, 3), words=("Aquariums",)):
    return {
        L: {w: ConceptVector(w, vec(model, 10 * L + i), L, "test") for i, w in enumerate(words)}
        for L in layers
    }


def test_generated_measure_reads_the_models_own_reply(llama):
    vectors = _control_vectors(llama)
    conditions = ("think", "baseline")
    df = intentional_control(
        llama, vectors, sentences=SENTENCES, conditions=conditions, max_new_tokens=6, batch_size=3
    )
    assert len(df) == len(conditions) * len(SENTENCES) * 2
    assert set(df["measure"]) == {"generated"}
    tok = llama.tokenizer
    for r in df.itertuples():
        batch = encode(tok, [control_prompt(r.condition, r.word, r.sentence, prefilled=False)])
        assert "sentence" not in batch.spans  # no reply given: the model writes it
        gen = generate(llama, batch, max_new_tokens=6)  # greedy, alone
        new = gen.tokens[0]
        assert r.reply == tok.decode(new)
        idx, found = sentence_tokens(tok, new, r.sentence)
        assert r.sentence_found == found and r.n_tokens == len(idx)
        ids = torch.cat([batch.input_ids, torch.tensor([new], dtype=torch.long)], 1)
        _, cache = llama.run_with_cache(ids)
        h = cache[resid_post(r.layer)][0, [batch.length + k for k in idx]].float()
        v = vectors[r.layer][r.word].vector
        want = float((h @ v).mean() / v.norm()) if idx else math.nan
        assert r.projection == pytest.approx(want, abs=1e-4, nan_ok=True)
    summary = control_summary(df)
    assert set(summary["measure"]) == {"generated"} and summary["n"].sum() == len(df)


def test_generated_measure_equals_prefilled_when_the_model_writes_the_sentence(
    llama, monkeypatch, unchecked
):
    """A model that writes exactly the sentence: the generated measure reads the very
    positions (and values) that the prefilled one does."""
    vectors = _control_vectors(llama, words=("Aquariums", "Dust"))
    tok = llama.tokenizer
    real = mechintro.generation.generate

    def writes_the_sentence(model, batch, **kwargs):
        tokens = []
        for text in batch.texts:
            s = next(s for s in SENTENCES if f'Write the sentence "{s}"' in text)
            full = tok(text + s, add_special_tokens=False)["input_ids"]
            prompt = tok(text, add_special_tokens=False)["input_ids"]
            assert full[: len(prompt)] == prompt
            tokens.append(full[len(prompt) :])
        return SimpleNamespace(tokens=tokens)

    prefilled = intentional_control(llama, vectors, sentences=SENTENCES, measure="prefilled")
    monkeypatch.setattr(mechintro.generation, "generate", writes_the_sentence)
    generated = intentional_control(llama, vectors, sentences=SENTENCES, batch_size=4)
    monkeypatch.setattr(mechintro.generation, "generate", real)
    assert generated["sentence_found"].all() and (generated["reply"] == generated["sentence"]).all()
    keys = ["condition", "word", "sentence", "layer"]
    both = generated.merge(prefilled, on=keys, suffixes=("", "_pre"))
    assert len(both) == len(prefilled) == len(generated)
    assert (both["n_tokens"] == both["n_tokens_pre"]).all()
    assert both["projection"].to_numpy() == pytest.approx(
        both["projection_pre"].to_numpy(), abs=1e-4
    )
    assert set(prefilled["measure"]) == {"prefilled"} and prefilled["sentence_found"].all()
    with unchecked(), pytest.raises(ValueError, match="measure"):
        intentional_control(llama, vectors, measure="read")  # type: ignore[arg-type]
