"""Grouped-query attention that reads each K/V head once: no K/V repeat over the cache.

With grouped-query attention (GQA: ``H`` query heads share ``Hkv`` key/value heads, ``G =
H / Hkv`` each), transformers' eager attention repeats every K/V head ``G`` times over the
whole KV cache before its two products (``repeat_kv``), and its sdpa path does the same
whenever an attention mask is passed (the decode step always passes one). At a large batch
that copy is the largest kernel of a decode step: a Gemma-3-27B sweep at batch 128 spent
28.6% of its GPU time in it (``benchmarks/RESULTS.md``).

:func:`grouped_attention` instead folds the ``G`` query heads of a group into the query
axis (``[B, H, T, D]`` → ``[B, Hkv, G·T, D]``, query head ``h`` reading K/V head ``h // G``,
as ``repeat_kv`` pairs them), repeats the mask's rows per group (``[B, 1, T, S]`` →
``[B, 1, G·T, S]``: small, and a decode step's one row broadcasts as is) and runs torch's
``scaled_dot_product_attention`` on the unrepeated K/V, then unfolds the output. The same
function of the same inputs as eager attention; other kernels sum in another order, so the
numbers agree to rounding (fp32 on the CPU: within ``tests/unit/test_attention.py``'s
tolerance), not bit for bit.

It is registered with transformers under :data:`GROUPED` (attention and mask interfaces,
the mask built as for sdpa), once, by :func:`register`. :func:`choose` is the twin's rule
(:mod:`mechintro.engine.twin`): grouped where the model has GQA, runs on CUDA and its
config names eager or sdpa attention; elsewhere (the CPU fp32 reference path among them)
the config's own attention, bit for bit as before.
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

GROUPED = "mechintro_grouped"
"""The attention implementation's name, as a config's ``_attn_implementation``."""

REPLACES = ("eager", "sdpa")  # the implementations it stands in for (same function)
ATTENTIONS = ("auto", GROUPED, *REPLACES)  # what a caller may ask the twin for


def grouped_attention(
    module: torch.nn.Module,
    query: Float[Tensor, "batch heads q_len d_head"],
    key: Float[Tensor, "batch kv_heads kv_len d_head"],
    value: Float[Tensor, "batch kv_heads kv_len d_head"],
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Float[Tensor, "batch q_len heads d_head"], None]:
    """Attention over grouped K/V heads without repeating them (the module's doc says how).

    The signature of transformers' attention interface; ``attention_mask`` is boolean (True:
    attend) or additive, ``[B or 1, 1 or H, T, S]``, or None (causal, as sdpa then is).
    Sliding windows come in through the mask. A logit soft-cap is refused: sdpa has none.
    """
    if kwargs.get("softcap") is not None:
        raise ValueError(
            f"{GROUPED} attention has no logit soft-capping: load the model with eager "
            "attention for this architecture (attn_implementation='eager')"
        )
    B, H, T, D = query.shape
    Hkv = key.shape[1]
    if H % Hkv:
        raise ValueError(f"{H} query heads do not group over {Hkv} key/value heads")
    G = H // Hkv
    if attention_mask is None:  # causal: sdpa's own grouped path (no mask, nothing to fold)
        causal = T > 1 and bool(getattr(module, "is_causal", True))
        if causal and key.shape[2] > T:  # an empty static cache's unwritten tail
            key, value = key[:, :, :T], value[:, :, :T]
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, dropout_p=dropout, scale=scaling, is_causal=causal, enable_gqa=True
        )
        return out.transpose(1, 2).contiguous(), None
    q = query.reshape(B, Hkv, G * T, D)
    mask = attention_mask
    m, heads, S = mask.shape[0], mask.shape[1], mask.shape[-1]
    if G > 1 and (heads > 1 or T > 1):  # a decode step's one shared row broadcasts as is
        mask = mask.expand(m, heads, T, S)
        if heads == 1:  # one row of the mask per folded query row
            mask = mask[:, :, None].expand(m, 1, G, T, S)
        mask = mask.reshape(m, Hkv, G * T, S) if heads > 1 else mask.reshape(m, 1, G * T, S)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling
    )
    return out.reshape(B, H, T, value.shape[-1]).transpose(1, 2).contiguous(), None


_REGISTERED = [False]


def register() -> None:
    """Register :func:`grouped_attention` as :data:`GROUPED` with transformers (its mask
    built as for sdpa: boolean, None where causal without padding), once per process."""
    if _REGISTERED[0]:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(GROUPED, grouped_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(GROUPED, sdpa_mask)
    _REGISTERED[0] = True


def grouped(config: Any) -> bool:
    """Whether ``config``'s attention groups its query heads (fewer K/V heads than query
    heads) and has no logit soft-cap."""
    heads = getattr(config, "num_attention_heads", None)
    kv = getattr(config, "num_key_value_heads", None) or heads
    softcap = getattr(config, "attn_logit_softcapping", None)
    return heads is not None and kv < heads and softcap is None


def choose(native: str, config: Any, device: torch.device, wanted: str = "auto") -> str:
    """The attention the twin runs: ``wanted`` (one of :data:`ATTENTIONS`), where ``"auto"``
    means :data:`GROUPED` on CUDA for a grouped config (:func:`grouped`) whose own
    implementation ``native`` is eager or sdpa, and ``native`` elsewhere."""
    if wanted not in ATTENTIONS:
        raise ValueError(f"attention {wanted!r}: use one of {', '.join(ATTENTIONS)}")
    if wanted == "auto":
        auto = device.type == "cuda" and native in REPLACES and grouped(config)
        wanted = GROUPED if auto else native
    if wanted == GROUPED:
        if getattr(config, "attn_logit_softcapping", None) is not None:
            raise ValueError(
                f"attention {GROUPED!r}: this model soft-caps its attention logits, which sdpa "
                "cannot: use 'eager' or 'auto'"
            )
        register()
    return wanted
