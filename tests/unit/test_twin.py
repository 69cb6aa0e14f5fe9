"""The fast path: a bridge's plain HF twin gives the bridge's numbers, for every architecture.

Each test runs the same call twice, ``fast=False`` (the TransformerBridge itself) and
``fast=True`` (its twin), and compares: logits (fp32 on the CPU: bit-equal, except with the
static KV cache, whose attention also sums over masked empty slots: within 1e-5), greedy and
sampled tokens, steered positions, patching values. Every test also checks that the fast run
did take the twin path.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import long_window_gemma3, vecs

from mechintro.analysis.patching import COMPONENTS, activation_patch, knock_in, knock_out
from mechintro.engine.twin import (
    fast_twin,
    hf_site,
    injected_on,
    twin_hooks,
    twin_logits,
    twin_of,
)
from mechintro.generation import fast_path, generate, readout, use_attention
from mechintro.inject import Injection, PositionMode, injected
from mechintro.models import load_model, resid_post
from mechintro.prompts import Prompt, encode

pytestmark = pytest.mark.identity

LAYER = 1
ATOL = 1e-5  # StaticCache vs DynamicCache: the same attention, summed in another order


def _shared(n: int) -> Prompt:
    history = [("user", "I will ask you a few questions."), ("assistant", "Ok.")]
    return Prompt.chat(f"Trial {n}: Do you detect an injected thought?", history=history)


def _mixed() -> list[Prompt]:
    """Left padding: rows of different lengths, one with a marked span."""
    return [
        Prompt.chat("Trial 1: Do you detect an injected thought?"),
        Prompt.chat("Hi. Trial 3: anything?", marks={"greeting": "Hi."}),
        _shared(10),
    ]


def _both(model, batch, **kw):
    slow = generate(model, batch, fast=False, keep_logits=True, stop_ids=[], **kw)
    fast = generate(model, batch, fast=True, keep_logits=True, stop_ids=[], **kw)
    assert slow.record.settings["path"] == "bridge"
    assert fast.record.settings["path"] == "twin"
    return slow, fast


def _same_generation(slow, fast, exact: bool = True) -> None:
    assert fast.tokens == slow.tokens
    assert len(fast.logits or []) == len(slow.logits or []) > 0
    for a, b in zip(slow.logits or [], fast.logits or []):
        if exact:
            assert torch.equal(b, a)
        else:
            torch.testing.assert_close(b, a, atol=ATOL, rtol=0)
    assert fast.record.injections == slow.record.injections
    assert fast.record.settings["shared_prefix"] == slow.record.settings["shared_prefix"]


# --- the twin itself ------------------------------------------------------------------------


def test_the_twin_shares_every_tensor_and_has_no_hook_point(bridge):
    from transformer_lens.hook_points import HookPoint

    twin = twin_of(bridge)
    assert twin_of(bridge) is twin  # built once
    hf = bridge.original_model
    assert type(twin) is type(hf)
    assert twin.config._attn_implementation == hf.config._attn_implementation
    assert not any(isinstance(m, HookPoint) for m in twin.modules())
    ours = dict(twin.named_parameters(remove_duplicate=False))
    ours |= dict(twin.named_buffers(remove_duplicate=False))
    theirs = dict(hf.named_parameters(remove_duplicate=False))
    theirs |= dict(hf.named_buffers(remove_duplicate=False))
    theirs = {n.replace("._original_component", ""): t for n, t in theirs.items()}
    assert set(ours) <= set(theirs)  # the bridge also names some modules twice (aliases)
    for name, t in ours.items():
        assert not t.is_meta, name
        assert t.data_ptr() == theirs[name].data_ptr(), name
    assert {id(p) for p in twin.parameters()} == {id(p) for p in bridge.parameters()}


def test_the_twin_forward_is_the_bridge_forward_bit_for_bit(bridge):
    batch = encode(bridge.tokenizer, _mixed())
    ids, mask = batch.input_ids, batch.attention_mask
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = bridge(ids, attention_mask=mask, position_ids=pos)
        got = twin_logits(twin_of(bridge), ids, mask)
    assert torch.equal(got, want)


def test_weights_changed_on_the_bridge_are_the_twins(bridge):
    batch = encode(bridge.tokenizer, _mixed()[:1])
    twin = twin_of(bridge)
    weight = twin.model.layers[LAYER].mlp.down_proj.weight
    assert any(weight is p for p in bridge.parameters())  # the bridge's own Parameter
    before = twin_logits(twin, batch.input_ids, batch.attention_mask)
    with torch.no_grad():
        weight.mul_(2.0)
        changed = twin_logits(twin, batch.input_ids, batch.attention_mask)
        weight.div_(2.0)
    assert not torch.allclose(changed, before)
    assert torch.equal(twin_logits(twin, batch.input_ids, batch.attention_mask), before)


# --- generation -------------------------------------------------------------------------------


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_shared_prefix_per_row_injections_greedy_and_sampled(bridge, static):
    """One preamble computed once; rows steered with their own vector and strength, one
    control row at strength 0; greedy and sampled runs give the bridge's tokens."""
    batch = encode(bridge.tokenizer, [_shared(n) for n in (1, 4, 7)])
    inj = Injection(LAYER, vecs(bridge, 3), [6.0, 0.0, 3.0], mode="from-trial")
    for temperature in (0.0, 1.0):
        kw = {"max_new_tokens": 8, "temperature": temperature, "seed": 3}
        slow, fast = _both(bridge, batch, injection=inj, static_cache=static, **kw)
        assert slow.record.settings["shared_prefix"] > 8
        assert fast.record.settings["static_cache"] is static
        _same_generation(slow, fast, exact=not static)
        plain = generate(bridge, batch, fast=True, stop_ids=[], keep_logits=True, **kw)
        assert not torch.allclose((plain.logits or [])[0][0], (fast.logits or [])[0][0])


