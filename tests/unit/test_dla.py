"""Direct logit attribution: exact sums and real interventions on tiny random models.

The checkpoints' norm weights are randomised here (HF initialises them to 1, or to 0 for
Gemma's ``1 + w``), so a wrong weight convention cannot pass unnoticed.
"""

from __future__ import annotations

import pytest
import torch

from mechintro.analysis import dla
from mechintro.analysis.dla import LogitDirection, direct_logit_attribution, logit_direction
from mechintro.inject import Injection
from mechintro.models import forward
from mechintro.prompts import Prompt, PromptBatch, encode
from mechintro.tokens import NO_VARIANTS, YES_VARIANTS, first_token_ids

pytestmark = pytest.mark.identity

ARCHS = ("llama", "qwen3", "gemma3", "olmo2")
_CACHE: dict[tuple[str, str], object] = {}


def _load(tiny_dirs, arch: str, backend: str):
    """A tiny checkpoint with random norm weights (and biases), on ``backend``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechintro.models import load_model

    key = (arch, backend)
    if key not in _CACHE:
        folder = tiny_dirs[arch]
        hf = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager")
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in hf.named_parameters():
                if "norm" in name or name.endswith("bias"):
                    p.add_(0.3 * torch.randn(p.shape, generator=g))
        tok = AutoTokenizer.from_pretrained(folder)
        _CACHE[key] = load_model(hf.eval(), tokenizer=tok, backend=backend, name=arch)
    return _CACHE[key]


@pytest.fixture(params=[(a, b) for a in ARCHS for b in ("bridge", "hooked")], ids="-".join)
def model(request, tiny_dirs):
    return _load(tiny_dirs, *request.param)


def _batch(model):
    """Two left-padded rows of different lengths."""
    prompts = [
        Prompt.chat("Trial 1: Do you detect an injected thought?"),
        Prompt.chat("Hi. Trial 2: anything?"),
    ]
    return encode(model.tokenizer, prompts)


def _yes_no_mean_gap(model, logits: torch.Tensor) -> torch.Tensor:
    """mean logit of the Yes variants' first tokens minus the No variants', written out."""
    ys = sorted(set(first_token_ids(model.tokenizer, YES_VARIANTS)))
    ns = sorted(set(first_token_ids(model.tokenizer, NO_VARIANTS)))
    return logits[:, ys].mean(-1) - logits[:, ns].mean(-1)


def _injection(model):
    g = torch.Generator().manual_seed(0)
    return Injection(1, torch.randn(2, model.cfg.d_model, generator=g), [3.0, -2.0], mode="all")


# --- exact sums ------------------------------------------------------------------------------


@pytest.mark.parametrize("by", ["component", "head", "neuron"])
def test_rows_sum_to_the_logit_difference(model, by):
    batch = _batch(model)
    logits = forward(model, batch.input_ids, batch.attention_mask)[:, -1]
    res = direct_logit_attribution(model, batch, by=by)
    torch.testing.assert_close(res.target, _yes_no_mean_gap(model, logits), atol=1e-5, rtol=0)
    assert float(res.error.abs().max()) <= 1e-4
    assert float(res.target.abs().min()) > 1e-3  # a nonzero difference to explain
    assert res.per_row.shape == (len(res.labels), 2) == (len(res.kinds), 2)
    n = model.cfg.n_layers
    extra = {"component": 0, "head": model.cfg.n_heads - 1, "neuron": model.cfg.d_mlp - 1}[by]
    assert len([k for k in res.kinds if k != "bias"]) == 1 + 2 * n + n * extra


def test_rows_sum_under_injection_with_the_injected_vector_as_a_row(model):
    batch = _batch(model)
    inj = _injection(model)
    res = direct_logit_attribution(model, batch, by="head", injection=inj)
    assert float(res.error.abs().max()) <= 1e-4
    row = res.per_row[res.labels.index("L1.injection")]
    assert float(row.abs().min()) > 1e-4  # without this row the sum would miss it
    plain = direct_logit_attribution(model, batch)
    assert not torch.allclose(res.target, plain.target, atol=1e-3)


@pytest.mark.parametrize("by", ["head", "neuron"])
def test_heads_and_neurons_sum_to_their_block_output(model, by):
    batch = _batch(model)
    whole = direct_logit_attribution(model, batch)
    split = direct_logit_attribution(model, batch, by=by, layers=[0, 3])
    part, mark = ("attn", "H") if by == "head" else ("mlp", "N")
    for layer in range(model.cfg.n_layers):
        label = f"L{layer}.{part}"
        if layer in (0, 3):
            assert label not in split.labels
            mine = [
                i
                for i, lab in enumerate(split.labels)
                if lab.startswith((f"L{layer}{mark}", f"{label}."))
            ]
            assert len(mine) >= (model.cfg.n_heads if by == "head" else model.cfg.d_mlp)
            total = split.per_row[mine].sum(0)
        else:
            total = split.per_row[split.labels.index(label)]
        want = whole.per_row[whole.labels.index(label)]
        torch.testing.assert_close(total, want, atol=1e-5, rtol=0)


def _tcs(model, layers=(1, 3), d_sae: int = 40):
    from mechintro.analysis.transcoders import Transcoder

    d = model.cfg.d_model
    out = []
    for k, layer in enumerate(layers):
        g = torch.Generator().manual_seed(10 + k)
        out.append(
            Transcoder(
                layer=layer,
                W_enc=torch.randn(d, d_sae, generator=g) / d**0.5,
                b_enc=0.1 * torch.randn(d_sae, generator=g),
                W_dec=0.3 * torch.randn(d_sae, d, generator=g),
                b_dec=0.1 * torch.randn(d, generator=g),
                threshold=0.3 * torch.rand(d_sae, generator=g),
                skip=0.2 * torch.randn(d, d, generator=g),
            )
        )
    return out


def test_features_sum_to_their_mlp_and_are_activation_times_readout(model):
    from mechintro.analysis.transcoders import mlp_activations

    batch = _batch(model)
    tcs = _tcs(model)
    whole = direct_logit_attribution(model, batch, injection=_injection(model))
    feats = direct_logit_attribution(
        model, batch, by="feature", transcoders=tcs, injection=_injection(model)
    )
    assert float(feats.error.abs().max()) <= 1e-4
    torch.testing.assert_close(feats.target, whole.target, atol=1e-5, rtol=0)
    for tc in tcs:
        L = tc.layer
        assert f"L{L}.mlp" not in feats.labels
        mine = [i for i, lab in enumerate(feats.labels) if lab.startswith((f"L{L}F", f"L{L}.tc_"))]
        assert len(mine) == 40 + 3
        want = whole.per_row[whole.labels.index(f"L{L}.mlp")]
        torch.testing.assert_close(feats.per_row[mine].sum(0), want, atol=1e-5, rtol=0)
        # a feature's row is zero exactly where it is inactive at the read position
        io = mlp_activations(model, batch, [L], injection=_injection(model))
        last = [int(torch.nonzero(io.prompt == b).flatten()[-1]) for b in range(len(batch))]
        a = tc.encode(io.x[L][last])  # [row, d_sae] at each row's last token
        rows = torch.stack([feats.per_row[feats.labels.index(f"L{L}F{f}")] for f in range(40)])
        assert bool((a > 0).any()) and bool((a == 0).any())
        assert torch.equal(rows.T == 0, a == 0)
    with pytest.raises(ValueError, match="needs transcoders"):
        direct_logit_attribution(model, batch, by="feature")
    with pytest.raises(ValueError, match="for by='feature'"):
        direct_logit_attribution(model, batch, transcoders=tcs)


def test_backends_agree_row_by_row(tiny_dirs):
    for arch in ARCHS:
        bridge, hooked = _load(tiny_dirs, arch, "bridge"), _load(tiny_dirs, arch, "hooked")
        batch = _batch(bridge)
        for by in ("head", "neuron"):
            a = direct_logit_attribution(bridge, batch, by=by, layers=[2])
            b = direct_logit_attribution(hooked, batch, by=by, layers=[2])
            assert a.labels == b.labels, arch
            torch.testing.assert_close(a.per_row, b.per_row, atol=1e-4, rtol=0, msg=arch)


# --- every attribution checked by performing the intervention (HookedTransformer) ------------


def _gap(model, batch, hooks) -> torch.Tensor:
    with model.hooks(fwd_hooks=hooks):
        logits = forward(model, batch.input_ids, batch.attention_mask)[:, -1]
    return _yes_no_mean_gap(model, logits)


def _frozen_scales(model, batch, layer: int | None = None):
    """Hooks that pin the final norm's scale (and block ``layer``'s norms) to their clean
    values: with them, removing a part changes the logits only through its direct path."""
    names = ["ln_final.hook_scale"]
    if layer is not None:
        names += [n for n in model.hook_dict if n.startswith(f"blocks.{layer}.ln") and "scale" in n]
    clean = {}
    with model.hooks(fwd_hooks=[(n, _saver(clean, n)) for n in names]):
        forward(model, batch.input_ids, batch.attention_mask)
    return [(n, lambda x, hook, v=clean[n]: v) for n in names]


def _saver(store, name):
    def hook(x, hook):
        store[name] = x.detach().clone()
        return x

    return hook


@pytest.mark.parametrize("arch", ARCHS)
def test_each_direct_effect_equals_removing_that_part(tiny_dirs, arch):
    model = _load(tiny_dirs, arch, "hooked")
    batch = _batch(model)
    n, last = model.cfg.n_layers, model.cfg.n_layers - 1
    base = _gap(model, batch, [])
    acts: dict[str, torch.Tensor] = {}
    sites = ["blocks.0.hook_resid_pre"]
    labels = ["embed"]
    for ly in range(n):
        sites += [f"blocks.{ly}.hook_attn_out", f"blocks.{ly}.hook_mlp_out"]
        labels += [f"L{ly}.attn", f"L{ly}.mlp"]
    _gap(model, batch, [(s, _saver(acts, s)) for s in sites])
    freeze = _frozen_scales(model, batch)
    res = direct_logit_attribution(model, batch)
    for label, site in zip(labels, sites):

        def minus(x, hook, c=acts[site]):
            return x - c

        change = _gap(model, batch, [*freeze, (f"blocks.{last}.hook_resid_post", minus)]) - base
        torch.testing.assert_close(change, -res.per_row[res.labels.index(label)], atol=1e-4, rtol=0)

    # heads of the last block: zero one head's z, keep its MLP output and every scale clean
    heads = direct_logit_attribution(model, batch, by="head", layers=[last])
    keep = _frozen_scales(model, batch, last)
    mlp = (f"blocks.{last}.hook_mlp_out", lambda x, hook: acts[f"blocks.{last}.hook_mlp_out"])
    for h in range(model.cfg.n_heads):

        def zero_head(x, hook, h=h):
            x = x.clone()
            x[:, :, h] = 0
            return x

        hooks = [*keep, mlp, (f"blocks.{last}.attn.hook_z", zero_head)]
        change = _gap(model, batch, hooks) - base
        expect = -heads.per_row[heads.labels.index(f"L{last}H{h}")]
        torch.testing.assert_close(change, expect, atol=1e-4, rtol=0)

    # the three strongest neurons of the last block
    neurons = direct_logit_attribution(model, batch, by="neuron", layers=[last])
    rows = [i for i, k in enumerate(neurons.kinds) if k == "neuron"]
    strongest = sorted(rows, key=lambda i: -float(neurons.values[i].abs()))[:3]
    for row in strongest:
        label = neurons.labels[row]
        i = neurons.index[row]
        assert label == f"L{last}N{i}"

        def zero_neuron(x, hook, i=i):
            x = x.clone()
            x[..., i] = 0
            return x

        change = _gap(model, batch, [*keep, (f"blocks.{last}.mlp.hook_post", zero_neuron)]) - base
        expect = -neurons.per_row[neurons.labels.index(label)]
        torch.testing.assert_close(change, expect, atol=1e-4, rtol=0)
        assert float(expect.abs().max()) > 1e-4


# --- LayerNorm, biases, soft-capping -----------------------------------------------------------


def _layernorm_models(tiny_dirs):
    """GPT-2-style models (LayerNorm, biases everywhere): an HF GPT-2 on the bridge and a
    native HookedTransformer with a nonzero unembedding bias."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from mechintro.models import load_model

    tok = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    hf = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=64, n_layer=2, n_head=4)
    ).eval()
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=64,
        d_head=16,
        n_heads=4,
        d_mlp=256,
        d_vocab=len(tok),
        n_ctx=128,
        act_fn="gelu_new",
        normalization_type="LN",
    )
    ht = HookedTransformer(cfg).eval()
    with torch.no_grad():
        for m in (hf, ht):
            for name, p in m.named_parameters():
                last = name.split(".")[-1]
                if last in ("bias", "b") or last.startswith("b_") or "ln" in name:
                    p.add_(0.3 * torch.randn(p.shape, generator=g))
    return load_model(hf, tokenizer=tok, backend="bridge"), ht, tok


