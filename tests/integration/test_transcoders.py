"""Transcoders: the true MLP sites on every tiny architecture and backend, hand-computed
application, sae-lens's disk and registry formats, sparse caches, splicing, the trainer, and
the organism's shipped transcoders.

The tiny checkpoints' norm weights are randomised (HF initialises them to 1, or 0 for Gemma's
``1 + w``), so reading the norm before its weight cannot pass unnoticed.
"""

from __future__ import annotations

import json

import pytest
import torch

from mechintro.analysis.transcoders import (
    Transcoder,
    evaluate,
    feature_activations,
    load_transcoder,
    mlp_activations,
    mlp_sites,
    reconstruction,
    registry_entry,
    splice,
)
from mechintro.inject import Injection
from mechintro.models import forward as model_forward
from mechintro.prompts import Prompt, encode

pytestmark = pytest.mark.identity

ARCHS = ("llama", "qwen3", "gemma3", "olmo2")
LAYER = 2
_CACHE: dict[tuple[str, str], object] = {}


def _hf(tiny_dirs, arch: str):
    """A fresh HF copy of the tiny checkpoint with randomised norm weights (same every call)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], attn_implementation="eager")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return hf.eval()


def _load(tiny_dirs, arch: str, backend: str):
    from transformers import AutoTokenizer

    from mechintro.models import load_model

    if (arch, backend) not in _CACHE:
        tok = AutoTokenizer.from_pretrained(tiny_dirs[arch])
        hf = _hf(tiny_dirs, arch)
        _CACHE[arch, backend] = load_model(hf, tokenizer=tok, backend=backend, name=arch)
    return _CACHE[arch, backend]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models and matrices are tiny: thread hand-offs cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=[(a, b) for a in ARCHS for b in ("bridge", "hooked")], ids="-".join)
def case(request, tiny_dirs):
    """(arch, model) for every tiny architecture on both backends."""
    return request.param[0], _load(tiny_dirs, *request.param)


@pytest.fixture
def model(case):
    return case[1]


def _prompts() -> list[Prompt]:
    return [
        Prompt.chat("Trial 1: Do you detect an injected thought?"),
        Prompt.chat("Hi. Trial 2: anything?"),
        Prompt.chat("Tell me about cats"),
    ]


def _random_tc(d: int, layer: int = LAYER, d_sae: int = 48, seed: int = 0, **kw) -> Transcoder:
    """JumpReLU with a threshold that really cuts (some pre-activations in (0, θ]) + skip."""
    g = torch.Generator().manual_seed(seed)
    parts = {
        "W_enc": torch.randn(d, d_sae, generator=g) / d**0.5,
        "b_enc": 0.1 * torch.randn(d_sae, generator=g),
        "W_dec": 0.3 * torch.randn(d_sae, d, generator=g),
        "b_dec": 0.1 * torch.randn(d, generator=g),
        "threshold": 0.5 * torch.rand(d_sae, generator=g),
        "skip": 0.2 * torch.randn(d, d, generator=g),
    }
    parts.update(kw)
    return Transcoder(layer=layer, **parts)


# --- sites -----------------------------------------------------------------------------------


def _hf_mlp_io(hf, batch, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The HF MLP's own input, and what the MLP sublayer adds to the residual stream (after
    the post-feedforward norm on Gemma-3 and OLMo-2)."""
    block = hf.model.layers[layer]
    got: dict[str, torch.Tensor] = {}
    out_mod = getattr(block, "post_feedforward_layernorm", None) or block.mlp
    h1 = block.mlp.register_forward_pre_hook(lambda m, a: got.__setitem__("x", a[0]))
    h2 = out_mod.register_forward_hook(lambda m, a, o: got.__setitem__("y", o))
    try:
        with torch.no_grad():
            mask = batch.attention_mask
            hf(batch.input_ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(0))
    finally:
        h1.remove()
        h2.remove()
    return got["x"], got["y"]


