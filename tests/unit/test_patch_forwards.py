"""Patching's forwards on a bridge's twin: the prebuilt attention mask, the forwards a CUDA
graph replays (here without capture; with it, kept across sweeps: tests/gpu)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import vecs

from mechintro.analysis.patching import COMPONENTS, activation_patch, knock_in
from mechintro.engine.twin import full_mask, full_mask_applies, twin_hooks, twin_logits, twin_of
from mechintro.inject import Injection
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
        built = twin(
            ids,
            attention_mask=full_mask(twin, mask),
            position_ids=position_ids(mask),
            use_cache=False,
        ).logits
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
