"""LoRA adapters folded into a model's weights without peft (core: torch and safetensors only).

The file format is :func:`mechintro.training.lora.save_lora`'s: ``NAME.lora_A`` [r, in] and
``NAME.lora_B`` [out, r] per adapted ``nn.Linear`` (``NAME`` its logical name, TransformerLens
wrapper segments dropped), the scale ``alpha / r`` in the metadata. :func:`fold_lora` is what
:func:`mechintro.training.lora.apply_lora` and the built-in adapted models
(:data:`mechintro.models.BUILTIN_ADAPTERS`) run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


@torch.no_grad()
def fold_lora(hf: nn.Module, path: str | Path) -> int:
    """Fold the adapters in ``path`` into ``hf``'s weights, in place: ``W ← W + scale · B A``
    (peft's merge, without peft). Modules are found by logical name, so a bridge's wrapped
    projections take them too. Returns the number of adapted modules; a name the model lacks
    or a shape mismatch is an error."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if "scale" not in meta:
            raise ValueError(f"{path} has no 'scale' metadata: not written by save_lora")
        scale = float(meta["scale"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    linears = {
        n.replace("._original_component", ""): m
        for n, m in hf.named_modules()
        if isinstance(m, nn.Linear)
    }
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    missing = [n for n in names if n not in linears]
    if missing:
        raise KeyError(f"the model has no linear modules {missing[:3]}: a different model?")
    for n in names:
        w = linears[n].weight
        delta = scale * tensors[f"{n}.lora_B"].float() @ tensors[f"{n}.lora_A"].float()
        if delta.shape != w.shape:
            raise ValueError(f"{n}: adapter gives {tuple(delta.shape)}, weight is {tuple(w.shape)}")
        w.add_(delta.to(device=w.device, dtype=w.dtype))
    return len(names)


__all__ = ["fold_lora"]