def test_layernorm_models_with_biases(tiny_dirs):
    bridge, hooked, tok = _layernorm_models(tiny_dirs)
    ids = torch.tensor([tok("Is it red, or not?")["input_ids"]])
    batch = PromptBatch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        texts=("Is it red, or not?",),
        positions={"first": torch.tensor([0]), "last": torch.tensor([ids.shape[1] - 1])},
        spans={},
    )
    direction = logit_direction(hooked, [5, 9], [7])
    for model in (bridge, hooked):
        logits = forward(model, ids, batch.attention_mask)[:, -1]
        want = logits[:, [5, 9]].mean(-1) - logits[:, 7]
        for by in ("component", "head", "neuron"):
            res = direct_logit_attribution(model, batch, by=by, direction=direction)
            torch.testing.assert_close(res.target, want, atol=1e-5, rtol=0)
            assert float(res.error.abs().max()) <= 1e-4, (type(model).__name__, by)
            assert "ln_final.bias" in res.terms
            if by != "component":
                assert any(k == "bias" for k in res.kinds)
    assert "unembed.bias" in direct_logit_attribution(hooked, batch, direction=direction).terms


def test_softcap_refused_then_attributed_before_the_cap(tiny_dirs):
    model = _load(tiny_dirs, "llama", "hooked")
    batch = _batch(model)
    plain = forward(model, batch.input_ids, batch.attention_mask)[:, -1]
    model.cfg.output_logits_soft_cap = 1.0
    try:
        with pytest.raises(ValueError, match="pre_softcap=True"):
            direct_logit_attribution(model, batch)
        res = direct_logit_attribution(model, batch, pre_softcap=True)
        capped = forward(model, batch.input_ids, batch.attention_mask)[:, -1]
    finally:
        model.cfg.output_logits_soft_cap = -1.0
    assert not torch.allclose(capped, plain, atol=1e-3)  # the cap was really applied
    torch.testing.assert_close(res.target, _yes_no_mean_gap(model, plain), atol=1e-5, rtol=0)
    assert float(res.error.abs().max()) <= 1e-4


