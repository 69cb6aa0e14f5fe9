"""Memory plans: exact parameter counts, the KV cache HF really keeps, batch sizes that fit,
and an error that names the fixes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from mechintro.memory import (
    GIB,
    KNOWN_TYPES,
    MemoryPlanError,
    ModelShape,
    count_params,
    device_memory,
    estimate,
    no_fit_message,
    plan_batch,
)
from mechintro.models import load_model

SMALL = dict(
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    intermediate_size=96,
    vocab_size=300,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# published configs (no download): the shapes of the checkpoints' config.json
LLAMA_32_1B = dict(
    model_type="llama",
    hidden_size=2048,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    intermediate_size=8192,
    vocab_size=128_256,
    tie_word_embeddings=True,
)
GEMMA3_27B = dict(  # google/gemma-3-27b-it: the multimodal config, its text model counted
    model_type="gemma3",
    text_config=dict(
        hidden_size=5376,
        num_hidden_layers=62,
        num_attention_heads=32,
        num_key_value_heads=16,
        head_dim=128,
        intermediate_size=21_504,
        vocab_size=262_208,
        sliding_window=1024,
        query_pre_attn_scalar=168,
    ),
)


#: zero biases TransformerLens adds to a model that has none (the tiny models have none)
TL_BIASES = {"bias", "b_Q", "b_K", "b_V", "_b_K", "_b_V", "b_O", "b_in", "b_out", "b_U"}


def hf_config(data: dict):
    """Hugging Face's config object of a ``config.json`` dict (``model_type`` names its class)."""
    data = dict(data)
    return AutoConfig.for_model(data.pop("model_type"), **data)