def test_sites_equal_the_hf_mlp_input_and_output(case, tiny_dirs):
    arch, model = case
    batch = encode(model.tokenizer, _prompts())
    acts = mlp_activations(model, batch, [1, LAYER], skip_bos=False)
    keep = batch.attention_mask.bool()
    for layer in (1, LAYER):
        x_hf, y_hf = _hf_mlp_io(_hf(tiny_dirs, arch), batch, layer)
        torch.testing.assert_close(acts.x[layer], x_hf[keep], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(acts.y[layer], y_hf[keep], atol=1e-4, rtol=1e-4)
    # the norm weights are random, so the raw normalised stream is far from the MLP input
    sites = mlp_sites(model, LAYER)
    got: dict[str, torch.Tensor] = {}
    with model.hooks(fwd_hooks=[(sites.read, lambda t, hook: got.setdefault("raw", t))]):
        model_forward(model, batch.input_ids, batch.attention_mask)
    if sites.weight is not None:
        assert float((got["raw"][keep] - acts.x[LAYER]).abs().max()) > 1e-2


def test_site_table(tiny_dirs):
    bridge, hooked = _load(tiny_dirs, "gemma3", "bridge"), _load(tiny_dirs, "gemma3", "hooked")
    assert mlp_sites(bridge, 1).read == "blocks.1.mlp.hook_in"
    assert mlp_sites(hooked, 1).read == "blocks.1.ln2.hook_normalized"
    assert mlp_sites(hooked, 1).weight is not None
    olmo = mlp_sites(_load(tiny_dirs, "olmo2", "hooked"), 1)
    assert olmo.read == "blocks.1.hook_resid_mid" and olmo.weight is None
    assert {mlp_sites(m, 1).write for m in (bridge, hooked)} == {"blocks.1.hook_mlp_out"}


# --- application by hand ---------------------------------------------------------------------


def test_splice_applies_the_transcoder_as_computed_by_hand(model):
    tc = _random_tc(model.cfg.d_model)
    batch = encode(model.tokenizer, _prompts())
    x = mlp_activations(model, batch, [LAYER], skip_bos=False).x[LAYER]
    pre = torch.einsum("nd,df->nf", x, tc.W_enc) + tc.b_enc
    assert tc.threshold is not None and tc.skip is not None
    assert bool(((pre > 0) & (pre <= tc.threshold)).any())  # the threshold removes something
    a = torch.where(pre > tc.threshold, pre, torch.zeros_like(pre)).clamp(min=0)
    y = torch.einsum("nf,fd->nd", a, tc.W_dec) + tc.b_dec + torch.einsum("nd,de->ne", x, tc.skip)

    keep = batch.attention_mask.bool()
    got: dict[str, torch.Tensor] = {}
    names = [f"blocks.{LAYER}.hook_resid_mid", f"blocks.{LAYER}.hook_resid_post"]
    with (
        splice(model, tc, error=False) as state,
        model.hooks(fwd_hooks=[(n, lambda t, hook, n=n: got.setdefault(n, t)) for n in names]),
    ):
        model_forward(model, batch.input_ids, batch.attention_mask)
    added = (got[names[1]] - got[names[0]])[keep]  # what block LAYER's MLP added
    torch.testing.assert_close(added, y, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(state.acts[LAYER][keep], a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tc(x), y, atol=1e-5, rtol=1e-5)


def test_our_arithmetic_equals_sae_lens(tmp_path):
    """Same weights through sae-lens's own forward: catches a transposed skip matrix."""
    tc = _random_tc(16, skip=0.2 * torch.randn(16, 16))
    assert not torch.allclose(tc.skip, tc.skip.T)
    x = torch.randn(40, 16)
    sae = tc.to_sae()
    assert type(sae).__name__ == "JumpReLUSkipTranscoder"
    torch.testing.assert_close(sae(x), tc(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sae.encode(x), tc.encode(x), atol=1e-6, rtol=1e-6)


# --- sae-lens's disk format ------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["transcoder", "skip_transcoder", "jumprelu_transcoder",
                                  "jumprelu_skip_transcoder"])  # fmt: skip
def test_round_trip_through_sae_lens_disk_format(tmp_path, tiny_dirs, arch):
    from sae_lens import SAE

    model = _load(tiny_dirs, "llama", "bridge")
    jump, skip = {"transcoder": (0, 0), "skip_transcoder": (0, 1), "jumprelu_transcoder": (1, 0),
                  "jumprelu_skip_transcoder": (1, 1)}[arch]  # fmt: skip
    base = _random_tc(model.cfg.d_model)
    tc = Transcoder(LAYER, base.W_enc, base.b_enc, base.W_dec, base.b_dec,
                    base.threshold if jump else None, base.skip if skip else None,
                    info={"note": "round trip"})  # fmt: skip
    assert tc.architecture == arch
    folder = tc.save(tmp_path / "tc")
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == arch and cfg["d_out"] == model.cfg.d_model
    sae = SAE.load_from_disk(str(folder))
    back = Transcoder.from_sae(sae)  # layer from the saved hook names
    ours = load_transcoder(folder)
    assert back.layer == ours.layer == LAYER and ours.info["note"] == "round trip"
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold", "skip"):
        a, b = getattr(tc, name), getattr(ours, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert torch.equal(a, b), name
    batch = encode(model.tokenizer, _prompts())
    outs = []
    for t in (tc, back, ours):
        with splice(model, t, error=False):
            outs.append(model_forward(model, batch.input_ids, batch.attention_mask))
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])


