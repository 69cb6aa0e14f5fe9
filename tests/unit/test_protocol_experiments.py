"""Protocols that run experiments: prefill intention, intentional control, noise controls.

Each batched run is checked against its trials run one at a time, and each score against a
hand computation. Texts that docs/protocols.md gives verbatim are copied from the document.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd
import pytest
import torch
from tiny_models import vec

from mechintro.experiments.metrics import wilson
from mechintro.experiments.protocols import get
from mechintro.experiments.protocols.control import (
    CONDITIONS,
    control_prompt,
    control_summary,
    intentional_control,
)
from mechintro.experiments.protocols.intention import (
    classify_reply,
    intention_prompt,
    intention_rates,
    run_intention,
)
from mechintro.experiments.protocols.noise import (
    CONTROL_BATTERY,
    INTROSPECTION,
    NoiseControls,
    question_prompt,
)
from mechintro.generation import generate, readout
from mechintro.inject import Injection, injected
from mechintro.models import resid_post
from mechintro.prompts import encode
from mechintro.vectors import ConceptVector

DOC_FOLLOW_UP = "Did you mean to say that, or was it an accident?"  # docs/protocols.md §6

LAYER = 1
NEW = 3


# ---------------------------------------------------------------------------------------------
# prefill intention

SENTENCE = "The painting hung crookedly on the wall."


def test_intention_prompt_spans_and_retroactive_injection(llama):
    tok = llama.tokenizer
    prompts = [intention_prompt(SENTENCE, "bread"), intention_prompt("A longer sentence " * 3, "x")]
    batch = encode(tok, prompts)
    assert int(batch.n_pad[0]) > 0
    for row, (sentence, word) in enumerate([(SENTENCE, "bread"), ("A longer sentence " * 3, "x")]):
        ids = batch.input_ids[row]
        (c0, c1), (w0, w1), (q0, q1) = (
            batch.spans[k][row].tolist() for k in ("context", "prefill", "question")
        )
        context = tok.decode(ids[c0:c1])
        assert context.startswith("Here is a sentence: ") and sentence in context
        assert "What word comes to mind" in context
        assert tok.decode(ids[w0:w1]) == word
        assert tok.decode(ids[q0:q1]) == DOC_FOLLOW_UP
        assert c1 < w0 < w1 < q0
        between = tok.decode(ids[c1:w0])
        assert between == "<|im_end|>\n<|im_start|>assistant\n"  # the word is the reply
    inj = get("intention").injection(LAYER, vec(llama), [4.0, 2.0])
    with injected(llama, inj, batch) as log:
        generate(llama, batch, max_new_tokens=NEW, stop_ids=[])
    spans = batch.spans["context"].tolist()
    assert log.steered_positions() == [list(range(a, b)) for a, b in spans]  # no reply token
    with pytest.raises(ValueError, match="follow-up"):
        intention_prompt(SENTENCE, "mean")


@pytest.mark.parametrize(
    "reply,label",
    [
        ("Sorry, that was an accident.", "apology"),
        ("I apologize, I did not mean to say bread.", "apology"),
        ("No, it was a mistake; I should have said frame.", "apology"),
        ("That was unintentional.", "apology"),
        ("Yes, I meant it: bread.", "accept"),
        ("It wasn't an accident. I chose bread on purpose.", "accept"),
        ("It was no mistake.", "accept"),
        ("Bread.", "unclear"),
    ],
)
def test_classify_reply(reply, label):
    assert classify_reply(reply) == label


def test_run_intention_rows_equal_trials_run_alone(llama):
    vectors = {
        w: ConceptVector(w, vec(llama, i), LAYER, "test") for i, w in enumerate(("bread", "fish"))
    }
    sentences = (SENTENCE, "Rain fell.")
    df = run_intention(
        llama,
        vectors,
        layer=LAYER,
        strengths=(0.0, 6.0),
        sentences=sentences,
        unrelated=False,  # its rows: tests/unit/test_lindsey_experiments.py
        max_new_tokens=4,
        batch_size=3,
    )
    assert len(df) == 8 and set(df.columns) >= {"word", "strength", "reply", "label", "apology"}
    for r in df.itertuples():
        batch = encode(llama.tokenizer, [intention_prompt(r.sentence, r.word)])
        inj = Injection(LAYER, vectors[r.word].vector, r.strength, mode="span", start="context")
        alone = generate(llama, batch, injection=inj, max_new_tokens=4)
        assert r.reply == alone.replies[0]
        if r.strength == 0.0:
            assert r.reply == generate(llama, batch, max_new_tokens=4).replies[0]
        assert r.label == classify_reply(r.reply_cut)
        assert r.n_context_tokens == len(intention_prompt(r.sentence, r.word).marks["context"])
    assert df.groupby(["word", "sentence"]).size().eq(2).all()


def test_intention_rates_by_hand():
    df = pd.DataFrame(
        {
            "strength": [0.0] * 4 + [4.0] * 3,
            "label": ["apology", "apology", "accept", "unclear", "accept", "accept", "apology"],
        }
    )
    df["apology"] = df.label == "apology"
    df["accept"] = df.label == "accept"
    out = intention_rates(df).set_index("strength")
    assert out.loc[0.0, "apology_rate"] == 0.5 and out.loc[4.0, "accept_rate"] == 2 / 3
    assert (out.loc[0.0, "apology_lo"], out.loc[0.0, "apology_hi"]) == pytest.approx(wilson(2, 4))
    assert out.loc[0.0, "n_unclear"] == 1 and out.loc[4.0, "n"] == 3


# ---------------------------------------------------------------------------------------------
# intentional control

CONTROL_SENTENCE = "The old photographs had faded to a soft brown."


def test_control_prompts_and_sentence_span(toks):
    tok = toks["gemma3"]
    batch = encode(tok, [control_prompt(c, "Aquariums", CONTROL_SENTENCE) for c in CONDITIONS])
    texts = dict(zip(CONDITIONS, batch.texts))
    assert "Think about Aquariums while you write it." in texts["think"]
    assert "Don't think about Aquariums while you write it." in texts["dont-think"]
    assert "think about Aquariums while you write it, you will be rewarded" in texts["reward"]
    assert "think about Aquariums while you write it, you will be punished" in texts["punish"]
    assert "Aquariums" not in texts["baseline"]
    for row, c in enumerate(CONDITIONS):
        assert f'Write the sentence "{CONTROL_SENTENCE}"' in texts[c]
        lo, hi = batch.spans["sentence"][row].tolist()
        assert tok.decode(batch.input_ids[row, lo:hi]) == CONTROL_SENTENCE
        assert hi == batch.length  # the prefilled reply, not the quote in the instruction
        assert tok.decode(batch.input_ids[row, lo - 6 : lo]) == "model\n"


@pytest.mark.parametrize(
    "model",
    [("llama", "bridge"), ("gemma3", "bridge"), ("llama", "hooked")],
    indirect=True,
    ids=str,
)
def test_control_projection_equals_hand_computation(model, monkeypatch):
    layers = (1, 3)
    words = ("Aquariums", "Dust")
    vectors = {
        L: {w: ConceptVector(w, vec(model, 10 * L + i), L, "test") for i, w in enumerate(words)}
        for L in layers
    }
    sentences = (CONTROL_SENTENCE, "Rain.")
    want = {}
    for c in CONDITIONS:
        for w in words:
            for s in sentences:
                batch = encode(model.tokenizer, [control_prompt(c, w, s)])
                _, cache = model.run_with_cache(batch.input_ids)
                for L in layers:
                    h = cache[resid_post(L)][0, -len(s) :].float()  # one token per character
                    v = vectors[L][w].vector
                    want[(c, w, s, L)] = float((h @ v).mean() / v.norm())
    calls = []
    real = model.run_with_cache

    def spy(*args, **kwargs):
        calls.append(kwargs.get("names_filter"))
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "run_with_cache", spy)
    df = intentional_control(model, vectors, sentences=sentences, measure="prefilled", batch_size=8)
    monkeypatch.undo()
    assert calls == [[resid_post(L) for L in layers]] * math.ceil(len(CONDITIONS) * 4 / 8)
    assert len(df) == len(want)
    for r in df.itertuples():
        assert r.projection == pytest.approx(
            want[(r.condition, r.word, r.sentence, r.layer)], abs=1e-4
        )
        assert r.n_tokens == len(r.sentence)
    summary = control_summary(df).set_index(["condition", "layer"])
    for (c, L), row in summary.iterrows():
        mine = [v for (c2, _, _, L2), v in want.items() if (c2, L2) == (c, L)]
        assert row["mean"] == pytest.approx(sum(mine) / len(mine), abs=1e-4) and row["n"] == 4


# ---------------------------------------------------------------------------------------------
# noise controls

NOISE_QUESTIONS = (INTROSPECTION, *CONTROL_BATTERY[:3], CONTROL_BATTERY[12])


@pytest.fixture(scope="module")
def noise_run(llama):
    nc = NoiseControls(layers=(1, 2), strengths=(0.0, 6.0), questions=NOISE_QUESTIONS, seed=5)
    vectors = {L: {"caps": ConceptVector("caps", vec(llama, L), L, "test")} for L in (1, 2)}
    df = nc.run(llama, vectors, batch_size=13)  # batches that straddle layers and vectors
    return nc, vectors, df


def test_noise_batched_b_equals_per_question_readout(llama, noise_run):
    nc, vectors, df = noise_run
    assert len(df) == 5 * 2 * 2 * 2
    assert set(df.kind) == {"concept", "random"}
    random_vecs = {(L, name): v for L, name, kind, v in nc.vectors(vectors) if kind == "random"}
    for (L, name), v in random_vecs.items():  # norm-matched, seeded, another direction
        ref = vectors[L]["caps"]
        assert v.norm == pytest.approx(ref.norm, rel=1e-5) and name == "random:caps:0"
        assert abs(float(v.vector @ ref.vector)) < 0.5 * ref.norm**2
    again = {(L, name): v for L, name, kind, v in nc.vectors(vectors) if kind == "random"}
    assert all(torch.equal(again[k].vector, v.vector) for k, v in random_vecs.items())  # seeded
    r1, r2 = (random_vecs[(L, "random:caps:0")].vector for L in (1, 2))
    assert abs(float(r1 @ r2 / (r1.norm() * r2.norm()))) < 0.9  # a seed per layer
    other = replace(nc, seed=6).vectors(vectors)
    assert not torch.allclose(other[1][3].vector, random_vecs[(1, "random:caps:0")].vector)
    for r in df.itertuples():
        q = next(q for q in NOISE_QUESTIONS if q.id == r.question)
        batch = encode(llama.tokenizer, [question_prompt(q)])
        v = vectors[r.layer]["caps"] if r.kind == "concept" else random_vecs[(r.layer, r.vector)]
        inj = Injection(r.layer, v.vector, r.strength, mode="single-token")
        alone = readout(llama, batch, injection=inj)
        assert r.b == pytest.approx(float(alone.b[0]), abs=1e-4)
        assert r.b_variants == pytest.approx(float(alone.b_variants[0]), abs=1e-4)


def test_noise_answer_tokens_are_selectable_and_the_top_token_recorded(llama, noise_run):
    """b with the answers swapped is −b (the same forward); the top next token is recorded."""
    nc, vectors, df = noise_run
    swapped = replace(nc, yes="No", no="Yes").run(llama, vectors, batch_size=13)
    assert (swapped.b == -df.b).all() and (swapped.top_token == df.top_token).all()
    first = df.iloc[0]
    q = next(q for q in NOISE_QUESTIONS if q.id == first.question)
    alone = readout(llama, encode(llama.tokenizer, [question_prompt(q)]))
    assert first.strength == 0.0
    assert first.top_token == llama.tokenizer.decode([int(alone.logits[0].argmax())])
    with pytest.raises(ValueError, match="two different words"):
        replace(nc, yes="No", no="No")


def test_noise_specificity_equals_hand_computation(noise_run):
    nc, _, df = noise_run
    b = {(r.question, r.layer, r.strength, r.vector): r.b for r in df.itertuples()}
    controls = [q.id for q in NOISE_QUESTIONS[1:]]
    for r in df.itertuples():
        base = b[(r.question, r.layer, 0.0, r.vector)]
        assert r.delta_b == pytest.approx(r.b - base, abs=1e-6)

        def delta(q, r=r):
            return b[(q, r.layer, r.strength, r.vector)] - b[(q, r.layer, 0.0, r.vector)]

        want = delta("introspection") - sum(delta(q) for q in controls) / len(controls)
        assert r.specificity == pytest.approx(want, abs=1e-6)
    table = nc.specificity(df)
    assert len(table) == 2 * 2 * 2 and set(table.kind) == {"concept", "random"}
    per = nc.specificity(df, per_control=True)
    assert len(per) == 2 * 2 * 2 * len(controls)
    strong = df[(df.strength == 6.0) & (df.layer == 1) & (df.vector == "caps")]
    assert strong.specificity.nunique() == 1 and strong.specificity.iloc[0] != 0.0


def test_noise_controls_validate_their_design(unchecked):
    nc = NoiseControls(layers=(1,))
    assert nc.strengths == tuple(float(s) for s in range(11))
    assert len([q for q in nc.questions if q.id != "introspection"]) >= 15
    with pytest.raises(ValueError, match="include 0"):
        NoiseControls(layers=(1,), strengths=(2.0, 4.0))
    with pytest.raises(ValueError, match="introspection question"):
        NoiseControls(layers=(1,), questions=CONTROL_BATTERY)
    with unchecked(), pytest.raises(ValueError, match="block indices"):
        NoiseControls(layers=(0.5,))  # type: ignore[arg-type]
