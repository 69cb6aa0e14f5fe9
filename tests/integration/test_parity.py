"""The parity self-check: what each check compares, on which path, and when it passes."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from importlib import metadata
from itertools import chain

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mechintro.analysis import parity
from mechintro.analysis.parity import ParityReport, independent_hf, parity_check
from mechintro.experiments.protocols.detection import detection_prompt
from mechintro.models import load_model
from mechintro.prompts import Prompt

pytestmark = pytest.mark.identity

PROMPT = "Trial 1: Do you detect an injected thought?"


def test_parity_passes_on_every_arch_and_both_generation_paths(bridge):
    report = parity_check(bridge, PROMPT, layer=1)
    assert report.ok(atol=1e-4), report
    assert list(report.paths) == ["twin", "bridge"]
    assert report.backend_vs_hf == 0.0 and report.twin_vs_bridge == 0.0
    assert report.not_run == {} and report.errors == {}
    assert report.cache_vs_nocache == max(p["cache_vs_nocache"] for p in report.paths.values())


def test_parity_on_the_organism():
    organism = load_model("builtin:organism")
    report = parity_check(organism, detection_prompt(1))
    assert report.ok(atol=1e-4), report
    assert list(report.paths) == ["twin", "bridge"] and report.backend_vs_hf == 0.0


def test_a_hooked_model_is_checked_against_the_hf_model_given(tiny_dir):
    hooked = load_model(tiny_dir, backend="hooked")
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation="eager").eval()
    report = parity_check(hooked, PROMPT, layer=1, hf_model=hf)
    assert report.ok(atol=1e-4), report
    assert list(report.paths) == ["hooked"] and report.twin_vs_bridge is None
    assert report.backend_vs_hf > 0  # its own kernels: rounding, not the same computation


def test_a_hooked_model_without_its_hf_model_is_not_checked_and_does_not_pass(tiny_dirs):
    hooked = load_model(tiny_dirs["llama"], backend="hooked")
    report = parity_check(hooked, PROMPT, layer=1)
    assert math.isnan(report.backend_vs_hf)
    assert report.not_run == {"backend_vs_hf": "no HF model given (pass hf_model=)"}
    assert not report.ok(atol=1e-4)
    assert report.ok(atol=1e-4, allow_missing=("backend_vs_hf",)), report
    assert "backend_vs_hf     not run: no HF model given" in str(report)


def test_backend_vs_hf_compares_the_bridge_with_an_independent_copy(tiny_dirs, monkeypatch):
    model = load_model(tiny_dirs["gemma3"])  # tied embeddings, and tensors the bridge added
    wrapped = model.original_model
    copy = independent_hf(model)
    assert type(copy) is type(wrapped) and copy is not wrapped
    assert not any("transformer_lens" in type(m).__module__ for m in copy.modules())
    ours = {t.data_ptr() for t in chain(copy.parameters(), copy.buffers())}
    assert not ours & {t.data_ptr() for t in chain(model.parameters(), model.buffers())}
    assert copy.lm_head.weight is copy.model.embed_tokens.weight  # still tied

    real = parity.independent_hf

    def perturbed(m):
        c = real(m)
        c.model.layers[0].mlp.down_proj.weight.data[0, 0] += 1.0
        return c

    monkeypatch.setattr(parity, "independent_hf", perturbed)
    report = parity_check(model, PROMPT, layer=1)
    assert report.backend_vs_hf > 1e-3 and not report.ok(atol=1e-4)
    assert report.batch_vs_single <= 1e-4 and report.cache_vs_nocache <= 1e-4


def test_backend_vs_hf_uses_the_hf_model_given(tiny_dirs):
    folder = tiny_dirs["llama"]
    model = load_model(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    assert parity_check(model, PROMPT, layer=1, hf_model=hf).backend_vs_hf == 0.0
    with torch.no_grad():
        hf.model.layers[1].self_attn.o_proj.weight[0, 0] += 1.0
    assert parity_check(model, PROMPT, layer=1, hf_model=hf).backend_vs_hf > 1e-3


@contextmanager
def attention_without_cache(model):
    """The bridge's attention never sees the KV cache (transformer-lens 3.9's attention
    under transformers 5.24 before mechintro.kvcache: it reads the cache under another
    name)."""
    from transformer_lens.model_bridge.generalized_components import AttentionBridge

    def drop(module, args, kwargs):
        return args, {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values")}

    attns = [m for m in model.modules() if isinstance(m, AttentionBridge)]
    handles = [m.register_forward_pre_hook(drop, with_kwargs=True) for m in attns]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def test_a_cache_broken_on_the_bridge_path_alone_fails_the_check(tiny_dirs):
    model = load_model(tiny_dirs["llama"])
    with attention_without_cache(model):
        report = parity_check(model, PROMPT, layer=1)
    assert report.paths["twin"]["cache_vs_nocache"] <= 1e-4  # the twin's cache is its own
    # generation's guard (mechintro.kvcache) raises; the check reports it, as inf
    assert report.paths["bridge"]["cache_vs_nocache"] == math.inf == report.cache_vs_nocache
    assert list(report.errors) == ["bridge"] and "CacheNotWritten" in report.errors["bridge"]
    assert "bridge path raised CacheNotWritten" in str(report)
    assert report.twin_vs_bridge == 0.0  # uncached, both paths still agree
    assert not report.ok(atol=1e-4)


def test_raw_prompts_on_a_model_without_a_chat_template(tiny_dirs, notemplate_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(notemplate_tokenizer_dir)
    assert not tok.chat_template
    model = load_model(tiny_dirs["llama"], tokenizer=tok)
    raw = f"Human: {PROMPT}\n\nAssistant:"
    for prompt in (raw, Prompt.text(raw)):  # text is raw where there is no chat template
        report = parity_check(model, prompt, layer=1)
        assert report.ok(atol=1e-4), report
    with pytest.raises(ValueError, match="no chat template"):
        parity_check(model, Prompt.chat(PROMPT))


def test_the_prompt_is_padded_beside_a_neighbour_of_its_kind(tiny_dirs, monkeypatch):
    model = load_model(tiny_dirs["llama"])
    seen = []
    real = parity.encode

    def spy(tok, prompts, **kw):
        batch = real(tok, prompts, **kw)
        seen.append((prompts, batch))
        return batch

    monkeypatch.setattr(parity, "encode", spy)
    long = Prompt.text("A raw prompt longer than the neighbour's first try. " * 4)
    parity_check(model, long, layer=1, new_tokens=1)
    pairs = [(p, b) for p, b in seen if len(p) == 2]
    assert len(pairs) > 1 and pairs[-1][1].n_pad[0] > 0  # the neighbour grew until it padded
    prompts = pairs[-1][0]
    assert prompts[0] == long and prompts[1].raw is not None  # raw beside raw
    parity_check(model, Prompt.chat(PROMPT), layer=1, new_tokens=1)
    assert [p for p, _ in seen if len(p) == 2][-1][1].messages  # chat beside chat


def test_ok_never_counts_a_check_not_run_or_nan_as_a_pass():
    def report(**values):
        fields = dict(backend_vs_hf=0.0, batch_vs_single=0.0, cache_vs_nocache=0.0)
        fields.update(twin_vs_bridge=None, paths={"hooked": {}}, backend="hooked")
        return ParityReport(**{**fields, **values}, dtype="float32", device="cpu")

    assert report().ok(atol=1e-4)
    for name in ("backend_vs_hf", "batch_vs_single", "cache_vs_nocache", "twin_vs_bridge"):
        assert not report(**{name: math.nan}).ok(atol=1e-4), name
        assert not report(**{name: math.inf}).ok(atol=1e-4), name
    missing = report(backend_vs_hf=math.nan, not_run={"backend_vs_hf": "no HF model given"})
    assert not missing.ok(atol=1e-4)
    assert missing.ok(atol=1e-4, allow_missing=["backend_vs_hf"])
    assert not missing.ok(atol=1e-4, allow_missing=["batch_vs_single"])
    ran = report(backend_vs_hf=1.0, not_run={})
    assert not ran.ok(atol=1e-4, allow_missing=["backend_vs_hf"])  # it ran: its value counts
    with pytest.raises(ValueError, match="unknown checks"):
        missing.ok(atol=1e-4, allow_missing=["backend"])
    assert "not run: no HF model given" in str(missing)


def test_the_report_names_its_paths_and_exact_versions(tiny_dirs):
    report = parity_check(load_model(tiny_dirs["qwen3"]), PROMPT, layer=1, new_tokens=2)
    d = report.to_dict()
    assert set(d["paths"]) == {"twin", "bridge"}
    for pkg in ("torch", "transformers", "transformer-lens", "sae-lens"):
        assert d["versions"][pkg] == metadata.version(pkg)
    assert ParityReport.from_dict(json.loads(json.dumps(d))) == report
