"""Patching's forwards on a bridge's twin: the prebuilt attention mask, the forwards a CUDA
graph replays (here without capture, on the GPU machine with it, kept across sweeps)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import vecs

from mechintro.analysis.patching import COMPONENTS, activation_patch, knock_in
from mechintro.engine.twin import full_mask, full_mask_applies, twin_hooks, twin_logits, twin_of
from mechintro.inject import Injection
from mechintro.models import load_model
from mechintro.prompts import Prompt, encode
from mechintro.prompts import positions as position_ids

pytestmark = pytest.mark.identity

LAYER = 1  # injection layer


def test_the_prebuilt_mask_is_the_one_transformers_builds(bridge):
    """full_mask given as the attention mask: transformers' own logits bit for bit (left
    padding, eager attention); not offered where a layer would build another."""
    twin = twin_of(bridge)
    batch = encode(bridge.tokenizer, [Prompt.text("Is it?"), Prompt.text("Is it red, or?")])
    ids, mask = batch.input_ids, batch.attention_mask
    assert full_mask_applies(twin, batch.length) and bool((mask == 0).any())
    with torch.no_grad():
        own = twin_logits(twin, ids, mask)
        built = twin(ids, attention_mask=full_mask(twin, mask), position_ids=position_ids(mask),
                     use_cache=False).logits  # fmt: skip
    assert torch.equal(own, built)
    window = getattr(twin.config, "sliding_window", None)
    assert full_mask_applies(twin, 4096) == (window is None or window >= 4096)
    sdpa = type("Config", (), {"_attn_implementation": "sdpa"})()
    assert not full_mask_applies(type("Twin", (), {"config": sdpa})(), 4)


def test_the_graph_paths_forwards_give_the_eager_values(bridge, monkeypatch):
    """The forwards a CUDA graph replays, run here without capture: every forward the same
    rows (the last padded), the prebuilt mask, the same hooks: the bridge's values."""
    from mechintro.analysis import patch_forwards, patching
    from mechintro.engine import decode

    monkeypatch.setattr(
        patching, "graph_applies", lambda twin, target, cuda_graph: twin is not None
    )
    monkeypatch.setattr(
        patch_forwards, "Replay", lambda fn, capture, device: decode.Replay(fn, False, device)
    )
    batch = encode(bridge.tokenizer, [Prompt.text("Is it?"), Prompt.text("Is it red, or?")])
    inj = Injection(LAYER, vecs(bridge, 2), [1.0, 0.5], mode="all")
    rows: list[int] = []
    spy = (COMPONENTS["resid_pre"].format(layer=0), lambda x, hook: rows.append(x.shape[0]))
    for component, positions in (("resid_pre", "each"), ("head", "all")):
        kw = {"component": component, "positions": positions, "batch_size": 7}
        slow = knock_in(bridge, batch, inj, fast=False, **kw)
        rows.clear()
        with twin_hooks(bridge, twin_of(bridge), [spy]):
            fast = knock_in(bridge, batch, inj, fast=True, **kw)
        assert torch.equal(fast.rows, slow.rows), component
        assert torch.equal(fast.source_value, slow.source_value)
        assert torch.equal(fast.target_value, slow.target_value)
        assert len(rows) > 2 and set(rows) == {6}  # source + 2 slots, of 2 rows each
        assert float(slow.effect.abs().max()) > 1e-3


def test_cuda_graph_true_needs_what_it_replays(bridge):
    batch = encode(bridge.tokenizer, [Prompt.text("Is it?")])
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        activation_patch(bridge, batch, layers=[0], cuda_graph=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_patching_replays_its_forward_bit_for_bit(tiny_dirs, monkeypatch):
    """The patched forward captured once and replayed: the eager forwards' values, bit for
    bit, for the residual stream cell by cell and whole heads (run on the GPU machine)."""
    import gc
    import weakref

    from mechintro.analysis import patch_forwards
    from mechintro.engine import decode

    captured: list[bool] = []

    def spy(fn, capture, device):
        captured.append(capture)
        return decode.Replay(fn, capture, device)

    monkeypatch.setattr(patch_forwards, "Replay", spy)
    texts = [("Is it?", "Is it red, or?"), ("So it?", "Is it odd, or?")]  # equal lengths
    for arch in ("llama", "gemma3"):
        model = load_model(tiny_dirs[arch], backend="bridge", device="cuda")
        batches = [encode(model.tokenizer, [Prompt.text(t) for t in pair]) for pair in texts]
        injs = [
            Injection(LAYER, vecs(model, 2, seed=i), s, mode=m)
            for i, (s, m) in enumerate((([1.0, 0.5], "all"), ([0.0, 2.0], "single-token")))
        ]
        for component, positions in (("resid_pre", "each"), ("head", "all")):
            kw = {"component": component, "positions": positions, "batch_size": 7}
            for i, (batch, inj) in enumerate(zip(batches, injs, strict=True)):
                eager = knock_in(model, batch, inj, cuda_graph=False, **kw)
                captured.clear()
                graph = knock_in(model, batch, inj, **kw)  # the default on a GPU
                # captured by the first sweep; the second, with other prompts, vectors and
                # strengths written into the tensors it reads, replays the kept capture
                assert captured == ([True] if i == 0 else []), (arch, component, i)
                assert torch.equal(graph.rows, eager.rows), (arch, component, i)
                assert torch.equal(graph.source_value, eager.source_value)
                assert torch.equal(graph.target_value, eager.target_value)
                assert float(eager.effect.abs().max()) > 1e-3
        twin = weakref.ref(twin_of(model))
        assert twin() in decode._FORWARDS
        del model  # the kept capture holds its twin weakly: the model and its weights go
        gc.collect()
        assert twin() is None