@pytest.mark.parametrize("cache", ["kv", "nokv", "static"])
def test_every_position_mode_on_a_padded_batch(bridge, cache):
    batch = encode(bridge.tokenizer, _mixed())
    kw = {"use_cache": cache != "nokv", "static_cache": cache == "static"}
    for mode in PositionMode:
        b, start = (batch.rows([1]), "greeting") if mode is PositionMode.SPAN else (batch, "trial")
        vs = vecs(bridge, len(b))
        inj = Injection(LAYER, vs, [2.0, -3.0, 1.5][: len(b)], mode=mode, start=start)
        slow, fast = _both(bridge, b, injection=inj, max_new_tokens=4, **kw)
        _same_generation(slow, fast, exact=cache != "static")
        assert any(len(row) for row in fast.record.injections[0]["steered_positions"]), mode


def _long_window_gemma3(tiny_dirs, folder):
    """The tiny Gemma-3 with a sliding window (512) longer than any test's cache."""
    return load_model(long_window_gemma3(tiny_dirs["gemma3"], folder), backend="bridge")


def test_a_window_longer_than_the_cache_decodes_in_place(tiny_dirs, tmp_path):
    """Sliding-window layers that never slide keep their length in a tensor (what a CUDA
    graph replay updates) and compute what the bridge computes; a short window cannot."""
    from mechintro.engine.decode import in_place, make_static_cache

    short = load_model(tiny_dirs["gemma3"], backend="bridge")
    assert not in_place(make_static_cache(twin_of(short).config, 40))
    model = _long_window_gemma3(tiny_dirs, tmp_path / "gemma3")
    assert in_place(make_static_cache(twin_of(model).config, 40))
    assert not in_place(make_static_cache(twin_of(model).config, 600))
    batch = encode(model.tokenizer, [_shared(n) for n in (1, 4, 7)])
    inj = Injection(LAYER, vecs(model, 3), [6.0, 0.0, 3.0], mode="from-trial")
    slow, fast = _both(model, batch, injection=inj, static_cache=True, max_new_tokens=8)
    assert fast.record.settings["static_cache"]
    _same_generation(slow, fast, exact=False)