def test_fp16_storage_loads_as_fp32(tmp_path):
    tc = _random_tc(16)
    folder = tc.save(tmp_path / "half", dtype=torch.float16)
    from safetensors import safe_open

    with safe_open(str(folder / "sae_weights.safetensors"), "pt") as f:
        assert f.get_tensor("W_enc").dtype == torch.float16
    back = load_transcoder(folder)
    assert back.dtype == torch.float32
    assert torch.equal(back.W_enc, tc.W_enc.half().float())
    assert torch.equal(back.skip, tc.skip.half().float())


# --- sae-lens's registry (offline: the Hub is faked) -----------------------------------------

RELEASE, SAE_ID = "gemma-scope-2-270m-pt-transcoders-all", "layer_0_width_16k_l0_big_affine"


def test_registry_lookup_and_its_errors():
    e = registry_entry(RELEASE, SAE_ID)
    assert e.repo_id == "google/gemma-scope-2-270m-pt" and e.conversion_func == "gemma_3"
    assert e.path == "transcoder_all/layer_0_width_16k_l0_big_affine"
    with pytest.raises(ValueError, match="did you mean"):
        registry_entry("gemma-scope-2-270m-pt-transcoder-all", SAE_ID)
    with pytest.raises(ValueError, match="no id .*did you mean"):
        registry_entry(RELEASE, "layer_0_width_16k_l0_big_afine")