# --- refusals and the result object -------------------------------------------------------------


def test_a_norm_we_cannot_reproduce_is_refused(tiny_dirs, monkeypatch):
    model = _load(tiny_dirs, "gemma3", "bridge")
    real = dla._affine

    def without_gemma_offset(norm):
        w, b = real(norm)
        return (None if w is None else w - 1.0), b  # Gemma's weight as if it were plain w

    monkeypatch.setattr(dla, "_affine", without_gemma_offset)
    with pytest.raises(RuntimeError, match="could not reproduce the final norm"):
        direct_logit_attribution(model, _batch(model))


@pytest.mark.parametrize("backend", ["bridge", "hooked"])
def test_bad_input_is_refused_with_the_fix(tiny_dirs, backend):
    model = _load(tiny_dirs, "llama", backend)
    batch = _batch(model)
    with pytest.raises(ValueError, match="by must be one of"):
        direct_logit_attribution(model, batch, by="heads")
    with pytest.raises(ValueError, match="leave it out"):
        direct_logit_attribution(model, batch, layers=[1])
    with pytest.raises(ValueError, match=r"out of range.*use 0\.\.3"):
        direct_logit_attribution(model, batch, by="head", layers=[4])
    with pytest.raises(ValueError, match="named position"):
        direct_logit_attribution(model, batch, position=batch.length)
    with pytest.raises(KeyError, match="no position named 'answer'"):
        direct_logit_attribution(model, batch, position="answer")
    with pytest.raises(ValueError, match="direction would be zero"):
        logit_direction(model, ["Yes"], ["Yes"])
    with pytest.raises(ValueError, match="out of range"):
        logit_direction(model, [10**6], [3])
    with pytest.raises(ValueError, match="empty"):
        logit_direction(model, [], ["No"])


def test_result_top_frame_and_direction(tiny_dirs):
    model = _load(tiny_dirs, "qwen3", "hooked")
    res = direct_logit_attribution(model, _batch(model), by="head")
    top = res.top(4)
    assert [abs(v) for _, v in top] == sorted(res.values.abs().tolist(), reverse=True)[:4]
    assert res.value(top[0][0]) == pytest.approx(top[0][1])
    assert [v for _, v in res.top(2, by="negative")] == sorted(res.values.tolist())[:2]
    frame = res.to_frame()
    assert list(frame["label"]) == list(res.labels) and len(frame) == len(res.values)
    head_rows = frame[frame["kind"] == "head"]
    assert set(head_rows["index"]) == set(range(model.cfg.n_heads))
    with pytest.raises(KeyError, match="no row"):
        res.value("L9H9")
    d = logit_direction(model)
    assert isinstance(d, LogitDirection)
    du = d.delta_u(model)
    ys = sorted(set(first_token_ids(model.tokenizer, YES_VARIANTS)))
    ns = sorted(set(first_token_ids(model.tokenizer, NO_VARIANTS)))
    torch.testing.assert_close(du, model.W_U[:, ys].mean(-1) - model.W_U[:, ns].mean(-1))
