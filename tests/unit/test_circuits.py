"""circuits: identities on tiny random models (spliced traces are the model, empty edits
change nothing, the JVP and the gradient against finite differences, virtual weights by
hand) and the analyses' bookkeeping on hand-made inputs."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from circuits.carriers import evidence_carriers
from circuits.gates import classify, gate_count, ranked, select_gates
from circuits.interventions import intervene, progressive
from circuits.steering import edge_measure, steering_attribution, steering_graph
from circuits.trace import forward, readouts, set_features, trace, zero_features
from mechintro.analysis.transcoders import Transcoder
from mechintro.inject import Injection, injected
from mechintro.prompts import Prompt, encode

ARCHS = ("llama", "gemma3")
_CACHE: dict[tuple[str, str], object] = {}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _model(tiny_dirs, arch: str, backend: str = "bridge"):
    from mechintro.models import load_model

    if (arch, backend) not in _CACHE:
        _CACHE[arch, backend] = load_model(tiny_dirs[arch], backend=backend)
    return _CACHE[arch, backend]


def _tcs(model, layers=(1, 3), d_sae: int = 48) -> dict[int, Transcoder]:
    d = model.cfg.d_model
    out = {}
    for k, layer in enumerate(layers):
        g = torch.Generator().manual_seed(20 + k)
        out[layer] = Transcoder(
            layer=layer,
            W_enc=torch.randn(d, d_sae, generator=g) / d**0.5,
            b_enc=0.2 * torch.rand(d_sae, generator=g),
            W_dec=0.3 * torch.randn(d_sae, d, generator=g),
            b_dec=0.1 * torch.randn(d, generator=g),
            threshold=0.05 * torch.rand(d_sae, generator=g),
            skip=0.1 * torch.randn(d, d, generator=g),
        )
    return out


def _batch(model, n: int = 3):
    texts = ["Trial 1: Do you detect an injected thought?", "Hello. Trial 2: anything odd?"]
    return encode(model.tokenizer, [Prompt.chat(texts[i % 2]) for i in range(n)])


def _vectors(model, n: int, seed: int = 0) -> torch.Tensor:
    v = torch.randn(n, model.cfg.d_model, generator=torch.Generator().manual_seed(seed))
    return v / v.norm(dim=-1, keepdim=True)


def _inj(model, batch, s=2.0):
    return Injection(
        0, _vectors(model, len(batch)), s, mode="all", unit="resid-norm", resid_norm=1.0
    )


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", ["bridge", "hooked"])
def test_a_spliced_trace_reads_the_models_own_logits(tiny_dirs, arch, backend):
    model = _model(tiny_dirs, arch, backend)
    batch, tcs = _batch(model), _tcs(model)
    inj = _inj(model, batch)
    for injection in (None, inj):
        tr = trace(model, tcs, batch, injection=injection)
        from contextlib import nullcontext

        from mechintro.inject import injected

        with torch.no_grad(), injected(model, inj, batch) if injection else nullcontext():
            logits = forward(model, batch)
        gap, b = readouts(model, logits, batch.position("last"))
        torch.testing.assert_close(tr.gap, gap, atol=1e-5, rtol=0)
        torch.testing.assert_close(tr.b, b, atol=1e-5, rtol=0)
        assert set(tr.acts) == {1, 3} and tr.acts[1].shape == (3, batch.length, 48)
    zero = Injection(0, _vectors(model, 3), 0.0, mode="all", unit="resid-norm", resid_norm=1.0)
    assert torch.equal(trace(model, tcs, batch, injection=zero).b, trace(model, tcs, batch).b)


def test_edits_that_restore_the_run_change_nothing(tiny_dirs):
    model = _model(tiny_dirs, "llama")
    batch, tcs = _batch(model), _tcs(model)
    inj = _inj(model, batch)
    steer = trace(model, tcs, batch, injection=inj)
    plain = trace(model, tcs, batch)
    every = {L: list(range(48)) for L in tcs}
    same = trace(model, tcs, batch, injection=inj, edit=set_features(every, steer.acts))
    torch.testing.assert_close(same.b, steer.b, atol=1e-5, rtol=0)
    # ablating every feature of both layers to its unsteered value moves b towards plain
    abl = trace(model, tcs, batch, injection=inj, edit=set_features(every, plain.acts))
    assert not torch.allclose(abl.b, steer.b, atol=1e-4)
    z = trace(model, tcs, batch, injection=inj, edit=zero_features({1: [0, 1]}))
    assert z.acts[1].shape == steer.acts[1].shape  # acts are read before the edit
    with pytest.raises(ValueError, match="do not match"):
        trace(
            model,
            tcs,
            batch,
            injection=inj,
            edit=set_features(every, trace(model, tcs, _batch(model, 2)).acts),
        )


def test_an_empty_set_leaves_both_runs_and_progressive_starts_there(tiny_dirs):
    model = _model(tiny_dirs, "llama")
    batch, tcs = _batch(model, 4), _tcs(model)
    inj = _inj(model, batch, 4.0)
    res = intervene(model, tcs, batch, inj, {1: [], 3: []})
    assert (res.ablated, res.b_ablated) == (res.steered, res.b_steered)
    assert (res.patched, res.b_patched) == (res.unsteered, res.b_unsteered)
    curve = progressive(model, tcs, batch, inj, [(3, 5), (1, 2), (3, 7)], [0, 1, 3])
    assert curve.k.tolist() == [0, 1, 3] and curve.n_features.tolist() == [0, 1, 3]
    assert curve.b_ablated.iloc[0] == res.b_steered
    with pytest.raises(ValueError, match="no transcoder for layer 2"):
        intervene(model, tcs, batch, inj, {2: [0]})
    with pytest.raises(ValueError, match="out of range"):
        intervene(model, tcs, batch, inj, {1: [48]})


def test_gate_selection_ranking_and_classes_by_hand():
    scores = pd.DataFrame(
        {
            "layer": [4, 4, 4, 5, 5, 5],
            "feature": [0, 1, 2, 0, 1, 2],
            "dla": [-0.5, 0.3, -2.0, -0.1, -0.7, 0.0],
            "activation": [1.0] * 6,
        }
    )
    assert select_gates(scores, k=1) == {4: [2], 5: [1]}
    assert select_gates(scores, k=5) == {4: [2, 0], 5: [1, 0]}  # negative scores only
    assert ranked(scores) == [(4, 2), (5, 1), (4, 0), (5, 0)]
    assert gate_count(16384) == 200 and gate_count(2048) == 25 and gate_count(10) == 1
    curves = pd.DataFrame(
        [
            (4, f, s, a)
            for f, acts in enumerate(
                [
                    (1.0, 2.0, 1.0),  # suppressed both ways: the inverted V
                    (0.0, 0.0, 0.0),  # inactive
                    (0.5, 0.0, 0.0),  # detector: off unsteered, on when steered
                    (2.0, 1.0, 2.0),  # amplified
                    (1.0, 1.0, 0.2),  # stable: one sign only
                ]
            )
            for s, a in zip((-1.0, 0.0, 1.0), acts)
        ],
        columns=["layer", "feature", "strength", "activation"],
    )
    got = classify(curves)
    assert got["class"].tolist() == ["suppressed", "inactive", "detector", "amplified", "stable"]
    with pytest.raises(ValueError, match="positive and negative"):
        classify(curves[curves.strength >= 0])


def test_steering_derivatives_equal_finite_differences(tiny_dirs):
    """SG: ∫ SG ds is the change of the pre-activation for features active all along, in
    the first spliced layer (nothing spliced upstream, so the JVP is the model's own);
    GA: ∂L/∂a in the last spliced layer (nothing spliced downstream) equals a finite
    difference of an additive edit."""
    model = _model(tiny_dirs, "llama")
    batch, tcs = _batch(model, 1), _tcs(model)
    v = _vectors(model, 1)[0]
    s_star = 3.0
    sa = steering_attribution(
        model, tcs, batch, v, layer=0, strength=s_star, resid_norm=1.0, n_points=81, mode="all"
    )
    inj = Injection(0, v, s_star, mode="all", unit="resid-norm", resid_norm=1.0)
    hi = trace(model, tcs, batch, injection=inj)
    lo = trace(model, tcs, batch)
    first = sa.features[(sa.features.layer == 1)]
    always = [r for r in first.itertuples() if r.activation0 > 0 and r.activation > 0]
    assert len(always) > 20
    for r in always:
        want = float(hi.pre[1][0, r.position, r.feature] - lo.pre[1][0, r.position, r.feature])
        assert abs(r.sg - want) <= 2e-3 * max(1.0, abs(want)), (r, want)
    last = sa.features[(sa.features.layer == 3) & (sa.features.activation > 0)]
    eps = 1e-2
    for r in last.head(5).itertuples():

        def bump(d, r=r):
            def edit(layer, acts):
                if layer != 3:
                    return acts
                out = acts.clone()
                out[:, r.position, r.feature] += d
                return out

            return trace(model, tcs, batch, injection=inj, edit=edit).gap

        fd = float((bump(eps) - bump(-eps))[0]) / (2 * eps)
        assert abs(r.ga - fd) <= 1e-3 * max(1.0, abs(fd)), (r.ga, fd)
    with torch.no_grad():  # the caller's grad mode does not matter
        again = steering_attribution(
            model, tcs, batch, v, layer=0, strength=s_star, resid_norm=1.0, n_points=81, mode="all"
        )
    pd.testing.assert_frame_equal(again.features, sa.features)
    assert sa.delta == pytest.approx(sa.root[-1] - sa.root[0])
    assert sa.error == pytest.approx(sa.delta - float(sa.features.sa.sum()))
    with pytest.raises(ValueError, match="one prompt"):
        steering_attribution(model, tcs, _batch(model, 2), v, layer=0, strength=1.0, resid_norm=1.0)
    with pytest.raises(ValueError, match="no transcoder after"):
        steering_attribution(model, tcs, batch, v, layer=3, strength=1.0, resid_norm=1.0)


def test_steering_graph_edges_and_their_interventions(tiny_dirs):
    model = _model(tiny_dirs, "llama")
    batch, tcs = _batch(model, 1), _tcs(model)
    v = _vectors(model, 1)[0]
    kw = dict(layer=0, strength=3.0, resid_norm=1.0)
    g, sa = steering_graph(model, tcs, batch, v, n_features=12, gates={3: [0, 1, 2]}, **kw)
    nodes, edges = g.to_frames()
    assert (nodes.kind == "feature").sum() == 12 and g.root_id == "root"
    assert set(edges.source) | set(edges.target) <= set(nodes.id)
    top = sa.features.reindex(sa.features.sa.abs().sort_values(ascending=False).index)
    feats = nodes[nodes.kind == "feature"]
    assert sorted(feats.influence) == pytest.approx(sorted(top.sa.head(12)), rel=1e-6)
    assert len(g.metadata["tokens"]) == batch.length
    # decoded for the viewers: the prompt as text, and the root as the most likely Yes token
    # at the end of the steered prompt, with its probability
    ids = batch.input_ids[0].tolist()
    assert g.metadata["prompt"] == model.tokenizer.decode(ids)
    assert g.metadata["prompt_tokens"] == [model.tokenizer.decode([i]) for i in ids]
    from mechintro.analysis.dla import logit_direction

    root = g.node("root")
    steered = Injection(0, v, 3.0, mode="from-trial", unit="resid-norm", resid_norm=1.0)
    with injected(model, steered, batch):
        p = torch.softmax(forward(model, batch)[0, -1].float(), -1)
    yes = logit_direction(model).pos_ids
    assert root.feature in yes and root.feature == max(yes, key=lambda i: float(p[i]))
    assert root.probability == pytest.approx(float(p[root.feature]))
    measure = edge_measure(model, tcs, batch, v, **kw)
    hi = trace(
        model,
        tcs,
        batch,
        injection=Injection(0, v, 3.0, mode="from-trial", unit="resid-norm", resid_norm=1.0),
    )
    lo = trace(model, tcs, batch)
    for e in [e for e in g.edges if e.source == "concept"][:4]:  # what the steering did
        L, rest = e.target[1:].split("#")
        f, t = map(int, rest.split("@"))
        assert measure(e) == pytest.approx(
            float(hi.acts[int(L)][0, t, f] - lo.acts[int(L)][0, t, f])
        )
    err = next(e for e in g.edges if e.source == "error")
    assert err.weight == pytest.approx(sa.error) and measure(err) != measure(err)  # NaN


def test_carriers_virtual_weights_and_attributions_by_hand(tiny_dirs):
    model = _model(tiny_dirs, "llama")
    batch, tcs = _batch(model, 4), _tcs(model)
    V = _vectors(model, 4, seed=3)
    res = evidence_carriers(
        model,
        tcs,
        batch,
        V,
        {3: [0, 5]},
        layer=0,
        resid_norm=1.0,
        strengths=(1.0, 3.0),
        mode="all",
        top=6,
    )
    df = res.pooled
    assert set(df.gate_layer) == {3} and set(df.layer) == {1} and (df.attribution < 0).all()
    strong = trace(
        model,
        tcs,
        batch,
        injection=Injection(0, V, 3.0, mode="all", unit="resid-norm", resid_norm=1.0),
    ).at_readout(1)
    for r in df.itertuples():
        vw = float(tcs[1].W_dec[r.feature] @ tcs[3].W_enc[:, r.gate])
        assert r.virtual_weight == pytest.approx(vw, rel=1e-5)
        assert r.attribution == pytest.approx(vw * float(strong[:, r.feature].mean()), rel=1e-4)
    runs = {
        s: trace(
            model,
            tcs,
            batch,
            injection=None
            if s == 0
            else Injection(0, V, s, mode="all", unit="resid-norm", resid_norm=1.0),
        )
        for s in (0.0, 1.0, 3.0)
    }
    r = df.iloc[0]  # its correlations by hand: over (strength, concept) rows
    a = torch.cat([runs[s].at_readout(1)[:, r.feature] for s in runs])
    dose = torch.tensor([s for s in runs for _ in range(4)])
    assert r.dose_r == pytest.approx(float(torch.corrcoef(torch.stack([a, dose]))[0, 1]), abs=1e-5)
    det = torch.cat([runs[s].detected.float() for s in (1.0, 3.0)])
    inj = a[4:]
    want = (
        0.0
        if det.std() == 0 or inj.std() == 0
        else float(torch.corrcoef(torch.stack([inj, det]))[0, 1])
    )
    assert r.detection_r == pytest.approx(want, abs=1e-5)
    expect = (df.attribution < 0) & (df.dose_r > 0) & (df.detection_r.abs() >= 0.1)
    assert df.carrier.tolist() == expect.tolist()
    assert len(res.per_concept) == 4 * len(df)
    with pytest.raises(ValueError, match="one per row"):
        evidence_carriers(
            model, tcs, batch, V[:2], {3: [0]}, layer=0, resid_norm=1.0, strengths=(1.0,)
        )


def test_circuits_take_texts_prompts_and_token_tensors(tiny_dirs):
    """Every circuits entry point reads its prompts through as_prompt_batch: a list of
    Prompts and a token tensor give exactly the numbers of the encoded batch."""
    model = _model(tiny_dirs, "llama")
    tcs = _tcs(model)
    prompts = [Prompt.chat("Trial 1: Do you detect an injected thought?")]
    batch = encode(model.tokenizer, prompts)
    ids = batch.input_ids  # one row, no padding: every token real
    want = trace(model, tcs, batch)
    for given in (prompts, prompts[0], ids):
        got = trace(model, tcs, given)
        assert torch.equal(got.gap, want.gap) and torch.equal(got.b, want.b)
        assert all(torch.equal(got.acts[k], want.acts[k]) for k in want.acts)
    with pytest.raises(TypeError, match="PromptBatch"):
        trace(model, tcs, 3.5)