def test_from_pretrained_reads_gemma_scope_2_files(tmp_path, monkeypatch, tiny_dirs):
    """``load_transcoder(release, id)`` through sae-lens's real Gemma Scope 2 loader, with
    the two Hub calls answered from a local folder in Gemma Scope 2's own file layout."""
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from safetensors.torch import save_file

    model = _load(tiny_dirs, "gemma3", "bridge")
    d, d_sae = model.cfg.d_model, 24
    ref = _random_tc(d, layer=0, d_sae=d_sae)
    folder = tmp_path / "transcoder_all" / "layer_0_width_16k_l0_big_affine"
    folder.mkdir(parents=True)
    assert ref.skip is not None and ref.threshold is not None
    raw = {"w_enc": ref.W_enc, "w_dec": ref.W_dec, "b_enc": ref.b_enc, "b_dec": ref.b_dec,
           "threshold": ref.threshold, "affine_skip_connection": ref.skip}  # fmt: skip
    save_file({k: v.contiguous() for k, v in raw.items()}, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "jump_relu", "model_name": "gemma-v3-270m-pt", "affine_connection": True,
        "hf_hook_point_in": "model.layers.0.pre_feedforward_layernorm.output",
        "hf_hook_point_out": "model.layers.0.post_feedforward_layernorm.output"}))  # fmt: skip
    calls = []

    def fake_download(repo_id, filename, subfolder=None, **kw):
        calls.append(repo_id)
        return str(tmp_path / (f"{subfolder}/{filename}" if subfolder else filename))

    def fake_shapes(repo_id, filename):
        return {k: list(v.shape) for k, v in raw.items()}

    monkeypatch.setattr(loaders, "hf_hub_download", fake_download)
    monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes", fake_shapes)
    tc = load_transcoder(RELEASE, SAE_ID)
    assert set(calls) == {"google/gemma-scope-2-270m-pt"}
    assert tc.layer == 0 and tc.architecture == "jumprelu_skip_transcoder"
    assert tc.info["release"] == RELEASE and tc.info["sae_id"] == SAE_ID
    # the affine skip is stored [d_in, d_out] by Gemma Scope and read back unchanged
    assert tc.skip is not None and torch.equal(tc.skip, ref.skip)
    x = torch.randn(5, d)
    torch.testing.assert_close(tc(x), ref(x))
    # ... and it applies to the (tiny) Gemma-3 at block 0, exactly with the error term
    batch = encode(model.tokenizer, _prompts())
    clean = model_forward(model, batch.input_ids, batch.attention_mask)
    with splice(model, tc, error=True):
        spliced = model_forward(model, batch.input_ids, batch.attention_mask)
    assert float((spliced - clean).abs().max()) <= 1e-4


# --- reconstruction error, sparse caches -----------------------------------------------------