def test_a_kept_decode_step_computes_what_a_fresh_one_does(tiny_dirs, tmp_path):
    """The static cache and step buffers (on a GPU also the captured graph) are kept for
    the next call of the same shape: with other prompts and vectors, that call gives
    exactly what fresh ones give. A call of another shape replaces it."""
    from mechintro.engine import decode
    from mechintro.engine.step import Runner

    model = _long_window_gemma3(tiny_dirs, tmp_path / "gemma3")  # every layer in place
    twin = twin_of(model)
    decode.forget(twin)
    first = encode(model.tokenizer, [_shared(n) for n in (1, 4, 7)])
    second = encode(model.tokenizer, [_shared(n) for n in (2, 5, 8)])
    assert second.length == first.length
    kw = {"max_new_tokens": 6, "stop_ids": [], "keep_logits": True, "static_cache": True}
    kw |= {"temperature": 1.0, "seed": 5}
    a = Injection(LAYER, vecs(model, 3), [6.0, 0.0, 3.0], mode="from-trial")
    b = Injection(LAYER, vecs(model, 3, seed=1), [0.0, 4.0, 2.0], mode="from-trial")
    for share in (True, False):  # the preamble computed once and copied to every row, or not
        generate(model, first, injection=a, share_prefix=share, **kw)
        entry = decode.held(twin)
        read = entry.step.slots[0][0]  # the vectors' tensor a captured step reads
        reused = generate(model, second, injection=b, share_prefix=share, **kw)
        assert decode.held(twin) is entry
        assert entry.step.slots[0][0] is read  # holding the new call's vectors
        assert torch.equal(read, b.deltas(3).to(read.dtype))
        decode.forget(twin)
        fresh = generate(model, second, injection=b, share_prefix=share, **kw)
        _same_generation(fresh, reused)
        assert (reused.record.settings["shared_prefix"] > 0) is share
        decode.forget(twin)
    # the preamble's one-row KV is kept too, and computed again once the weights change
    for change in (False, True):
        generate(model, first, injection=a, **kw)
        preamble = decode.held(twin).preamble
        assert preamble is not None
        if change:
            with torch.no_grad():  # the bridge's own tensor, changed in place
                twin.model.layers[0].mlp.down_proj.weight.mul_(1.5)
        reused = generate(model, second, injection=b, **kw)
        assert (decode.held(twin).preamble is preamble) is not change
        decode.forget(twin)
        fresh = generate(model, second, injection=b, **kw)
        _same_generation(fresh, reused)
        decode.forget(twin)
    generate(model, second, injection=a, **kw)
    entry = decode.held(twin)

    def fail(self, n):
        raise RuntimeError("boom")

    with pytest.MonkeyPatch.context() as mp:  # a call that fails gives the kept step back
        mp.setattr(Runner, "prefill_shared", fail)
        with pytest.raises(RuntimeError, match="boom"):
            generate(model, second, injection=a, **kw)
    assert decode.held(twin) is entry
    generate(model, second.rows([0, 1]), **kw)  # another shape: its step replaces the kept
    assert decode.held(twin) is not entry
    entry = decode.held(twin)
    weight = twin.model.layers[0].mlp.down_proj.weight
    weight.data = weight.data.clone()  # the weights elsewhere (as after .to() and back)
    generate(model, second.rows([0, 1]), **kw)  # a graph would read the old place: not kept
    assert decode.held(twin) is not entry
    decode.forget()
    assert decode.held(twin) is None


def test_weights_made_under_inference_mode_are_never_taken_as_unchanged(tiny_dirs, tmp_path):
    """Inference tensors count no in-place changes: the kept preamble is then recomputed
    every call (and the weights' fingerprint still works)."""
    from mechintro.engine import decode
    from mechintro.models import fingerprint

    model = _long_window_gemma3(tiny_dirs, tmp_path / "gemma3")
    with torch.inference_mode():  # e.g. moved or cast under inference mode
        for p in model.parameters():
            p.data = p.data.clone()
    assert next(model.parameters()).is_inference()
    assert fingerprint(model) == fingerprint(model)
    batch = encode(model.tokenizer, [_shared(n) for n in (1, 4)])
    kw = {"max_new_tokens": 3, "static_cache": True, "stop_ids": [], "keep_logits": True}
    first = generate(model, batch, **kw)
    preamble = decode.held(twin_of(model)).preamble
    again = generate(model, batch, **kw)
    assert decode.held(twin_of(model)).preamble is not preamble
    _same_generation(first, again)