def meta_count(config) -> int:
    """Hugging Face's own model of ``config``, built on the meta device: its parameters."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model_type", KNOWN_TYPES)
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"tie_word_embeddings": True},
        {"attention_bias": True, "mlp_bias": True},
        {"num_key_value_heads": 4},
    ],
    ids=["untied", "tied", "biases", "mha"],
)
def test_parameter_count_equals_hf_models_built_on_meta(model_type, extra):
    config = hf_config({"model_type": model_type, **SMALL, **extra})
    assert count_params(config) == meta_count(config)


def test_parameter_count_of_published_models():
    assert ModelShape.from_config(LLAMA_32_1B).n_params == 1_235_814_400  # "1.24B"
    gemma = ModelShape.from_config(GEMMA3_27B)
    assert gemma.n_params == meta_count(hf_config(GEMMA3_27B).text_config)
    assert 26.9e9 < gemma.n_params < 27.1e9  # "27B" (the 0.4B vision tower not counted)
    assert (gemma.window, gemma.sliding_layers) == (1024, 52)  # 5 local : 1 global
    gpt2 = ModelShape.from_config({"model_type": "gpt2"})  # not a known type: built on meta
    assert gpt2.n_params == 124_439_808 and gpt2.d_mlp == 3072


def test_the_tiny_models_exactly_on_both_backends(tiny_dir: Path):
    shape = ModelShape.from_config(tiny_dir)
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert shape.n_params == sum(p.numel() for p in hf.parameters())
    for backend in ("bridge", "hooked"):
        model = load_model(tiny_dir, backend=backend)
        got = ModelShape.from_model(model)
        # what the loaded model holds: HF's parameters plus the zero biases TL adds
        assert got.n_params == sum(p.numel() for p in model.parameters())
        added = [p for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in TL_BIASES]
        assert all(not p.any() for p in added)
        # a HookedTransformer unties a tied unembedding: one more vocab x d_model matrix
        untied = backend == "hooked" and hf.get_output_embeddings().weight is (
            hf.get_input_embeddings().weight
        )
        extra = sum(p.numel() for p in added) + untied * shape.vocab * shape.d_model
        assert got.n_params == shape.n_params + extra, backend
        assert (got.d_model, got.n_layers, got.n_kv_heads, got.d_head, got.vocab) == (
            shape.d_model,
            shape.n_layers,
            shape.n_kv_heads,
            shape.d_head,
            shape.vocab,
        )
        assert got.sliding_layers == (shape.sliding_layers if backend == "bridge" else 0)
        assert got.prompt_logits == (backend == "hooked")  # the bridge's: the last position


def test_logits_counted_where_the_forward_returns_them():
    """A bridge's generation keeps the last position's logits (logits_to_keep=1): the plan
    counts those, a HookedTransformer's every position's."""
    every = ModelShape.from_config(GEMMA3_27B)
    last = dataclasses.replace(every, prompt_logits=False)
    kw = dict(batch_size=8, prompt_tokens=128, new_tokens=32, dtype="bfloat16")
    a, b = estimate(every, **kw), estimate(last, **kw)
    assert a.logits - b.logits == 8 * 127 * every.vocab * 2
    assert b.logits == 8 * every.vocab * (2 + 4 + 8 + 8)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_kv_cache_estimate_is_what_hf_keeps(tiny_dirs, arch):
    """Generate with HF's cache; its keys and values are the estimate (a sliding layer keeps
    window - 1 positions in this transformers version: the estimate allows the window)."""
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch])
    B, T, N = 3, 30, 5
    ids = torch.randint(5, 200, (B, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = hf(ids, use_cache=True)
        for _ in range(N):
            out = hf(out.logits[:, -1:].argmax(-1), past_key_values=out.past_key_values)
    held = sum(
        t.numel() * t.element_size() for c in out.past_key_values.layers for t in (c.keys, c.values)
    )
    shape = ModelShape.from_config(tiny_dirs[arch])
    plan = estimate(shape, batch_size=B, prompt_tokens=T, new_tokens=N, dtype="float32")
    one_position = B * 2 * shape.n_kv_heads * shape.d_head * 4
    assert held <= plan.kv_cache <= held + shape.sliding_layers * one_position
    if arch == "gemma3":  # the window saves memory
        assert shape.sliding_layers == 3 and plan.kv_cache < shape.n_layers * (T + N) * one_position


def test_plan_batch_takes_the_largest_batch_that_fits():
    shape = ModelShape.from_config(LLAMA_32_1B)
    kw = dict(prompt_tokens=600, new_tokens=100, dtype="bfloat16")
    plan = plan_batch(shape, memory=80 * GIB, **kw)
    assert plan.fits and plan.weights == 2 * shape.n_params and not plan.weights_resident
    more = estimate(shape, batch_size=plan.batch_size + 1, memory=80 * GIB, **kw)
    assert not more.fits and plan.budget == more.budget
    # every buffer but the weights grows linearly with the batch
    two = estimate(shape, batch_size=2 * plan.batch_size, **kw)
    assert two.total - two.weights == 2 * (plan.total - plan.weights)
    # loaded weights are not counted again; a cap is a cap
    whole = plan_batch(shape, memory=80 * GIB, margin=0.0, **kw)
    free = 80 * GIB - whole.weights
    resident = plan_batch(shape, memory=free, weights_resident=True, margin=0.0, **kw)
    assert resident.batch_size == whole.batch_size > plan.batch_size
    assert plan_batch(shape, memory=80 * GIB, max_batch=8, **kw).batch_size == 8
    d = plan.to_dict()
    assert d["batch_size"] == plan.batch_size and d["gib"]["weights"] == pytest.approx(2.3, 0.01)


def test_a_shared_prefix_is_planned_once_for_one_row():
    """The detection sweep at the studies' scale (benchmarks/RESULTS.md): 128-token prompts of
    which 106 are shared, 32 new tokens. Only the activations change: the shared prefix's for
    one row, and each row's rest of the prompt attending to all of it."""
    gemma = ModelShape.from_config(GEMMA3_27B)
    kw = dict(prompt_tokens=128, new_tokens=32, dtype="bfloat16")
    B, T, S = 512, 128, 106
    whole = estimate(gemma, batch_size=B, **kw)
    shared = estimate(gemma, batch_size=B, shared_tokens=S, **kw)
    assert (shared.kv_cache, shared.logits) == (whole.kv_cache, whole.logits)
    width = (6 * gemma.d_model + 3 * gemma.d_mlp) * 2
    scores = gemma.n_heads * (2 * 2 + 4)
    assert whole.activations == B * T * width + B * T * T * scores
    assert shared.activations == (B * (T - S) + S) * width + (B * (T - S) * T + S * S) * scores
    assert shared.to_dict()["shared_tokens"] == S and whole.to_dict()["shared_tokens"] == 0
    # the largest batch that fits, computed with the prefix counted once
    plan = plan_batch(gemma, memory=40 * GIB, weights_resident=True, shared_tokens=S, **kw)
    more = estimate(gemma, batch_size=plan.batch_size + 1, memory=40 * GIB,
                    weights_resident=True, shared_tokens=S, **kw)  # fmt: skip
    assert plan.fits and not more.fits
    assert (
        plan.batch_size > plan_batch(gemma, memory=40 * GIB, weights_resident=True, **kw).batch_size
    )
    for bad in (-1, T):
        with pytest.raises(ValueError, match="shared_tokens must be an int"):
            estimate(gemma, batch_size=1, shared_tokens=bad, **kw)


def test_a_plan_that_cannot_fit_names_the_fixes():
    gemma = ModelShape.from_config(GEMMA3_27B)
    kw = dict(prompt_tokens=600, new_tokens=100)
    with pytest.raises(MemoryPlanError, match=r"(?s)needs .* GiB.*bfloat16.*--n-devices") as e:
        plan_batch(gemma, dtype="float32", memory=80 * GIB, **kw)
    assert isinstance(e.value, ValueError)
    one = plan_batch(gemma, dtype="bfloat16", memory=80 * GIB, **kw)  # 54 GB of weights fit
    assert one.batch_size >= 1 and one.weights == 2 * gemma.n_params
    split = plan_batch(gemma, dtype="bfloat16", memory=80 * GIB, n_devices=2, **kw)
    assert split.weights == one.weights // 2 and split.batch_size > one.batch_size
    with pytest.raises(MemoryPlanError) as e:  # 54 GB of weights on a 40 GB device
        plan_batch(gemma, dtype="bfloat16", memory=40 * GIB, **kw)
    fixes = str(e.value).split("Fixes:")[1]
    assert "--n-devices" in fixes and "bfloat16" not in fixes and "smaller batch" not in fixes
    big = estimate(gemma, batch_size=512, dtype="bfloat16", memory=80 * GIB, **kw)
    assert big.fits is False and "a smaller batch" in no_fit_message(big)


def test_the_cpu_reports_its_memory():
    free = device_memory("cpu")
    assert free is None or free > 0
