"""Building a HookedTransformer offline from a Hugging Face model, without weight processing,
so that its logits match the HF model's (:func:`mechintro.models.load_model` with
``backend="hooked"``). TransformerLens 3.9 builds its config from a Hub query by official
name; :func:`to_hooked` writes the HF config to a temporary folder instead, and derives the
config of the architectures TL knows only by official name (:data:`HOOKED_CFG_FROM_HF`: Gemma-3,
OLMo-2) from the HF config itself (:func:`hooked_cfg_dict`). TransformerLens is imported
inside the functions.
"""

from __future__ import annotations

import copy
import math
import tempfile
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

#: architectures whose HookedTransformerConfig is derived from the HF config (TL 3.9 builds
#: them only from official names)
HOOKED_CFG_FROM_HF = ("Gemma3ForCausalLM", "Olmo2ForCausalLM")


def to_hooked(
    hf_model: Any,
    tok: Any,
    name: str,
    dtype: torch.dtype,
    device: str | torch.device,
    n_devices: int = 1,
) -> HookedTransformer:
    """Build a HookedTransformer offline from an HF model, without weight processing.

    ``HookedTransformer.from_pretrained`` accepts only official names and asks the Hub for
    the config; TransformerLens's loading functions accept a folder, so the config is
    written to a temporary one (its name must not contain "llama" or "gemma": TL picks
    architectures by substring) and the weights come from ``hf_model``. Gemma-3 and OLMo-2
    configs are built only from official names in TL 3.9, so :func:`hooked_cfg_dict`
    derives them from the HF config instead.
    """
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    config = copy.deepcopy(hf_model.config)
    # a config built from a GGUF file names no architecture; the model class does
    arch = (getattr(config, "architectures", None) or [type(hf_model).__name__])[0]
    config.architectures = [arch]
    with tempfile.TemporaryDirectory(prefix="mechintro-cfg-") as tmp:
        config.save_pretrained(tmp)
        if arch in HOOKED_CFG_FROM_HF:
            cfg_dict = hooked_cfg_dict(config, arch)
            cfg_dict.update(
                original_architecture=arch,
                model_name=name.rstrip("/").split("/")[-1],
                tokenizer_name=None,
                init_weights=False,
                device=str(device),
                n_devices=n_devices,
                dtype=dtype,
                default_prepend_bos=True,
                from_checkpoint=False,
            )
            cfg = HookedTransformerConfig.from_dict(cfg_dict)
        else:
            cfg = loading.get_pretrained_model_config(
                tmp, fold_ln=False, device=str(device), n_devices=n_devices, dtype=dtype
            )
        state = loading.get_pretrained_state_dict(tmp, cfg, hf_model=hf_model, dtype=dtype)
    cfg.model_name = name.rstrip("/").split("/")[-1]
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=True)
    model.load_and_process_state_dict(
        state,
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
        refactor_factored_attn_matrices=False,
    )
    return model.eval()


def hooked_cfg_dict(c: Any, arch: str) -> dict[str, Any]:
    """HookedTransformerConfig fields for a Gemma-3 or OLMo-2 HF config (any size)."""
    rope = getattr(c, "rope_parameters", None) or {}
    common = {
        "d_model": c.hidden_size,
        "d_head": getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        "n_heads": c.num_attention_heads,
        # None for MHA: TL names GQA weights _W_K/_W_V and the OLMo-2 converter does not
        "n_key_value_heads": (
            c.num_key_value_heads if c.num_key_value_heads != c.num_attention_heads else None
        ),
        "d_mlp": c.intermediate_size,
        "n_layers": c.num_hidden_layers,
        "n_ctx": min(c.max_position_embeddings, 8192),
        "eps": c.rms_norm_eps,
        "d_vocab": c.vocab_size,
        "initializer_range": c.initializer_range,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "gated_mlp": True,
    }
    if arch == "Olmo2ForCausalLM":
        theta = rope.get("rope_theta", getattr(c, "rope_theta", 10000.0))
        return {
            **common,
            "act_fn": c.hidden_act,
            "rotary_base": theta,
            "attn_types": ["global"] * c.num_hidden_layers,
        }
    types = list(c.layer_types)
    full, local = rope.get("full_attention", {}), rope.get("sliding_attention", {})
    return {
        **common,
        "act_fn": c.hidden_activation,
        "rotary_base": full.get("rope_theta", 1_000_000.0),
        "rotary_base_local": local.get("rope_theta", 10_000.0),
        "use_attn_scale": True,
        "attn_scale": math.sqrt(c.query_pre_attn_scalar),
        "final_rms": True,
        "use_normalization_before_and_after": True,
        "use_qk_norm": True,
        "use_local_attn": "sliding_attention" in types,
        "window_size": c.sliding_window,
        "attn_types": ["local" if t == "sliding_attention" else "global" for t in types],
    }
