"""Loading on both backends, offline, and their logits against HF and each other."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mechintro.inject import Injection, injected
from mechintro.models import check_layer, forward, load_model, model_info
from mechintro.prompts import Prompt, encode

pytestmark = pytest.mark.identity


def test_bridge_equals_hf_exactly(tiny_dir):
    model = load_model(tiny_dir)
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager").eval()
    batch = encode(model.tokenizer, [Prompt.chat("Trial 1: hello"), Prompt.chat("hi")])
    with torch.no_grad():
        ref = hf(
            batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=(batch.attention_mask.cumsum(-1) - 1).clamp(min=0),
        ).logits
        got = forward(model, batch.input_ids, batch.attention_mask)
    assert torch.equal(got, ref)


def test_bridge_and_hooked_agree_with_and_without_injection(tiny_dir):
    bridge, hooked = load_model(tiny_dir), load_model(tiny_dir, backend="hooked")
    batch = encode(bridge.tokenizer, [Prompt.chat("Trial 1: hello"), Prompt.chat("Trial 2: hi")])
    real = batch.attention_mask.bool()  # padded positions hold no defined value on either side
    v = torch.randn(bridge.cfg.d_model, generator=torch.Generator().manual_seed(0))
    inj = Injection(1, v, [4.0, 0.0], mode="from-trial")
    plain, steered = [], []
    with torch.no_grad():
        for m in (bridge, hooked):
            plain.append(forward(m, batch.input_ids, batch.attention_mask)[real])
            with injected(m, inj, batch):
                steered.append(forward(m, batch.input_ids, batch.attention_mask)[real])
    assert torch.allclose(plain[0], plain[1], atol=1e-4)
    assert torch.allclose(steered[0], steered[1], atol=1e-4)
    assert not torch.allclose(steered[0], plain[0], atol=1e-2)  # the injection did something


def test_load_from_object_and_offline_folder(tiny_dirs, monkeypatch):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked for something")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_hub)
    folder = tiny_dirs["llama"]
    from_folder = load_model(folder)
    assert model_info(from_folder).source == "local"
    hf = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    from_obj = load_model(hf, tokenizer=tok, name="tiny-llama")
    info = model_info(from_obj)
    assert (info.name, info.source, info.backend) == ("tiny-llama", "object", "bridge")
    ids = encode(tok, [Prompt.chat("hello")]).input_ids
    with torch.no_grad():
        assert torch.equal(from_folder(ids), from_obj(ids))


def test_loading_errors_name_the_fix(tmp_path, tiny_dirs, unchecked):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither a model folder nor a .gguf"):
        load_model(tmp_path / "missing")
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"])
    with pytest.raises(ValueError, match="needs tokenizer="):
        load_model(hf)
    with unchecked(), pytest.raises(ValueError, match="backend must be one of"):
        load_model(tiny_dirs["llama"], backend="jax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="revision= applies to Hub names only"):
        load_model(tiny_dirs["llama"], revision="main")


def test_layer_validation(model):
    n = model.cfg.n_layers
    assert check_layer(model, n - 1) == n - 1
    with pytest.raises(ValueError, match=f"use 0..{n - 1}"):
        check_layer(model, n)
    with pytest.raises(ValueError, match="out of range"):
        check_layer(model, -1)
    with pytest.raises(TypeError, match="layer_at_depth"):
        check_layer(model, 0.6)


@pytest.mark.parametrize("backend", ["bridge", "hooked"])
def test_model_keeps_the_checkpoint_tokenizer(tiny_dirs, backend):
    """Both backends would swap in an add_bos_token=True copy; raw text must tokenise as HF."""
    for arch, folder in tiny_dirs.items():
        model = load_model(folder, backend=backend)
        ref = AutoTokenizer.from_pretrained(folder)
        text = "Human: Tell me about dust.\n\nAssistant:"
        assert model.tokenizer(text).input_ids == ref(text).input_ids, arch
        assert model.cfg.d_vocab == AutoModelForCausalLM.from_pretrained(folder).config.vocab_size