def test_a_kept_decode_step_does_not_keep_its_model_alive(tiny_dirs, tmp_path):
    """The kept step is held per twin, weakly: deleting the model frees the twin, its
    weights and the kept step."""
    import gc
    import weakref

    from mechintro.engine import decode

    model = _long_window_gemma3(tiny_dirs, tmp_path / "gemma3")
    batch = encode(model.tokenizer, [_shared(n) for n in (1, 4)])
    generate(model, batch, max_new_tokens=3, static_cache=True, stop_ids=[])
    twin = weakref.ref(twin_of(model))
    assert decode.held(twin()) is not None
    del model
    gc.collect()
    assert twin() is None


def test_cuda_graph_needs_what_it_replays(bridge):
    batch = encode(bridge.tokenizer, _mixed()[:1])
    bad = [{"static_cache": False}, {"use_cache": False}, {"fast": False}]
    if not torch.cuda.is_available():
        bad.append({})  # the CPU
    for kw in bad:
        with pytest.raises(ValueError, match="cuda_graph=True needs"):
            generate(bridge, batch, max_new_tokens=2, cuda_graph=True, **kw)
    assert not generate(bridge, batch, max_new_tokens=2).record.settings["cuda_graph"]


def test_zero_strength_is_bit_identical_to_no_injection_on_the_twin(bridge):
    batch = encode(bridge.tokenizer, _mixed())
    for mode in (PositionMode.ALL, PositionMode.FROM_TRIAL, PositionMode.SINGLE_TOKEN):
        inj = Injection(LAYER, vecs(bridge, 3), 0.0, mode=mode)
        kw = {"max_new_tokens": 4, "stop_ids": [], "keep_logits": True, "fast": True}
        zero = generate(bridge, batch, injection=inj, **kw)
        plain = generate(bridge, batch, **kw)
        assert zero.record.settings["path"] == "twin"
        for a, b in zip(zero.logits or [], plain.logits or []):
            assert torch.equal(a, b), mode


def test_several_injections_and_readout(bridge):
    batch = encode(bridge.tokenizer, _mixed())
    injs = [
        Injection(LAYER, vecs(bridge, 3), 2.0, mode="prompt-only"),
        Injection(LAYER + 1, vecs(bridge, 1, seed=1)[0], 1.0, mode="generation-only"),
    ]
    _same_generation(*_both(bridge, batch, injection=injs, max_new_tokens=4))
    slow = readout(bridge, batch, injection=injs, words=["Dust"], fast=False)
    fast = readout(bridge, batch, injection=injs, words=["Dust"], fast=True)
    assert torch.equal(fast.logits, slow.logits)
    assert torch.equal(fast.word_probs, slow.word_probs)


def test_the_bridge_path_runs_when_it_must(bridge, monkeypatch, tiny_dirs):
    """A hook a caller put on the bridge must fire, so it forces the bridge path; so does
    fast=False, and no environment variable changes it. A HookedTransformer has no twin."""
    batch = encode(bridge.tokenizer, _mixed()[:1])
    seen = []
    with bridge.hooks(fwd_hooks=[(resid_post(LAYER), lambda x, hook: seen.append(x.shape))]):
        assert fast_twin(bridge) is None
        out = generate(bridge, batch, max_new_tokens=3, stop_ids=[])
    assert out.record.settings["path"] == "bridge" and len(seen) == 3
    assert fast_twin(bridge) is not None
    assert generate(bridge, batch, max_new_tokens=1, fast=False).record.settings["path"] == (
        "bridge"
    )
    monkeypatch.setenv("MECHINTRO_FAST", "0")  # 0.1's switch: it switches nothing any more
    assert generate(bridge, batch, max_new_tokens=1).record.settings["path"] == "twin"
    hooked = load_model(tiny_dirs["llama"], backend="hooked")
    assert fast_twin(hooked, fast=True) is None


def test_no_hook_left_on_the_twin_after_an_exception(bridge, monkeypatch):
    from mechintro.engine.step import Runner

    batch = encode(bridge.tokenizer, _mixed())
    inj = Injection(LAYER, vecs(bridge, 3), 2.0)
    real_step = Runner.step
    calls = {"n": 0}

    def failing_step(self, new):
        calls["n"] += 1
        if calls["n"] == 3:
            assert any(m._forward_hooks for m in twin_of(bridge).modules())  # steered
            raise RuntimeError("boom")
        return real_step(self, new)

    def hooks() -> list[tuple[list, list]]:  # the twin's own (its unembedding's) included
        return [(list(m._forward_hooks), list(m._forward_pre_hooks)) for m in twin.modules()]

    twin = twin_of(bridge)
    before = hooks()
    monkeypatch.setattr(Runner, "step", failing_step)
    with pytest.raises(RuntimeError, match="boom"):
        generate(bridge, batch, injection=inj, max_new_tokens=5, fast=True)
    assert calls["n"] == 3
    assert hooks() == before


