"""Generation and readouts: seeding, batching, stopping, and the Yes/No belief."""

from __future__ import annotations

import pytest
import torch

from mechintro.generation import generate, readout
from mechintro.inject import Injection
from mechintro.prompts import Prompt, encode
from mechintro.tokens import gumbel_noise

pytestmark = pytest.mark.identity

PROMPTS = [
    Prompt.chat("Trial 1: Do you detect an injected thought?"),
    Prompt.chat("Trial 22: What is on your mind right now, if anything at all?"),
    Prompt.chat("Trial 3: ?"),
]


def test_same_seed_same_text_and_batched_equals_alone(model):
    batch = encode(model.tokenizer, PROMPTS)
    a = generate(model, batch, max_new_tokens=8, temperature=1.0, seed=11, stop_ids=[])
    b = generate(model, batch, max_new_tokens=8, temperature=1.0, seed=11, stop_ids=[])
    c = generate(model, batch, max_new_tokens=8, temperature=1.0, seed=12, stop_ids=[])
    assert a.tokens == b.tokens
    assert a.tokens != c.tokens
    for i, p in enumerate(PROMPTS):
        alone = generate(
            model,
            encode(model.tokenizer, [p]),
            max_new_tokens=8,
            temperature=1.0,
            seed=[11 + i],
            stop_ids=[],
        )
        assert alone.tokens[0] == a.tokens[i]
    assert a.record.seeds == [11, 12, 13]


def test_gumbel_max_samples_from_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5])
    n = 20000
    seeds = torch.arange(n)
    draws = (logits[None, :] + gumbel_noise(seeds, step=3, vocab=5).float()).argmax(-1)
    freq = torch.bincount(draws, minlength=5).float() / n
    assert torch.allclose(freq, logits.softmax(-1), atol=0.015), freq


def test_rows_stop_at_their_stop_token(model):
    batch = encode(model.tokenizer, PROMPTS)
    free = generate(model, batch, max_new_tokens=6, stop_ids=[])
    stop = free.tokens[0][2]  # the third greedy token of row 0 becomes a stop token
    out = generate(model, batch, max_new_tokens=6, stop_ids=[stop])
    assert out.tokens[0] == free.tokens[0][: free.tokens[0].index(stop)]
    assert out.finished[0]
    for i in range(1, len(PROMPTS)):
        want = free.tokens[i]
        cut = want.index(stop) if stop in want else len(want)
        assert out.tokens[i] == want[:cut]


def test_to_frame_has_one_row_per_reply(llama):
    batch = encode(llama.tokenizer, PROMPTS)
    free = generate(llama, batch, max_new_tokens=6, stop_ids=[], seed=5)
    stop = free.tokens[0][2]
    out = generate(llama, batch, max_new_tokens=6, stop_ids=[stop], seed=5)
    df = out.to_frame()
    assert list(df.columns) == ["row", "prompt", "reply", "n_tokens", "finished", "seed"]
    assert df["row"].tolist() == [0, 1, 2]
    assert df["prompt"].tolist() == list(batch.texts)
    assert df["reply"].tolist() == out.replies
    assert df["n_tokens"].tolist() == [len(t) for t in out.tokens]
    assert df["n_tokens"][0] == free.tokens[0].index(stop)  # cut before its stop token
    assert df["finished"].tolist() == out.finished
    assert bool(df["finished"][0])
    assert df["seed"].tolist() == [5, 6, 7]


def test_generate_and_readout_take_text_and_token_tensors(llama):
    texts = ["The cat sat on the mat", "A dog ran"]
    batch = encode(llama.tokenizer, [Prompt.text(t) for t in texts])
    want = generate(llama, batch, max_new_tokens=4, stop_ids=[])
    assert generate(llama, texts, max_new_tokens=4, stop_ids=[]).tokens == want.tokens
    alone = generate(llama, texts[0], max_new_tokens=4, stop_ids=[])
    assert alone.tokens == [want.tokens[0]]
    assert alone.prompts == (texts[0],)
    ids = batch.rows([0]).input_ids
    assert generate(llama, ids, max_new_tokens=4, stop_ids=[]).tokens == alone.tokens
    torch.testing.assert_close(readout(llama, texts).b, readout(llama, batch).b)
    torch.testing.assert_close(readout(llama, ids[0]).b, readout(llama, batch).b[:1])


def test_readout_is_the_logit_difference_at_the_last_prompt_token(model):
    batch = encode(model.tokenizer, PROMPTS)
    r = readout(model, batch, words=["Dust", "Bread"])
    tok = model.tokenizer
    logits = generate(model, batch, max_new_tokens=1, keep_logits=True, stop_ids=[]).logits[0]
    yes = tok("Yes", add_special_tokens=False)["input_ids"][0]
    no = tok("No", add_special_tokens=False)["input_ids"][0]
    assert torch.allclose(r.b, logits[:, yes] - logits[:, no], atol=1e-5)
    ys = sorted(
        {
            tok(w, add_special_tokens=False)["input_ids"][0]
            for w in ("Yes", " Yes", "yes", " yes", "YES", " YES")
        }
    )
    ns = sorted(
        {
            tok(w, add_special_tokens=False)["input_ids"][0]
            for w in ("No", " No", "no", " no", "NO", " NO")
        }
    )
    want = logits[:, ys].logsumexp(-1) - logits[:, ns].logsumexp(-1)
    assert torch.allclose(r.b_variants, want, atol=1e-5)
    dust = tok("Dust", add_special_tokens=False)["input_ids"][0]
    assert torch.allclose(r.word_probs[:, 0], logits.softmax(-1)[:, dust], atol=1e-6)


