"""Activation and attribution patching: identities on tiny random models, both backends."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from mechintro.analysis.patching import (
    COMPONENTS,
    activation_patch,
    attribution_patch,
    heatmap,
    knock_in,
    knock_out,
    last_position,
    yes_no_gap,
)
from mechintro.inject import Injection, injected
from mechintro.models import forward
from mechintro.prompts import Prompt, encode

pytestmark = pytest.mark.identity

LAYER = 1  # injection layer
TEXT = "Now, Trial 1: Do you see it?"
TWIN = "Now, Trial 2: Do you own it?"  # same token length as TEXT (byte-level tokenizer)


def _batch(model, *texts: str):
    return encode(model.tokenizer, [Prompt.text(t) for t in texts or (TEXT,)])


def _vector(model, batch, rows: int = 1, seed: int = 0) -> torch.Tensor:
    """Random directions scaled to the mean residual norm at LAYER, so that strengths are
    comparable across architectures."""
    seen = {}

    def grab(x, hook):
        seen["x"] = x.detach()
        return x

    with model.hooks(fwd_hooks=[(f"blocks.{LAYER}.hook_resid_post", grab)]):
        forward(model, batch.input_ids, batch.attention_mask)
    norm = float(seen["x"].norm(dim=-1).mean())
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(rows, model.cfg.d_model, generator=g)
    v = v / v.norm(dim=-1, keepdim=True) * norm
    return v[0] if rows == 1 else v


# --- the reference: transformer_lens.patching (one forward per cell) -----------------------


# every arch: the residual stream, the MLP output and whole heads; the rest on the pre-norm
# (llama) and the sandwich-norm (gemma3) layouts only, to keep the reference's 1-cell
# forwards few
TL_CASES = {
    "resid_pre": ("each", "get_act_patch_resid_pre", ("llama", "qwen3", "gemma3", "olmo2")),
    "mlp_out": ("each", "get_act_patch_mlp_out", ("llama", "qwen3", "gemma3", "olmo2")),
    "head": ("all", "get_act_patch_attn_head_out_all_pos", ("llama", "qwen3", "gemma3", "olmo2")),
    "attn_out": ("each", "get_act_patch_attn_out", ("llama", "gemma3")),
    "resid_mid": ("each", "get_act_patch_resid_mid", ("llama", "gemma3")),
    "head_by_pos": ("each", "get_act_patch_attn_head_out_by_pos", ("gemma3",)),
}


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3", "olmo2"])
def test_matches_transformer_lens_patching(arch, tiny_dirs):
    from transformer_lens import patching as tlp

    from mechintro.models import load_model

    model = load_model(tiny_dirs[arch], backend="hooked")
    clean, corrupt = _batch(model, "Is it?"), _batch(model, "Or it?")
    metric = yes_no_gap(model)
    _, clean_cache = model.run_with_cache(clean.input_ids)

    def tl_metric(logits):
        return metric(logits).sum()

    for case, (positions, name, archs) in TL_CASES.items():
        if arch not in archs:
            continue
        ref = getattr(tlp, name)(model, corrupt.input_ids, clean_cache, tl_metric)
        component = case.removesuffix("_by_pos")
        ours = activation_patch(model, corrupt, clean, component=component, positions=positions)
        values = ours.values[:, 0] if positions == "all" else ours.values
        assert values.shape == ref.shape, case
        torch.testing.assert_close(values, ref.float(), atol=1e-5, rtol=0, msg=case)
        assert float(ref.std()) > 1e-3  # the sweep is not flat: the comparison means something


def test_matches_transformer_lens_patching_on_the_bridge(tiny_dirs):
    from transformer_lens import patching as tlp

    from mechintro.models import load_model

    model = load_model(tiny_dirs["llama"], backend="bridge")
    clean, corrupt = _batch(model, "Is it?"), _batch(model, "Or it?")
    metric = yes_no_gap(model)
    _, clean_cache = model.run_with_cache(clean.input_ids)
    ref = tlp.get_act_patch_resid_pre(
        model, corrupt.input_ids, clean_cache, lambda lg: metric(lg).sum()
    )
    ours = activation_patch(model, corrupt, clean, component="resid_pre")
    torch.testing.assert_close(ours.values, ref.float().cpu(), atol=1e-5, rtol=0)  # GPU too
    assert float(ref.std()) > 1e-3


# --- identities ---------------------------------------------------------------------------


def test_patching_everything_recovers_source_and_before_the_injection_nothing(model):
    batch = _batch(model)
    inj = Injection(LAYER, _vector(model, batch), 1.0, mode="from-trial")
    for run in (knock_in, knock_out):
        pre = run(model, batch, inj, component="resid_pre", positions="all")
        post = run(model, batch, inj, component="resid_post", positions="all")
        src, tgt = float(pre.source_value), float(pre.target_value)
        assert abs(src - tgt) > 1e-3, "the injection must move the metric"
        for layer in range(model.cfg.n_layers):
            # the injection is added at the output of block LAYER: everything patched after
            # it is the source run's stream; before it, the target's own injection (or its
            # absence) takes over again
            want_pre = src if layer > LAYER else tgt
            want_post = src if layer >= LAYER else tgt
            assert float(pre.values[layer, 0]) == pytest.approx(want_pre, abs=1e-5), layer
            assert float(post.values[layer, 0]) == pytest.approx(want_post, abs=1e-5), layer
        torch.testing.assert_close(pre.recovered[LAYER + 1 :, 0], torch.ones(2), atol=1e-4, rtol=0)


def test_patching_identical_activations_leaves_the_target(model):
    """Before the injection starts, source and target activations are identical (causal
    attention): those rows must give the target metric exactly although they share their
    forward passes with rows whose patches do change the result."""
    batch = _batch(model)
    start = int(batch.position("trial")[0])
    inj = Injection(LAYER, _vector(model, batch), 1.0, mode="from-trial")
    res = knock_out(model, batch, inj, component="resid_post", batch_size=1024)
    tgt = float(res.target_value)
    early = res.values[:, :start]
    torch.testing.assert_close(early, torch.full_like(early, tgt), atol=1e-5, rtol=0)
    assert float(res.effect[LAYER:, start:].abs().max()) > 1e-3


def test_the_source_and_target_runs_ride_in_the_patched_forwards(model):
    """No forward of their own: every forward carries the source rows (the patches read
    them at the same hook), the first also the unpatched target; chunked or not, the same
    cells."""
    batch = _batch(model)
    inj = Injection(LAYER, _vector(model, batch), 1.0, mode="from-trial")
    n = model.cfg.n_layers
    rows: list[int] = []

    def count(x, hook):
        rows.append(x.shape[0])
        return x

    kw = {"component": "resid_pre", "positions": "all"}
    with model.hooks(fwd_hooks=[("hook_embed", count)]):
        one = knock_in(model, batch, inj, **kw)
        assert rows == [n + 2]
        rows.clear()
        chunked = knock_in(model, batch, inj, batch_size=3, **kw)
    # 1 cell + source + target, then 2 cells + source per forward
    assert rows == [3] + [3] * ((n - 1) // 2) + [2] * ((n - 1) % 2)
    torch.testing.assert_close(one.rows, chunked.rows, atol=1e-5, rtol=0)
    assert float(one.effect.abs().max()) > 1e-3


def test_both_runs_steered_give_each_runs_own_metric(model):
    """A source and a target injection at different layers, in the same forwards: each
    steers only its own rows (the source and target values are those of each run alone),
    and patching the last block's output everywhere gives the source run's value."""
    batch = _batch(model)
    v = _vector(model, batch, rows=2, seed=1)
    src = Injection(LAYER, v[0], 1.0, mode="from-trial")
    tgt = Injection(LAYER + 1, v[1], 1.0, mode="all")
    metric = yes_no_gap(model)
    alone = {}
    for key, inj in (("src", src), ("tgt", tgt)):
        with injected(model, inj, batch):
            alone[key] = float(metric(forward(model, batch.input_ids, batch.attention_mask)))
    assert abs(alone["src"] - alone["tgt"]) > 1e-3
    last = model.cfg.n_layers - 1
    res = activation_patch(
        model,
        batch,
        component="resid_post",
        positions="all",
        layers=[0, last],
        source_injection=src,
        target_injection=tgt,
    )
    assert float(res.source_value) == pytest.approx(alone["src"], abs=1e-5)
    assert float(res.target_value) == pytest.approx(alone["tgt"], abs=1e-5)
    assert float(res.values[1, 0]) == pytest.approx(alone["src"], abs=1e-5)
    # block 0's output comes before either injection: patching it changes nothing
    assert float(res.values[0, 0]) == pytest.approx(alone["tgt"], abs=1e-5)


def test_batched_equals_row_by_row_and_each_prompt_alone(model):
    """Left-padded rows of different lengths, one injection vector each: every cell of a
    batched sweep equals the same cell run one per forward, and each prompt run alone
    (positions counted from the end, where padding does not shift them)."""
    batch = _batch(model, "Is it?", "Is it red, or?")
    inj = Injection(LAYER, _vector(model, batch, rows=2), [1.0, 0.5], mode="all")
    for component in ("mlp_out", "head"):
        kw = {"component": component, "positions": [-3, -2, -1], "layers": [2, 3]}
        together = knock_in(model, batch, inj, batch_size=4096, **kw)
        one_by_one = knock_in(model, batch, inj, batch_size=1, **kw)
        torch.testing.assert_close(together.rows, one_by_one.rows, atol=1e-5, rtol=0)
        for i in range(2):
            alone_inj = Injection(LAYER, inj.vector[i], inj.strength[i], mode="all")
            alone = knock_in(model, batch.rows([i]), alone_inj, **kw)
            torch.testing.assert_close(together.rows[..., i], alone.values, atol=1e-5, rtol=0)
        assert float(together.effect.abs().max()) > 1e-3


def test_attribution_tracks_activation_patching(model):
    """At a small perturbation the gradient estimate must match real patching: a flipped
    gradient sign or difference direction gives a slope of −1 and fails."""
    batch = _batch(model, "Is it red?")
    inj = Injection(LAYER, _vector(model, batch), 0.03, mode="all")
    for run in (knock_in, knock_out):
        for component in ("resid_pre", "head"):
            kw = {"component": component, "layers": [2, 3]}
            est = run(model, batch, inj, method="attribution", **kw).effect.flatten()
            real = run(model, batch, inj, **kw).effect.flatten()
            corr = float(torch.corrcoef(torch.stack([est, real]))[0, 1])
            slope = float(est @ real / (real @ real))
            assert corr > 0.95, (run.__name__, component, corr)
            assert 0.8 < slope < 1.25, (run.__name__, component, slope)


def test_attribution_baselines_are_the_runs_metrics(model):
    batch = _batch(model)
    inj = Injection(LAYER, _vector(model, batch), 1.0, mode="all")
    est = attribution_patch(model, batch, target_injection=inj, component="resid_pre")
    real = activation_patch(model, batch, target_injection=inj, component="resid_pre")
    torch.testing.assert_close(est.target_value, real.target_value, atol=1e-5, rtol=0)
    torch.testing.assert_close(est.source_value, real.source_value, atol=1e-5, rtol=0)
    assert est.method == "attribution" and real.method == "activation"


def test_gemma_module_output_site_is_before_the_post_norm(tiny_dirs):
    from mechintro.models import load_model

    bridge = load_model(tiny_dirs["gemma3"], backend="bridge")
    batch = _batch(bridge)
    _, cache = bridge.run_with_cache(batch.input_ids)
    site = COMPONENTS["mlp_module_out"].format(layer=2)
    torch.testing.assert_close(cache[site], cache["blocks.2.ln2_post.hook_in"])
    assert not torch.allclose(cache[site], cache["blocks.2.hook_mlp_out"], atol=1e-3)
    # a whole-vector patch before the norm writes the source's normed output: same result
    inj = Injection(LAYER, _vector(bridge, batch), 1.0, mode="all")
    kw = {"layers": [2, 3], "positions": [3, -1]}
    before = knock_in(bridge, batch, inj, component="mlp_module_out", **kw)
    after = knock_in(bridge, batch, inj, component="mlp_out", **kw)
    torch.testing.assert_close(before.values, after.values, atol=1e-5, rtol=0)
    assert before.hook == "blocks.{layer}.mlp.hook_out" != after.hook
    hooked = load_model(tiny_dirs["gemma3"], backend="hooked")
    with pytest.raises(ValueError, match="bridge"):
        knock_in(hooked, batch, inj, component="mlp_module_out")


def test_resid_mid_is_refused_on_the_bridge(tiny_dirs):
    """The bridge's hook_resid_mid is the pre-MLP norm's input: patching it there moves only
    the MLP's input. On HookedTransformer it is the residual stream itself: patching it at
    every position gives the source run's metric at every layer."""
    from mechintro.models import load_model

    for backend in ("bridge", "hooked"):
        model = load_model(tiny_dirs["llama"], backend=backend)
        clean, corrupt = _batch(model, "Is it?"), _batch(model, "Or it?")
        kw = {"component": "resid_mid", "positions": "all"}
        if backend == "bridge":
            with pytest.raises(ValueError, match="resid_mid.*backend='hooked'"):
                activation_patch(model, corrupt, clean, **kw)
            continue
        res = activation_patch(model, corrupt, clean, **kw)
        want = res.source_value.expand(model.cfg.n_layers)
        torch.testing.assert_close(res.values[:, 0], want, atol=1e-5, rtol=0)
        assert float((res.source_value - res.target_value).abs()) > 1e-3


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["bridge", "hooked"])
def test_bad_input_is_refused_with_the_fix(backend, tiny_dirs, monkeypatch):
    from mechintro.models import load_model

    model = load_model(tiny_dirs["llama"], backend=backend)
    batch = _batch(model)
    T = batch.length
    with pytest.raises(ValueError, match="unknown component 'mlp'.*mlp_out"):
        activation_patch(model, batch, component="mlp")
    with pytest.raises(ValueError, match=r"out of range.*use 0\.\.3"):
        activation_patch(model, batch, layers=[4])
    with pytest.raises(ValueError, match=rf"position {T} is out of range.*0\.\.{T - 1}"):
        activation_patch(model, batch, positions=[T])
    with pytest.raises(ValueError, match="'each', 'all'"):
        activation_patch(model, batch, positions="every")
    with pytest.raises(ValueError, match="equal token length"):
        activation_patch(model, batch, _batch(model, TEXT + "!"))
    with pytest.raises(ValueError, match="one source row per target row"):
        activation_patch(model, batch, _batch(model, TEXT, TWIN))
    with pytest.raises(ValueError, match="one value per row"):
        activation_patch(model, batch, metric=lambda logits: logits[:, -1, 0].sum())
    with pytest.raises(ValueError, match="batch_size"):
        activation_patch(model, batch, batch_size=0)
    with pytest.raises(ValueError, match="'activation' or 'attribution'"):
        knock_in(model, batch, Injection(LAYER, torch.ones(64), 1.0), method="gradient")
    # the bridge silently ignores hooks it does not have: we must not
    monkeypatch.setitem(COMPONENTS, "bogus", "blocks.{layer}.hook_bogus")
    with pytest.raises(ValueError, match="no hook 'blocks.0.hook_bogus'.*resid_pre"):
        activation_patch(model, batch, component="bogus")


