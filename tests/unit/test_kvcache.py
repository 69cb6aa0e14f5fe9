"""The KV cache is written on every generation path, on every supported transformers.

transformers 5.24 hands each attention module its cache as ``cache=``; TransformerBridge 3.9
reads only ``past_key_values``. These tests fail when the bridge's alias
(:func:`mechintro.kvcache.alias_bridge_cache`) or the length guard
(:func:`mechintro.kvcache.check_cache`) is removed.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from tiny_models import vecs

from mechintro.generation import generate
from mechintro.inject import Injection
from mechintro.kvcache import (
    CacheNotWritten,
    alias_bridge_cache,
    cache_kwarg,
    cache_length,
    check_cache,
)
from mechintro.models import load_model
from mechintro.prompts import Prompt, encode

pytestmark = pytest.mark.identity

LAYER = 1


def _batch(model):
    prompts = [
        Prompt.chat("Trial 1: Do you detect an injected thought?"),
        Prompt.chat("Hi. Trial 2: anything?"),
    ]
    return encode(model.tokenizer, prompts)


def _injection(model, batch) -> Injection:
    v = vecs(model, 2, seed=1)
    return Injection(layer=LAYER, vector=v, strength=[4.0, 0.0], mode="from-trial")


def _runs(model, **kw):
    batch = _batch(model)
    inj = _injection(model, batch)
    args = dict(injection=inj, max_new_tokens=8, stop_ids=[], keep_logits=True, **kw)
    return {
        "bridge cached": generate(model, batch, fast=False, use_cache=True, **args),
        "bridge uncached": generate(model, batch, fast=False, use_cache=False, **args),
        "twin cached": generate(model, batch, fast=True, use_cache=True, **args),
    }


def _assert_same(runs) -> None:
    ref = runs["bridge uncached"]
    for name, run in runs.items():
        assert run.tokens == ref.tokens, name
        for a, b in zip(run.logits or [], ref.logits or [], strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_bridge_cache_equals_no_cache_and_the_twin(bridge, temperature) -> None:
    runs = _runs(bridge, temperature=temperature, seed=3)
    assert runs["bridge cached"].record.settings["path"] == "bridge"
    assert runs["twin cached"].record.settings["path"] == "twin"
    _assert_same(runs)


def test_organism_bridge_cache_equals_no_cache_and_the_twin() -> None:
    organism = load_model("builtin:organism")
    _assert_same(_runs(organism))


def test_no_deprecation_warning_from_our_cache_calls(bridge) -> None:
    batch = _batch(bridge)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for fast in (False, True):
            generate(bridge, batch, fast=fast, max_new_tokens=3, stop_ids=[])


def _hide_cache(module, args, kwargs):
    """A pre-hook standing in for an attention that does not see its cache."""
    return args, {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values")}


def _attention_modules(root):
    return [m for name, m in root.named_modules() if name.endswith("self_attn")]


@pytest.mark.parametrize("fast", [False, True])
def test_the_guard_refuses_a_cache_that_is_not_written(bridge, fast) -> None:
    from mechintro.engine.twin import twin_of

    root = twin_of(bridge) if fast else bridge.original_model
    handles = [
        m.register_forward_pre_hook(_hide_cache, with_kwargs=True) for m in _attention_modules(root)
    ]
    assert handles
    try:
        with pytest.raises(CacheNotWritten, match=f"on the {'twin' if fast else 'bridge'} path"):
            generate(bridge, _batch(bridge), fast=fast, max_new_tokens=3, share_prefix=False)
        # without the cache the same hidden attention is right: nothing is refused
        generate(bridge, _batch(bridge), fast=fast, max_new_tokens=3, use_cache=False)
    finally:
        for h in handles:
            h.remove()


def test_check_cache_counts_positions() -> None:
    from transformers import DynamicCache

    cache = DynamicCache()
    k = torch.zeros(1, 2, 5, 4)
    cache.update(k, k, 0)
    assert cache_length(cache) == 5
    check_cache(cache, 5, path="twin")
    with pytest.raises(CacheNotWritten, match="holds 5 positions after 6 tokens"):
        check_cache(cache, 6, path="twin")
    with pytest.raises(CacheNotWritten, match="holds 0 positions"):
        check_cache(None, 3, path="bridge")


def test_alias_is_what_writes_the_bridge_cache_where_attention_gets_cache(tiny_dirs) -> None:
    """Without :func:`alias_bridge_cache` the bridge's cache stays empty on transformers
    ≥ 5.24 (caught by the guard); with it, it holds every token. On older transformers the
    attention still gets ``past_key_values`` and the alias is a no-op."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    folder = tiny_dirs["llama"]
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
    tok = AutoTokenizer.from_pretrained(folder)
    raw = TransformerBridge.boot_transformers(str(folder), hf_model=hf, tokenizer=tok)
    ids = encode(tok, [Prompt.chat("Trial 1: anything?")]).input_ids
    kw = cache_kwarg(raw.original_model)

    def held() -> int:
        cache = DynamicCache(config=raw.original_model.config)
        raw(ids, use_cache=True, **{kw: cache})
        return cache_length(cache)

    if kw == "cache":  # transformers >= 5.24: TransformerBridge alone misses its cache
        assert held() == 0
    alias_bridge_cache(raw)
    alias_bridge_cache(raw)  # once only
    assert held() == ids.shape[1]