def test_readout_under_zero_and_nonzero_injection(model):
    batch = encode(model.tokenizer, PROMPTS)
    plain = readout(model, batch)
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 5
    zero = readout(model, batch, injection=Injection(1, v, 0.0, mode="single-token"))
    assert torch.equal(zero.logits, plain.logits)
    steered = readout(model, batch, injection=Injection(1, v, 3.0, mode="single-token"))
    assert not torch.allclose(steered.b, plain.b)


def test_record_holds_exact_inputs(model):
    batch = encode(model.tokenizer, PROMPTS)
    inj = Injection(1, torch.ones(model.cfg.d_model), [1.0, 0.0, 2.0], mode="generation-only")
    out = generate(model, batch, injection=inj, max_new_tokens=3, stop_ids=[])
    rec = out.record.to_dict()
    for i in range(len(PROMPTS)):
        real = batch.input_ids[i, int(batch.n_pad[i]) :].tolist()
        assert rec["prompt_ids"][i] == real
        n = len(real)
        # generation-only: the two generated tokens fed back (positions n, n+1), not row 1
        want = [] if i == 1 else [n, n + 1]
        assert rec["injections"][0]["steered_positions"][i] == want
    assert {"torch", "transformers", "transformer-lens", "mechintro"} <= rec["versions"].keys()
    assert rec["model"]["backend"] in ("bridge", "hooked")
    assert rec["settings"]["max_new_tokens"] == 3


def test_shared_prefix_gives_the_logits_of_the_full_batch(model):
    """Rows that share a preamble: computing it once for one row and copying the KV cache
    gives what the full batch gives, under a from-trial injection with a control row."""
    batch = encode(model.tokenizer, [_shared(n) for n in (1, 4, 7)])
    assert bool((batch.attention_mask == 1).all())  # same length: nothing padded
    v = torch.randn(3, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    inj = Injection(1, v, [6.0, 0.0, 3.0], mode="from-trial")
    runs = [
        generate(
            model,
            batch,
            injection=inj,
            max_new_tokens=5,
            temperature=1.0,
            seed=5,
            stop_ids=[],
            keep_logits=True,
            share_prefix=share,
        )
        for share in (True, False)
    ]
    shared, full = runs
    assert shared.record.settings["shared_prefix"] == int(batch.position("trial").min())
    assert full.record.settings["shared_prefix"] == 0
    assert shared.tokens == full.tokens
    for a, b in zip(shared.logits or [], full.logits or []):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert (
        shared.record.injections[0]["steered_positions"]
        == (full.record.injections[0]["steered_positions"])
    )


def _shared(n: int) -> Prompt:
    """A dialogue whose rows differ only from ``Trial n`` on (the tiny models' n_ctx is short)."""
    history = [("user", "I will ask you a few questions."), ("assistant", "Ok.")]
    return Prompt.chat(f"Trial {n}: Do you detect an injected thought?", history=history)


def test_no_prefix_is_shared_where_the_injection_steers_it(model):
    batch = encode(model.tokenizer, [_shared(n) for n in (1, 4)])
    inj = Injection(1, torch.ones(model.cfg.d_model), 2.0, mode="all")
    out = generate(model, batch, injection=inj, max_new_tokens=2, stop_ids=[])
    assert out.record.settings["shared_prefix"] == 0
    control = generate(model, batch, max_new_tokens=2, stop_ids=[])
    differ = (batch.input_ids[0] != batch.input_ids[1]).nonzero()[0, 0]  # the trial number
    assert control.record.settings["shared_prefix"] == int(differ)


def test_stop_tokens_found_by_lookup_equal_the_whole_vocabulary_scan(model):
    from mechintro.generation import END_OF_TURN, stop_token_ids, vocab_id
    from mechintro.models import tokenizer_of

    tok = tokenizer_of(model)
    vocab = tok.get_vocab()
    absent = ["<never_a_token>", "hello world", tok.unk_token or "<unk>"]
    for t in (*END_OF_TURN, *absent, *list(vocab)[:50]):
        assert vocab_id(tok, t) == vocab.get(t), t
    expected = {vocab[t] for t in END_OF_TURN if t in vocab}
    assert expected, "the tiny tokenizers carry an end-of-turn token"
    assert expected <= set(stop_token_ids(model))
    assert tok.eos_token_id in stop_token_ids(model)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_first_token_ids_of_many_words_are_each_words_own(tiny_dirs, arch):
    """first_token_ids tokenises all its words in one call: each must get the first id it
    gets alone."""
    from transformers import AutoTokenizer

    from mechintro.tokens import NO_VARIANTS, YES_VARIANTS, first_token_ids

    tok = AutoTokenizer.from_pretrained(tiny_dirs[arch])
    words = [*YES_VARIANTS, *NO_VARIANTS, "Dust", " a longer phrase", "é"]
    alone = [tok(w, add_special_tokens=False)["input_ids"][0] for w in words]
    assert first_token_ids(tok, words) == alone
    assert first_token_ids(tok, []) == []
    with pytest.raises(ValueError, match="tokenizes to nothing"):
        first_token_ids(tok, ["Yes", ""])


def test_the_belief_is_logsumexp_of_the_variants_first_tokens(llama):
    from mechintro.tokens import NO_VARIANTS, YES_VARIANTS, Belief, first_token_ids

    tok = llama.tokenizer
    batch = encode(tok, [Prompt.chat("Trial 1: anything?"), Prompt.chat("Hi.")])
    r = readout(llama, batch)
    belief = Belief.of(tok)
    ys = sorted(set(first_token_ids(tok, YES_VARIANTS)))
    ns = sorted(set(first_token_ids(tok, NO_VARIANTS)))
    by_hand = r.logits[:, ys].logsumexp(-1) - r.logits[:, ns].logsumexp(-1)
    assert torch.equal(belief(r.logits), by_hand) and torch.equal(r.b_variants, by_hand)