# --- the result object ---------------------------------------------------------------------


def test_result_labels_top_frame_and_heatmap(tiny_dirs):
    from mechintro.models import load_model

    model = load_model(tiny_dirs["qwen3"], backend="hooked")
    batch = _batch(model)
    inj = Injection(LAYER, _vector(model, batch), 1.0, mode="all")
    res = knock_in(model, batch, inj, component="head", layers=[2, 3], positions=["last", 4])
    assert res.dims == ("layer", "position", "head")
    assert res.values.shape == (2, 2, model.cfg.n_heads)
    assert res.positions == (batch.length - 1, 4)
    best_label, best = res.top(1)[0]
    flat = res.effect.flatten()
    i = int(flat.abs().argmax())
    assert best == pytest.approx(float(flat[i])) and res.labels()[i] == best_label
    lay, pos, head = (int(x) for x in torch.unravel_index(torch.tensor(i), res.values.shape))
    assert best_label.startswith(f"L{res.layers[lay]}H{head} {res.positions[pos]} ")
    assert [v for _, v in res.top(3, by="negative")] == sorted(flat.tolist())[:3]
    frame = res.to_frame()
    assert len(frame) == res.values.numel()
    row = frame.iloc[i]
    assert (row["layer"], row["position"], row["head"]) == (
        3 if lay else 2,
        res.positions[pos],
        head,
    )
    assert row["value"] == pytest.approx(float(res.values.flatten()[i]))
    fig = heatmap(res)
    assert len(fig.data[0].z) == 2 * model.cfg.n_heads and len(fig.data[0].x) == 2


