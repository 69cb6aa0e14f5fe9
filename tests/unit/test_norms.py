"""Compiled RMSNorms (mechintro.engine.norms): opt in, on CUDA only; on the CPU the twin keeps
the eager reference, and every generation records which norms ran. The compiled kernels
themselves are compared with eager norms on the GPU (tests/gpu/test_cuda_graphs.py)."""

from __future__ import annotations

import pytest
from transformers import AutoModelForCausalLM

from mechintro.engine.norms import COMPILED, norm_modules, norms_of, set_norms
from mechintro.engine.twin import twin_of
from mechintro.generation import generate, use_norms
from mechintro.models import load_model


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3", "olmo2"])
def test_every_rmsnorm_is_found_and_compiled_then_restored(tiny_dirs, arch):
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch])
    norms = norm_modules(hf)
    layers = hf.config.num_hidden_layers
    assert len(norms) >= 2 * layers + 1  # two per block at least, and the final norm
    forward = type(norms[0]).forward
    set_norms(hf, COMPILED)
    assert norms_of(hf) == COMPILED
    assert all(m.forward is not forward and "forward" in vars(m) for m in norms)
    set_norms(hf, "eager")
    assert norms_of(hf) == "eager"
    assert all("forward" not in vars(m) and m.forward.__func__ is forward for m in norms)


def test_compiled_norms_apply_on_cuda_only(tiny_dirs):
    model = load_model(tiny_dirs["llama"])
    assert use_norms(model, COMPILED) == "eager"  # the CPU: the eager reference
    assert norms_of(twin_of(model)) == "eager"
    gen = generate(model, ["Hi there"], max_new_tokens=2)
    assert gen.record.settings["norms"] == "eager"
    with pytest.raises(ValueError, match="use one of eager, compiled"):
        use_norms(model, "fused")
    assert use_norms(model) == "eager"