def test_injected_on_the_twin_steers_what_it_does_on_the_bridge(bridge):
    batch = encode(bridge.tokenizer, _mixed())
    inj = Injection(LAYER, vecs(bridge, 3), [1.0, 0.0, -2.0], mode="from-trial")
    pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with injected(bridge, inj, batch) as slow_log, torch.no_grad():
        want = bridge(batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos)
    twin = twin_of(bridge)
    with injected_on(bridge, twin, inj, batch) as fast_log, torch.no_grad():
        got = twin_logits(twin, batch.input_ids, batch.attention_mask)
    assert torch.equal(got, want)
    assert fast_log.steered_positions() == slow_log.steered_positions()


def test_fast_path_is_the_twin_steered_as_the_bridge(bridge):
    """The public fast_path: the twin, with the injection on it for the block."""
    batch = encode(bridge.tokenizer, _mixed())
    inj = Injection(LAYER, vecs(bridge, 3), [1.0, 0.0, -2.0], mode="from-trial")
    pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with injected(bridge, inj, batch), torch.no_grad():
        want = bridge(batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos)
    with fast_path(bridge, inj, batch) as hf, torch.no_grad():
        assert hf is twin_of(bridge)
        got = twin_logits(hf, batch.input_ids, batch.attention_mask)
    assert torch.equal(got, want)
    with fast_path(bridge) as hf, torch.no_grad():  # the injection's hooks are gone
        assert not torch.equal(twin_logits(hf, batch.input_ids, batch.attention_mask), want)
    with pytest.raises(ValueError, match="needs the batch"), fast_path(bridge, inj):
        pass
    hooked = bridge.hooks(fwd_hooks=[(resid_post(LAYER), lambda x, hook: x)])  # the bridge runs
    with hooked, pytest.raises(ValueError, match="no fast path here"), fast_path(bridge):
        pass


# --- patching ---------------------------------------------------------------------------------


def test_every_patching_site_gives_the_bridges_values(bridge):
    """Every component, at chosen positions and at all positions at once, knock-in and
    knock-out with one injection vector per (left-padded) row: bit-equal values."""
    batch = encode(bridge.tokenizer, [Prompt.text("Is it?"), Prompt.text("Is it red, or?")])
    inj = Injection(LAYER, vecs(bridge, 2), [1.0, 0.5], mode="all")
    for component in (c for c in COMPONENTS if c != "resid_mid"):  # refused on the bridge
        assert hf_site(bridge, COMPONENTS[component].format(layer=2)) is not None
        for run, positions in ((knock_in, [-3, -1]), (knock_out, "all")):
            kw = {"component": component, "positions": positions, "layers": [1, 2, 3]}
            slow = run(bridge, batch, inj, fast=False, **kw)
            fast = run(bridge, batch, inj, fast=True, **kw)
            assert torch.equal(fast.rows, slow.rows), (component, run.__name__)
            assert torch.equal(fast.target_value, slow.target_value)
            assert float(slow.effect.abs().max()) > 1e-3, component


def test_patching_takes_the_twin_path(bridge, monkeypatch):
    """The fast sweep runs no bridge forward: a bridge whose forward fails still patches."""
    batch = encode(bridge.tokenizer, [Prompt.text("Is it?")])

    def fail(*args, **kwargs):
        raise AssertionError("the bridge ran")

    monkeypatch.setattr(type(bridge), "forward", fail)
    res = activation_patch(bridge, batch, component="head", layers=[0], positions="all")
    assert res.values.shape == (1, 1, bridge.cfg.n_heads)
    with pytest.raises(AssertionError, match="the bridge ran"):
        activation_patch(bridge, batch, component="head", layers=[0], fast=False)