def test_heavy_imports_stay_lazy():
    code = (
        "import sys, mechintro.analysis.patching, mechintro.analysis.dla; "
        "bad = [m for m in ('plotly', 'pandas') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_last_position_metric_sees_one_position_and_gives_the_same_values(model):
    """A metric marked by last_position gets the last position's logits only (on the bridge
    and its twin; a HookedTransformer computes all) and the same values as unmarked."""
    batch = _batch(model)
    inj = Injection(LAYER, _vector(model, batch), 8.0)
    seen = []

    def gap(logits):
        seen.append(logits.shape[1])
        return logits[:, -1, 0] - logits[:, -1, 1]

    full = knock_in(model, batch, inj, component="resid_pre", layers=[0, 2], metric=gap)
    assert set(seen) == {batch.length}
    seen.clear()
    marked = last_position(gap)
    assert marked is gap and yes_no_gap(model).last_position_only
    last = knock_in(model, batch, inj, component="resid_pre", layers=[0, 2], metric=marked)
    assert set(seen) == {1 if model.__class__.__name__ == "TransformerBridge" else batch.length}
    torch.testing.assert_close(last.values, full.values, atol=1e-5, rtol=0)
    torch.testing.assert_close(last.source_value, full.source_value, atol=1e-5, rtol=0)
