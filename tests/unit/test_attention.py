"""Grouped attention (mechintro.engine.attention) computes eager attention's function.

fp32 on the CPU: logits within ATOL of eager attention's for prefill and cached decode with
left padding (Llama, Qwen3, Gemma-3 with a sliding window shorter than the prompts), on
plain HF models and on a bridge's twin; the twin keeps eager attention on the CPU unless
asked (the bit-identity tests elsewhere run on that default).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mechintro.engine.attention import ATTENTIONS, GROUPED, choose, grouped_attention, register
from mechintro.engine.twin import twin_of
from mechintro.generation import generate, use_attention
from mechintro.models import load_model
from mechintro.prompts import Prompt, encode

ATOL = 1e-5  # fp32: the same sums in another order (largest seen: about 2e-6)
GQA = ("llama", "qwen3", "gemma3")  # the tiny configs with 4 query heads over 2 K/V heads

TEXTS = [
    "Trial 1: Do you detect an injected thought? Answer in one word.",
    "Hi.",
    "A longer prompt than the window of sixteen tokens, so that sliding layers slide.",
]


def _eager(query, key, value, mask, scaling):
    """Eager attention, written out: K/V repeated per group, additive mask, fp32 softmax."""
    G = query.shape[1] // key.shape[1]
    k, v = key.repeat_interleave(G, 1), value.repeat_interleave(G, 1)
    scores = query @ k.transpose(-1, -2) * scaling
    if mask.dtype == torch.bool:
        mask = torch.zeros_like(mask, dtype=scores.dtype).masked_fill(~mask, float("-inf"))
    return ((scores + mask).softmax(-1) @ v).transpose(1, 2)


@pytest.mark.parametrize("q_len", [1, 5])
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("boolean", [False, True])
def test_grouped_attention_equals_eager(q_len: int, per_head: bool, boolean: bool) -> None:
    g = torch.Generator().manual_seed(q_len + 2 * per_head + 4 * boolean)
    B, H, Hkv, S, D = 3, 8, 2, 9, 16
    q = torch.randn(B, H, q_len, D, generator=g)
    k, v = torch.randn(B, Hkv, S, D, generator=g), torch.randn(B, Hkv, S, D, generator=g)
    open_ = torch.rand(B, H if per_head else 1, q_len, S, generator=g) > 0.3
    open_[..., -1] = True  # every query attends somewhere
    mask = open_ if boolean else torch.zeros(open_.shape).masked_fill(~open_, -1e9)
    out, weights = grouped_attention(torch.nn.Module(), q, k, v, mask, scaling=0.25)
    assert weights is None and out.shape == (B, q_len, H, D)
    torch.testing.assert_close(out, _eager(q, k, v, mask, 0.25), atol=ATOL, rtol=0)


def test_grouped_attention_without_a_mask_is_causal() -> None:
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(2, 4, 6, 8, generator=g), *torch.randn(2, 2, 2, 6, 8, generator=g)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()[None, None]
    out, _ = grouped_attention(torch.nn.Module(), q, k, v, None, scaling=0.5)
    torch.testing.assert_close(out, _eager(q, k, v, causal, 0.5), atol=ATOL, rtol=0)


def _hf(folder, attention: str):
    model = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    if attention == GROUPED:
        register()
    model.config._attn_implementation = attention
    return model


@pytest.mark.parametrize("arch", GQA)
def test_hf_prefill_and_cached_decode_match_eager(arch: str, tiny_dirs) -> None:
    """A left-padded batch: prefill logits at every real position, then 6 greedy decode
    steps through transformers' own cache (sliding windows of 16 on Gemma-3)."""
    tok = AutoTokenizer.from_pretrained(tiny_dirs[arch], padding_side="left")
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    real = batch["attention_mask"].bool()
    runs = {}
    for attention in ("eager", GROUPED):
        model = _hf(tiny_dirs[arch], attention)
        with torch.no_grad():
            logits = model(**batch).logits
            gen = model.generate(
                **batch,
                max_new_tokens=6,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
            )
        runs[attention] = (logits[real], gen.sequences, torch.stack(gen.logits))
    (pre_e, seq_e, dec_e), (pre_g, seq_g, dec_g) = runs["eager"], runs[GROUPED]
    assert batch["input_ids"].shape[1] > 16 and not real.all()  # windows slide; left padding
    torch.testing.assert_close(pre_g, pre_e, atol=ATOL, rtol=0)
    torch.testing.assert_close(dec_g, dec_e, atol=ATOL, rtol=0)
    assert torch.equal(seq_g, seq_e)


