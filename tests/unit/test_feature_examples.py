"""circuits.examples on a tiny random model with random transcoders: the contexts it keeps are
the trace's own activations, whatever the batching, and the logits are the decoder's."""

from __future__ import annotations

import pytest
import torch

from circuits.examples import contexts, feature_examples
from circuits.trace import trace
from mechintro.analysis.transcoders import Transcoder
from mechintro.inject import Injection
from mechintro.prompts import Prompt, encode

TEXTS = [
    "Tell me about bread",
    "Trial 1: Do you detect an injected thought? If so, what is it about?",
    "Hello",
    "Trial 2: anything odd about this one, or nothing at all?",
]


@pytest.fixture(scope="module")
def setup(tiny_dirs):
    from mechintro.models import load_model

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    model = load_model(tiny_dirs["llama"])
    d, d_sae = model.cfg.d_model, 32
    tcs = {}
    for layer in (1, 2):
        g = torch.Generator().manual_seed(layer)
        tcs[layer] = Transcoder(
            layer=layer,
            W_enc=torch.randn(d, d_sae, generator=g) / d**0.5,
            b_enc=0.1 * torch.rand(d_sae, generator=g),
            W_dec=0.3 * torch.randn(d_sae, d, generator=g),
            b_dec=torch.zeros(d),
        )
    batch = encode(model.tokenizer, [Prompt.chat(t) for t in TEXTS])
    yield model, tcs, batch
    torch.set_num_threads(n)


def expected(model, tr, batch, L, f, k, before, after, start=None):
    """The top-k contexts worked out from the trace, one per prompt, repeats once."""
    decode = model.tokenizer.decode
    found = []
    for b in range(len(batch)):
        real = batch.attention_mask[b].bool()
        a = tr.acts[L][b, real, f]
        first = 0 if start is None else int(batch.position(start)[b] - batch.n_pad[b])
        if (a[first:] > 0).any():
            peak = first + int(a[first:].argmax())
            ids = batch.input_ids[b, real].tolist()
            lo, hi = max(0, peak - before), min(len(ids), peak + after + 1)
            found.append((float(a[peak]), [decode([i]) for i in ids[lo:hi]], a[lo:hi], peak - lo))
    found.sort(key=lambda x: -x[0])
    out, seen = [], set()
    for value, tokens, acts, peak in found:
        key = (tuple(tokens), tuple(round(float(x), 5) for x in acts))
        if key not in seen and len(out) < k:
            seen.add(key)
            out.append((value, tokens, peak))
    return out


@pytest.mark.parametrize("start", [None, "trial"])
def test_contexts_are_the_traces_activations(setup, start) -> None:
    model, tcs, batch = setup
    if start is not None:
        batch = batch.rows([1, 3])  # the prompts with a "Trial n"
    features = [(1, f) for f in range(8)] + [(2, 3)]
    got = contexts(model, tcs, batch, features, k=3, before=2, after=1, start=start)
    tr = trace(model, tcs, batch)
    mask = batch.attention_mask.bool()
    counted = mask.clone()
    if start is not None:
        pos = torch.arange(batch.length)[None, :]
        counted &= pos >= batch.position(start)[:, None]
    assert got.n_tokens == int(counted.sum()) < (int(mask.sum()) if start else 10**9)
    for L, f in features:
        acts = tr.acts[L][..., f][counted]
        assert len(got.activations[(L, f)]) == int((acts > 0).sum())
        want = expected(model, tr, batch, L, f, 3, 2, 1, start)
        examples = got.examples[(L, f)]
        assert len(examples) == len(want)
        for ex, (value, tokens, peak) in zip(examples, want):
            assert ex.activation == pytest.approx(value, abs=1e-6)
            assert list(ex.tokens) == tokens and ex.peak == peak
            assert len(ex.acts) == len(ex.tokens)
    assert any(got.examples[x] for x in features), "no feature fired: the test checks nothing"


def test_a_context_that_prompts_share_is_kept_once(setup) -> None:
    model, tcs, batch = setup
    twice = batch.rows([0, 0, 2])  # the first prompt twice: one context, not two
    got = contexts(model, tcs, twice, [(1, f) for f in range(8)], k=3)
    once = contexts(model, tcs, twice.rows([0, 2]), [(1, f) for f in range(8)], k=3)
    for x, examples in got.examples.items():
        assert [e.tokens for e in examples] == [e.tokens for e in once.examples[x]]
    assert got.n_tokens > once.n_tokens  # every prompt's tokens still count


def test_batching_and_a_given_run_change_nothing(setup) -> None:
    model, tcs, batch = setup
    features = [(1, f) for f in range(6)]
    vectors = torch.randn(len(batch), model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    inj = Injection(0, vectors, [1.0, 2.0, 0.5, 3.0], mode="all", unit="resid-norm", resid_norm=1.0)
    whole = contexts(model, tcs, batch, features, injection=inj, batch_size=8)
    one_by_one = contexts(model, tcs, batch, features, injection=inj, batch_size=1)
    given = contexts(model, tcs, batch, features, run=trace(model, tcs, batch, injection=inj))
    plain = contexts(model, tcs, batch, features)
    for x in features:
        for other in (one_by_one, given):
            assert [e.tokens for e in other.examples[x]] == [e.tokens for e in whole.examples[x]]
            for e, w in zip(other.examples[x], whole.examples[x]):
                assert e.acts == pytest.approx(w.acts, abs=1e-5)
    assert any(
        [e.acts for e in plain.examples[x]] != [e.acts for e in whole.examples[x]] for x in features
    ), "the injection changed no activation: the per-row slicing is not tested"


def test_feature_examples_gathers_sections_and_reads_the_decoder(setup) -> None:
    model, tcs, batch = setup
    features = [(1, 0), (2, 3)]
    a = contexts(model, tcs, batch.rows([0, 1]), features)
    b = contexts(model, tcs, batch.rows([2, 3]), features)
    cards = feature_examples(model, tcs, {"first": a, "second": b}, "tiny", n_logits=4)
    assert [(c.layer, c.feature) for c in cards] == features
    for c in cards:
        assert c.transcoder == f"tiny/L{c.layer}" and list(c.sections) == ["first", "second"]
        assert c.n_tokens == a.n_tokens + b.n_tokens
        x = (c.layer, c.feature)
        assert c.activations == a.activations[x] + b.activations[x]
        direction = tcs[c.layer].W_dec[c.feature] @ model.W_U.detach().float().cpu()
        top = torch.topk(direction, 4).indices.tolist()
        assert list(c.top_logits) == [model.tokenizer.decode([i]) for i in top]
        bottom = torch.topk(-direction, 4).indices.tolist()
        assert list(c.bottom_logits) == [model.tokenizer.decode([i]) for i in bottom]


def test_refusals(setup) -> None:
    model, tcs, batch = setup
    with pytest.raises(ValueError, match="no transcoder"):
        contexts(model, tcs, batch, [(0, 1)])
    with pytest.raises(ValueError, match="has 32"):
        contexts(model, tcs, batch, [(1, 32)])
    with pytest.raises(ValueError, match=">= 0"):
        contexts(model, tcs, batch, [(1, 1)], k=-1)
    with pytest.raises(ValueError, match="at least one section"):
        feature_examples(model, tcs, {}, "tiny")
