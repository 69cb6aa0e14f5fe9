"""TransformerLens-native inputs: every analysis takes a string, a list of strings, a token
tensor or a PromptBatch (and transcoders as sae-lens SAEs or registry pairs), with the same
numbers as the encoded batch; anything else is a TypeError that names what is accepted."""

from __future__ import annotations

import pytest
import torch

from mechintro.analysis.dla import direct_logit_attribution
from mechintro.analysis.patching import activation_patch, attribution_patch, knock_in
from mechintro.analysis.transcoders import Transcoder, as_transcoder, evaluate
from mechintro.inject import Injection
from mechintro.prompts import Prompt, as_prompt_batch, encode

TEXTS = ["The cat sat on the mat", "A dog ran"]


def _same_batch(a, b) -> None:
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(a.attention_mask, b.attention_mask)
    assert a.texts == b.texts
    assert sorted(a.positions) == sorted(b.positions)
    for name in a.positions:
        assert torch.equal(a.positions[name], b.positions[name])


def test_strings_and_prompts_are_encoded_as_raw_text(llama):
    tok = llama.tokenizer
    want = encode(tok, [Prompt.text(t) for t in TEXTS])
    _same_batch(as_prompt_batch(tok, TEXTS), want)
    _same_batch(as_prompt_batch(tok, [TEXTS[0], Prompt.text(TEXTS[1])]), want)
    _same_batch(as_prompt_batch(tok, TEXTS[0]), encode(tok, [Prompt.text(TEXTS[0])]))
    chat = Prompt.chat("hello")
    _same_batch(as_prompt_batch(tok, chat), encode(tok, [chat]))
    assert as_prompt_batch(tok, want).input_ids is want.input_ids  # a batch is itself


def test_a_token_tensor_is_a_batch_of_real_tokens(llama):
    tok = llama.tokenizer
    one = encode(tok, [Prompt.text(TEXTS[0])])
    for ids in (one.input_ids, one.input_ids[0]):
        got = as_prompt_batch(tok, ids)
        _same_batch(got, one)  # unpadded: the same ids, mask, texts and positions
    two = torch.stack([one.input_ids[0], one.input_ids[0].flip(0)])
    got = as_prompt_batch(tok, two)
    assert got.position("last").tolist() == [two.shape[1] - 1] * 2
    assert got.attention_mask.sum().item() == two.numel()


def test_what_is_not_prompts_is_refused_with_the_accepted_forms(llama, unchecked):
    tok = llama.tokenizer
    with unchecked():
        for bad in (3, {"text": "a"}, [1, 2]):
            with pytest.raises(TypeError, match="a string, a list of strings"):
                as_prompt_batch(tok, bad)
    with pytest.raises(TypeError, match="integer token ids, got dtype torch.float32"):
        as_prompt_batch(tok, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="no prompts given"):
        as_prompt_batch(tok, [])
    with pytest.raises(ValueError, match=r"\[pos\] or \[batch, pos\]"):
        as_prompt_batch(tok, torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="negative"):
        as_prompt_batch(tok, torch.tensor([[1, -1]]))
    right_padded = torch.tensor([[5, 6, 7], [5, 6, tok.pad_token_id]])
    with pytest.raises(ValueError, match="looks right-padded"):
        as_prompt_batch(tok, right_padded)


def test_patching_takes_tensors_and_strings_with_the_batchs_numbers(llama):
    tok = llama.tokenizer
    batch = encode(tok, [Prompt.text(TEXTS[0])])
    g = torch.Generator().manual_seed(0)
    inj = Injection(0, torch.randn(llama.cfg.d_model, generator=g), 4.0, mode="all")
    kw = {"component": "resid_pre", "layers": [1], "source_injection": inj}
    want = activation_patch(llama, batch, **kw)
    assert float(want.effect.abs().max()) > 0  # the injection moves the metric
    for given in (batch.input_ids, batch.input_ids[0], TEXTS[0], [TEXTS[0]]):
        got = activation_patch(llama, given, **kw)
        assert torch.equal(got.rows, want.rows)
        assert got.labels() == want.labels()
    screen = attribution_patch(llama, TEXTS[0], **kw)
    torch.testing.assert_close(screen.rows, attribution_patch(llama, batch, **kw).rows)
    torch.testing.assert_close(
        knock_in(llama, batch.input_ids, inj, component="resid_pre", layers=[1]).rows, want.rows
    )


def test_dla_takes_strings_and_tensors_with_the_batchs_numbers(llama):
    batch = encode(llama.tokenizer, [Prompt.text(t) for t in TEXTS])
    want = direct_logit_attribution(llama, batch, by="head")
    for given in (TEXTS, batch):
        got = direct_logit_attribution(llama, given, by="head")
        assert got.labels == want.labels
        assert torch.equal(got.per_row, want.per_row)
    one = direct_logit_attribution(llama, TEXTS[0])
    alone = direct_logit_attribution(llama, encode(llama.tokenizer, [Prompt.text(TEXTS[0])]))
    assert torch.equal(one.per_row, alone.per_row)
    first = batch.rows([0])
    got = direct_logit_attribution(llama, first.input_ids)
    assert torch.equal(got.per_row, alone.per_row)


def _tc(model, layer: int = 1, d_sae: int = 24) -> Transcoder:
    d = model.cfg.d_model
    g = torch.Generator().manual_seed(3)
    return Transcoder(
        layer=layer,
        W_enc=torch.randn(d, d_sae, generator=g) / d**0.5,
        b_enc=0.1 * torch.randn(d_sae, generator=g),
        W_dec=0.3 * torch.randn(d_sae, d, generator=g),
        b_dec=0.1 * torch.randn(d, generator=g),
        threshold=0.2 * torch.rand(d_sae, generator=g),
    )


def test_transcoder_arguments_take_sae_lens_saes(llama):
    tc = _tc(llama)
    sae = tc.to_sae()
    assert type(sae).__module__.startswith("sae_lens")
    want = direct_logit_attribution(llama, TEXTS, by="feature", transcoders=[tc])
    for given in (sae, [sae], {1: sae}):
        got = direct_logit_attribution(llama, TEXTS, by="feature", transcoders=given)
        assert got.labels == want.labels
        torch.testing.assert_close(got.per_row, want.per_row, atol=1e-6, rtol=0)
    torch.testing.assert_close(evaluate(llama, sae, TEXTS).fvu, evaluate(llama, tc, TEXTS).fvu)


def test_transcoder_arguments_refuse_other_things_with_the_fix(llama, unchecked):
    tc = _tc(llama)
    with unchecked():
        with pytest.raises(TypeError, match=r"sae-lens SAE .*\(release, sae_id\)"):
            direct_logit_attribution(llama, TEXTS, by="feature", transcoders=[object()])
        with pytest.raises(TypeError, match="expected a transcoder, got int"):
            evaluate(llama, 7, TEXTS)
    from sae_lens import SAE

    plain = SAE.from_dict({"architecture": "standard", "d_in": llama.cfg.d_model, "d_sae": 8})
    with pytest.raises(ValueError, match="an SAE reconstructs one site"):  # the hint is reached
        direct_logit_attribution(llama, TEXTS, by="feature", transcoders={1: plain})
    with pytest.raises(ValueError, match="block 1's, not block 2's"):
        as_transcoder(tc, layer=2)
    # a (release, sae_id) pair is looked up in sae-lens's registry (offline) before loading
    with pytest.raises(ValueError, match="no sae-lens release 'no-such-release'"):
        evaluate(llama, ("no-such-release", "layer_1"), TEXTS)