def test_fvu_matches_its_definition(tiny_dirs):
    model = _load(tiny_dirs, "qwen3", "hooked")
    tc = _random_tc(model.cfg.d_model)
    prompts = _prompts()
    acts = mlp_activations(model, prompts, [LAYER])
    x, y = acts.x[LAYER], acts.y[LAYER]
    want = float((y - tc(x)).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    res = evaluate(model, [tc], prompts, batch_size=2)
    assert res.layers == (LAYER,) and res.n_tokens == x.shape[0]
    assert res[LAYER]["fvu"] == pytest.approx(want, rel=1e-5)
    assert reconstruction(tc, x, y)[LAYER]["fvu"] == pytest.approx(want, rel=1e-5)
    assert res[LAYER]["l0"] == pytest.approx(float((tc.encode(x) > 0).sum(-1).double().mean()))
    # a BOS token is left out by default (Gemma's template writes one)
    bos = model.tokenizer.bos_token_id
    assert bos is not None and bos not in acts.token.tolist()
    assert bos in mlp_activations(model, prompts, [LAYER], skip_bos=False).token.tolist()


def test_sparse_cache_equals_dense(model):
    tcs = [_random_tc(model.cfg.d_model, layer=1, seed=1), _random_tc(model.cfg.d_model)]
    prompts = _prompts()
    g = torch.Generator().manual_seed(3)
    inj = Injection(0, torch.randn(3, model.cfg.d_model, generator=g), [4.0, 0.0, -3.0],
                    mode="all")  # fmt: skip
    fa = feature_activations(model, tcs, prompts, injection=inj, batch_size=2)
    acts = mlp_activations(model, prompts, [1, LAYER], injection=inj, batch_size=3)
    assert torch.equal(fa.prompt, acts.prompt) and torch.equal(fa.position, acts.position)
    assert torch.equal(fa.token, acts.token)
    for tc in tcs:
        dense = tc.encode(acts.x[tc.layer])
        torch.testing.assert_close(fa.dense(tc.layer), dense, atol=1e-5, rtol=1e-5)
        assert fa.l0(tc.layer) == pytest.approx(float((dense > 0).sum()) / dense.shape[0])
        torch.testing.assert_close(fa.mean(tc.layer), dense.double().mean(0))
    assert fa.acts[LAYER].layout == torch.sparse_csr
    nnz = sum(int(a.values().numel()) for a in fa.acts.values())
    n = len(fa)
    assert fa.nbytes == nnz * (4 + 4) + 2 * (n + 1) * 4  # int32 indices, fp32 values
    assert fa.dense_nbytes == 2 * n * 48 * 4
    # the injection was applied per row (a zero-strength row equals the unsteered run)
    plain = mlp_activations(model, prompts, [LAYER])
    rows = plain.prompt == 1
    torch.testing.assert_close(acts.x[LAYER][acts.prompt == 1], plain.x[LAYER][rows])
    assert not torch.allclose(acts.x[LAYER][acts.prompt == 0], plain.x[LAYER][plain.prompt == 0])


# --- splicing --------------------------------------------------------------------------------


def test_splice_with_error_term_leaves_logits_unchanged(model):
    tcs = {x: _random_tc(model.cfg.d_model, layer=x, seed=x) for x in (1, 3)}
    batch = encode(model.tokenizer, _prompts())
    clean = model_forward(model, batch.input_ids, batch.attention_mask)
    with splice(model, tcs, error=True) as state:
        exact = model_forward(model, batch.input_ids, batch.attention_mask)
    with splice(model, tcs, error=False):
        approx = model_forward(model, batch.input_ids, batch.attention_mask)
    assert float((exact - clean).abs().max()) <= 1e-4
    assert float((approx - clean).abs().max()) > 1e-2  # the splice does replace the MLPs
    assert set(state.acts) == {1, 3} and state.error[3] is not None
    # an edit changes the MLP output by exactly the decoded change of the features
    got: dict[str, torch.Tensor] = {}
    name = "blocks.3.hook_mlp_out"
    with model.hooks(fwd_hooks=[(name, lambda t, hook: got.setdefault("y", t))]):
        model_forward(model, batch.input_ids, batch.attention_mask)
    with (
        splice(model, tcs[3], edit=lambda layer, a: torch.zeros_like(a)) as st,
        model.hooks(fwd_hooks=[(name, lambda t, hook: got.setdefault("edited", t))]),
    ):
        model_forward(model, batch.input_ids, batch.attention_mask)
    want = got["y"] - st.acts[3] @ tcs[3].W_dec
    torch.testing.assert_close(got["edited"], want, atol=1e-4, rtol=1e-4)
    assert not model.hook_dict[name].fwd_hooks  # nothing left behind


def test_hooks_are_removed_after_an_error(tiny_dirs):
    model = _load(tiny_dirs, "llama", "bridge")
    batch = encode(model.tokenizer, _prompts())
    clean = model_forward(model, batch.input_ids, batch.attention_mask)
    with pytest.raises(RuntimeError, match="boom"), splice(model, _random_tc(model.cfg.d_model)):
        raise RuntimeError("boom")
    assert torch.equal(model_forward(model, batch.input_ids, batch.attention_mask), clean)
    mlp_activations(model, batch, [1])  # stops the forward early by raising inside a hook
    assert torch.equal(model_forward(model, batch.input_ids, batch.attention_mask), clean)
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


# --- errors that name the fix ----------------------------------------------------------------


def test_bad_inputs_name_the_fix(tiny_dirs, tmp_path, unchecked):
    model = _load(tiny_dirs, "llama", "hooked")
    d = model.cfg.d_model
    with pytest.raises(ValueError, match="d_model is 64: it was trained for another model"):
        evaluate(model, _random_tc(32), _prompts())
    with pytest.raises(ValueError, match=r"out of range .* 4 blocks \(0\.\.3\)"):
        splice(model, _random_tc(d, layer=7)).__enter__()
    with pytest.raises(ValueError, match="width 64, got 32"):
        _random_tc(d).encode(torch.randn(2, 32))
    # Transcoder's own refusal, which names the fix (the shape checks would refuse it first)
    with unchecked(), pytest.raises(ValueError, match="W_skip is \\[d_out, d_in\\]: pass its"):
        _random_tc(d, d_sae=8, W_dec=torch.randn(8, 32), b_dec=torch.zeros(32),
                   skip=torch.randn(32, d))  # fmt: skip
    with pytest.raises(FileNotFoundError, match="not a sae-lens folder"):
        load_transcoder(tmp_path)
    with pytest.raises(FileNotFoundError, match="give its id too"):
        load_transcoder(tmp_path / "nothing-here")
    from sae_lens import SAE

    sae = SAE.from_dict({"architecture": "standard", "d_in": d, "d_sae": 8})
    with pytest.raises(ValueError, match="not a transcoder"):
        Transcoder.from_sae(sae, layer=1)
    tc = _random_tc(d).to_sae()
    tc.cfg.metadata.hook_name = tc.cfg.metadata.hook_name_out = None
    with pytest.raises(ValueError, match="pass layer=L"):
        Transcoder.from_sae(tc)


# --- the trainer -----------------------------------------------------------------------------


def test_trainer_beats_the_linear_fit_and_round_trips(tmp_path):
    from sae_lens import SAE

    from mechintro.analysis.transcoders import TrainConfig, train_transcoder

    g = torch.Generator().manual_seed(0)
    d, n = 16, 6000
    x = torch.randn(n, d, generator=g)
    E = torch.randn(d, 24, generator=g)
    y = torch.relu(x @ E - 1.5) @ torch.randn(24, d, generator=g) + 0.5 * x  # sparse + linear
    cfg = TrainConfig(d_sae=64, k=8, steps=500, batch_size=256, lr=5e-3, warmup=20, dead_steps=50)
    tc, rep = train_transcoder(x, y, cfg, layer=1)
    assert tc.architecture == "jumprelu_skip_transcoder" and tc.d_sae == 64
    assert rep.n_heldout == n // 10 and rep.n_train == n - n // 10
    assert rep.fvu < 0.5 * rep.fvu_linear  # the features explain what no linear map does
    assert 1.0 < rep.l0 < 3 * cfg.k
    folder = tc.save(tmp_path / "trained")
    sae = SAE.load_from_disk(str(folder))
    x2 = torch.randn(100, d, generator=g)
    torch.testing.assert_close(sae(x2), tc(x2), atol=1e-5, rtol=1e-5)
    assert load_transcoder(folder).info["heldout"]["fvu"] == pytest.approx(rep.fvu)


# --- the organism's transcoders --------------------------------------------------------------


@pytest.fixture(scope="module")
def organism():
    from mechintro.models import load_model

    return load_model("builtin:organism")


def test_organism_transcoders_load_everywhere():
    from sae_lens import SAE

    from mechintro.analysis.transcoders import organism_transcoders
    from mechintro.analysis.transcoders.core import ORGANISM_DIR

    report = json.loads((ORGANISM_DIR / "fvu.json").read_text())
    tcs = organism_transcoders()
    assert sorted(tcs) == sorted(int(k) for k in report["layers"])
    assert {4, 5} <= set(tcs)  # every block after the injection layer (3)
    for layer, tc in tcs.items():
        assert report["layers"][str(layer)]["fvu"] <= 0.15
        sae = SAE.load_from_disk(str(ORGANISM_DIR / f"layer_{layer}"))
        assert type(sae).__name__ == "JumpReLUSkipTranscoder" and sae.cfg.d_in == 256
        assert tc.info["model"] == "builtin:organism"
    size = sum(p.stat().st_size for p in ORGANISM_DIR.rglob("*.safetensors"))
    assert size < 10e6


def test_organism_transcoders_reconstruct_fresh_activations(organism):
    """FVU <= 0.15 on dialogues none of them was trained or validated on, steered ones too."""
    from mechintro.analysis.transcoders import organism_transcoders
    from mechintro.organism.transcoder_training import OrganismData, organism_activations

    tcs = organism_transcoders()
    acts = organism_activations(organism, sorted(tcs), OrganismData(40, 40, seed=7))
    assert len(acts) > 1000
    for layer, tc in tcs.items():
        res = reconstruction(tc, acts.x[layer], acts.y[layer])
        assert res[layer]["fvu"] <= 0.15, (layer, res[layer])
        assert res[layer]["l0"] < 100
    # the wrong block's transcoder does not reconstruct: the FVU really measures the fit
    wrong = reconstruction(tcs[4], acts.x[5], acts.y[5])[4]["fvu"]
    assert wrong > 0.3
