"""CUDA graphs: a captured decode step and a captured patching forward, replayed, give what the
same steps and forwards give eagerly, bit for bit (on the GPU machine; skipped without CUDA).

On the CPU, tests/unit/test_twin.py and tests/unit/test_patch_forwards.py run the same paths
without capture.
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from tiny_models import long_window_gemma3, vecs

from mechintro.analysis import patch_forwards
from mechintro.analysis.patching import knock_in
from mechintro.engine import decode
from mechintro.engine.attention import GROUPED
from mechintro.engine.twin import twin_of
from mechintro.generation import generate, use_attention, use_norms
from mechintro.inject import Injection
from mechintro.models import load_model
from mechintro.prompts import Prompt, encode

pytestmark = [
    pytest.mark.identity,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device"),
]

LAYER = 1  # injection layer


def _trial(n: int) -> Prompt:
    history = [("user", "I will ask you a few questions."), ("assistant", "Ok.")]
    return Prompt.chat(f"Trial {n}: Do you detect an injected thought?", history=history)


def _same(eager, graph) -> None:
    assert graph.tokens == eager.tokens and len(graph.logits) == len(eager.logits) > 0
    assert all(torch.equal(a, b) for a, b in zip(eager.logits, graph.logits, strict=True))
    assert graph.record.injections == eager.record.injections
    assert graph.record.settings["shared_prefix"] == eager.record.settings["shared_prefix"]


def test_the_cuda_graph_replays_the_eager_steps_bit_for_bit(tiny_dirs, tmp_path):
    """Decode steps replayed from one captured graph give the tokens, logits and steered
    positions of the same steps run eagerly, greedy and sampled."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sdpa = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"], attn_implementation="sdpa")
    tok = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    gemma3 = long_window_gemma3(tiny_dirs["gemma3"], tmp_path / "gemma3")
    models = [
        load_model(tiny_dirs["llama"], backend="bridge", device="cuda"),  # eager attention
        load_model(sdpa, tokenizer=tok, backend="bridge", device="cuda"),
        load_model(gemma3, backend="bridge", device="cuda"),  # every layer in place
    ]
    for model in models:
        for attention in (GROUPED, "eager"):  # the CUDA default for these GQA models; HF's
            assert use_attention(model, attention) == attention
            batch = encode(model.tokenizer, [_trial(n) for n in (1, 4, 7)])
            inj = Injection(LAYER, vecs(model, 3), [6.0, 0.0, 3.0], mode="from-trial")
            for temperature in (0.0, 1.0):
                kw = {"max_new_tokens": 12, "temperature": temperature, "seed": 3}
                kw |= {"injection": inj, "keep_logits": True, "stop_ids": [], "static_cache": True}
                eager = generate(model, batch, cuda_graph=False, **kw)
                graph = generate(model, batch, cuda_graph=True, **kw)
                assert (
                    graph.record.settings["cuda_graph"] and not eager.record.settings["cuda_graph"]
                )
                _same(eager, graph)
                assert generate(model, batch, **kw).record.settings["cuda_graph"]  # the default
            # the capture is kept: a call with other vectors, strengths and prompts replays it
            # with those written into the tensors it reads
            captured = decode.held(twin_of(model))
            other = encode(model.tokenizer, [_trial(n) for n in (2, 5, 8)])
            inj = Injection(LAYER, vecs(model, 3, seed=2), [0.0, 5.0, 2.0], mode="from-trial")
            kw = {"max_new_tokens": 12, "injection": inj, "keep_logits": True, "stop_ids": []}
            graph = generate(model, other, cuda_graph=True, **kw)
            assert decode.held(twin_of(model)) is captured
            eager = generate(model, other, cuda_graph=False, static_cache=True, **kw)
            _same(eager, graph)
        use_attention(model)