@pytest.fixture(scope="module")
def twin_model(tiny_dirs):
    from tiny_models import long_window_gemma3

    return load_model(long_window_gemma3(tiny_dirs["gemma3"], tiny_dirs["gemma3"].parent / "lw"))


def test_twin_runs_eager_on_the_cpu_unless_asked(twin_model) -> None:
    assert use_attention(twin_model) == "eager"
    assert twin_of(twin_model).config._attn_implementation == "eager"
    assert twin_model.original_model.config._attn_implementation == "eager"  # bridge as is
    try:
        assert use_attention(twin_model, GROUPED) == GROUPED
        assert twin_of(twin_model).config._attn_implementation == GROUPED
        with pytest.raises(ValueError, match="use one of"):
            use_attention(twin_model, "flash")
        assert twin_of(twin_model).config._attn_implementation == GROUPED  # unchanged
    finally:
        use_attention(twin_model)
    assert twin_of(twin_model).config._attn_implementation == "eager"


@pytest.mark.parametrize("static", [False, True])
def test_twin_generation_with_grouped_attention(twin_model, static: bool) -> None:
    """mechintro.generate on the twin, left padding, the shared prefix, a dynamic or static
    cache: the same greedy tokens as eager attention, logits within ATOL."""
    prompts = [Prompt.chat(t) for t in TEXTS] + [Prompt.chat(TEXTS[0])]
    batch = encode(twin_model.tokenizer, prompts)
    kw = dict(max_new_tokens=5, keep_logits=True, stop_ids=[], static_cache=static)
    ref = generate(twin_model, batch, **kw)
    try:
        use_attention(twin_model, GROUPED)
        out = generate(twin_model, batch, **kw)
    finally:
        use_attention(twin_model)
    assert ref.record.settings["path"] == out.record.settings["path"] == "twin"
    assert (ref.record.settings["attention"], out.record.settings["attention"]) == (
        "eager",
        GROUPED,
    )
    assert out.tokens == ref.tokens
    torch.testing.assert_close(
        torch.stack(out.logits or []), torch.stack(ref.logits or []), atol=ATOL, rtol=0
    )


def test_choose() -> None:
    from transformers import Gemma3TextConfig, LlamaConfig

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    gqa = LlamaConfig(num_attention_heads=4, num_key_value_heads=2)
    mha = LlamaConfig(num_attention_heads=4, num_key_value_heads=4)
    assert choose("eager", gqa, cuda) == GROUPED
    assert choose("sdpa", gqa, cuda) == GROUPED
    assert choose("eager", gqa, cpu) == "eager"
    assert choose("eager", mha, cuda) == "eager"
    assert choose("flash_attention_2", gqa, cuda) == "flash_attention_2"  # not ours to replace
    assert choose("eager", gqa, cuda, "sdpa") == "sdpa"
    assert choose("eager", mha, cpu, GROUPED) == GROUPED
    assert set(ATTENTIONS) == {"auto", GROUPED, "eager", "sdpa"}
    capped = Gemma3TextConfig(num_attention_heads=4, num_key_value_heads=2)
    capped.attn_logit_softcapping = 50.0
    assert choose("eager", capped, cuda) == "eager"
    with pytest.raises(ValueError, match="soft-caps"):
        choose("eager", capped, cuda, GROUPED)