def test_hooks_on_the_twin_follow_the_bridges_order_and_conversion(bridge):
    """Per-head activations arrive as [batch, pos, head, d_head], as the bridge's hook_z."""
    batch = encode(bridge.tokenizer, _mixed()[:1])
    seen: dict[str, torch.Size] = {}
    name = COMPONENTS["head"].format(layer=0)

    def grab(x, hook):
        seen[hook.name] = x.shape

    with twin_hooks(bridge, twin_of(bridge), [(name, grab)]), torch.no_grad():
        twin_logits(twin_of(bridge), batch.input_ids, batch.attention_mask)
    (shape,) = seen.values()
    assert tuple(shape[2:]) == (bridge.cfg.n_heads, bridge.cfg.d_head)


def test_unmerged_adapters_keep_the_bridge_path(tiny_dirs):
    """LoRA modules inside the bridge's HF tree are not in a fresh model of that class: the
    twin would drop them, so every call runs on the bridge."""
    pytest.importorskip("peft")
    from mechintro.training.lora import LoRAConfig, add_lora

    model = load_model(tiny_dirs["llama"], backend="bridge")
    assert fast_twin(model) is not None
    add_lora(model.original_model, LoRAConfig())
    assert fast_twin(model, fast=True) is None
    with pytest.raises(RuntimeError, match="adapters"):
        twin_of(model)
    batch = encode(model.tokenizer, _mixed()[:1])
    assert generate(model, batch, max_new_tokens=1).record.settings["path"] == "bridge"


def test_the_twin_rechecks_the_bridges_tree_only_after_a_registration(tiny_dirs, monkeypatch):
    """Walking the wrapped tree per call is slow: it is walked again only once a module,
    parameter or buffer was registered; then an added tensor is seen."""
    model = load_model(tiny_dirs["llama"], backend="bridge")
    assert fast_twin(model) is not None
    hf = model.original_model
    walks: list[int] = []
    real = type(hf).modules
    monkeypatch.setattr(type(hf), "modules", lambda self: (walks.append(1), real(self))[1])
    assert fast_twin(model) is not None and fast_twin(model) is not None
    batch = encode(model.tokenizer, _mixed()[:1])
    generate(model, batch, max_new_tokens=2)  # a forward registers its own ModuleList slice
    assert fast_twin(model) is not None
    assert walks == []
    hf.register_buffer("extra", torch.zeros(1))  # a tensor the twin does not have
    assert fast_twin(model, fast=True) is None
    assert walks


def test_with_sdpa_the_twin_agrees_to_rounding(tiny_dirs):
    """The bridge computes attention itself (eagerly); the twin runs the implementation
    named in the HF config (the bridge sets eager there for some architectures, Gemma-3's
    among them). With eager, what load_model loads, that is bit-equal (above); with a Llama
    built for sdpa, as in the GPU benchmark, the two agree to float rounding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_dirs["llama"]
    hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa")
    model = load_model(hf, tokenizer=AutoTokenizer.from_pretrained(folder), backend="bridge")
    assert twin_of(model).config._attn_implementation == "sdpa"
    batch = encode(model.tokenizer, [_shared(n) for n in (1, 4, 7)])
    inj = Injection(LAYER, vecs(model, 3), [6.0, 0.0, 3.0], mode="from-trial")
    for static in (False, True):  # the static cache's decode steps build sdpa's bool mask
        slow, fast = _both(model, batch, injection=inj, max_new_tokens=6, static_cache=static)
        _same_generation(slow, fast, exact=False)


def test_a_replaced_wrapped_model_gets_a_new_twin(tiny_dirs):
    """The bridge's ``original_model`` setter rewires its components to another HF model
    without registering anything: the next call builds a twin of that model (the old one
    would compute with the old weights), keeping the attention asked for."""
    model = load_model(tiny_dirs["llama"], backend="bridge")
    other = load_model(tiny_dirs["llama"], backend="bridge")
    with torch.no_grad():
        for p in other.original_model.parameters():
            p.add_(0.01)
    batch = encode(model.tokenizer, _mixed()[:1])
    use_attention(model, "sdpa")
    before = twin_of(model)
    model.original_model = other.original_model
    after = fast_twin(model)
    assert after is not None and after is not before
    assert after.config._attn_implementation == "sdpa"
    with torch.no_grad():
        got = twin_logits(after, batch.input_ids, batch.attention_mask)
        want = model(batch.input_ids, attention_mask=batch.attention_mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    use_attention(model)