def test_grouped_attention_matches_eager_on_cuda(tiny_dirs, tmp_path):
    """fp32 on the GPU: grouped attention (the CUDA default for GQA models) gives eager
    attention's greedy tokens, logits within 1e-4, through the captured decode step."""
    gemma3 = long_window_gemma3(tiny_dirs["gemma3"], tmp_path / "gemma3")
    for folder in (tiny_dirs["llama"], tiny_dirs["qwen3"], gemma3):
        model = load_model(folder, backend="bridge", device="cuda")
        assert use_attention(model) == GROUPED  # auto, on CUDA
        batch = encode(model.tokenizer, [_trial(n) for n in (1, 4, 7, 10)])  # 10: padding
        inj = Injection(LAYER, vecs(model, 4), [6.0, 0.0, 3.0, 2.0], mode="from-trial")
        kw = {"max_new_tokens": 12, "injection": inj, "keep_logits": True, "stop_ids": []}
        grouped = generate(model, batch, **kw)
        use_attention(model, "eager")
        eager = generate(model, batch, **kw)
        use_attention(model)
        assert grouped.record.settings["attention"] == GROUPED
        assert eager.record.settings["attention"] == "eager"
        assert grouped.record.settings["cuda_graph"] and grouped.tokens == eager.tokens
        for a, b in zip(grouped.logits, eager.logits, strict=True):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_patching_replays_its_forward_bit_for_bit(tiny_dirs, monkeypatch):
    """The patched forward captured once and replayed: the eager forwards' values, bit for
    bit, for the residual stream cell by cell and whole heads."""
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
        assert decode.held(twin(), "forward") is not None
        del model  # the kept capture holds its twin weakly: the model and its weights go
        gc.collect()
        assert twin() is None


def test_a_sweep_of_two_forwards_keeps_its_capture(tiny_dirs, monkeypatch):
    """A sweep whose cells fill exactly two forwards (the first eager, the second captured)
    keeps its capture, and the next sweep of that shape replays it: no forward runs eagerly
    twice before the capture (a regression: 1.38 ms per head cell on gemma3-1b where the
    kept capture gives 0.45, benchmarks/RESULTS.md)."""
    made: list[bool] = []

    def spy(fn, capture, device):
        made.append(capture)
        return decode.Replay(fn, capture, device)

    monkeypatch.setattr(patch_forwards, "Replay", spy)
    for arch in ("llama", "gemma3"):
        model = load_model(tiny_dirs[arch], backend="bridge", device="cuda")
        batch = encode(model.tokenizer, [Prompt.text("Is it?"), Prompt.text("So it?")])
        inj = Injection(LAYER, vecs(model, 2, seed=0), [1.0, 0.5], mode="all")
        cells = model.cfg.n_layers * model.cfg.n_heads
        per = -(-(cells + 1) // 2)  # two forwards (patching.activation_patch's split)
        kw = {"component": "head", "positions": "all", "batch_size": (per + 1) * len(batch)}
        eager = knock_in(model, batch, inj, cuda_graph=False, **kw)
        made.clear()
        first = knock_in(model, batch, inj, **kw)
        assert made == [True] and decode.held(twin_of(model), "forward") is not None, arch
        second = knock_in(model, batch, inj, **kw)
        assert made == [True], arch  # replayed the kept capture, none made
        assert torch.equal(first.rows, eager.rows) and torch.equal(second.rows, eager.rows)


def test_compiled_norms_match_eager_norms_through_the_graph(tiny_dirs, tmp_path):
    """fp32 on the GPU: compiled RMSNorms (one fused kernel each) give the eager norms'
    greedy tokens and logits within 1e-4, through the captured decode step (each new shape
    compiled in the Replay's eager first call, outside the capture) and through a graph
    replayed for a second call; the record names the norms that ran."""
    gemma3 = long_window_gemma3(tiny_dirs["gemma3"], tmp_path / "gemma3")
    for folder in (tiny_dirs["llama"], tiny_dirs["qwen3"], gemma3):
        model = load_model(folder, backend="bridge", device="cuda")
        batch = encode(model.tokenizer, [_trial(n) for n in (1, 4, 7, 10)])
        inj = Injection(LAYER, vecs(model, 4), [6.0, 0.0, 3.0, 2.0], mode="from-trial")
        kw = {"max_new_tokens": 12, "injection": inj, "keep_logits": True, "stop_ids": []}
        eager = generate(model, batch, **kw)
        assert use_norms(model, "compiled") == "compiled"
        compiled = generate(model, batch, **kw)
        again = generate(model, batch, **kw)  # the kept capture, replayed
        assert use_norms(model) == "eager"
        assert eager.record.settings["norms"] == "eager"
        assert compiled.record.settings["norms"] == "compiled"
        assert compiled.record.settings["cuda_graph"]
        for run in (compiled, again):
            assert run.tokens == eager.tokens
            for a, b in zip(run.logits, eager.logits, strict=True):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
