"""The organism pipeline: corpus, tokenizer, both training phases (a few steps), identities."""

from __future__ import annotations

import json

import pytest
import torch

from mechintro.experiments.protocols.detection import detection_prompt
from mechintro.experiments.trials import detection_trials, summary
from mechintro.inject import Injection, injected
from mechintro.models import forward, load_model
from mechintro.organism import corpus
from mechintro.organism.train import (
    TrainConfig,
    concept_vectors,
    encode_examples,
    train_base,
    train_introspective,
)
from mechintro.prompts import encode
from mechintro.training.common import hf_injection
from mechintro.vectors import extract_vectors

CFG = TrainConfig(
    d_model=32,
    n_layers=3,
    n_heads=2,
    d_mlp=64,
    layer=1,
    phase1_steps=3,
    phase2_steps=3,
    batch_size=8,
    n_examples=300,
    warmup=1,
)


@pytest.fixture(scope="module")
def organisms(tmp_path_factory):
    out = tmp_path_factory.mktemp("organism")
    train_base(out / "base", CFG)
    train_introspective(out / "base", out / "introspective", CFG)
    return out


def test_world_is_covered_by_the_tokenizer(tmp_path):
    cs = corpus.concepts(0)
    assert len(corpus.split(cs, "train")) == 60 and len(corpus.split(cs, "heldout")) == 30
    tok = corpus.build_tokenizer(cs, tmp_path)
    unk = tok.convert_tokens_to_ids("<unk>")
    examples = corpus.phase1_examples(cs, 500, 0) + corpus.phase2_examples(cs, 500, 1)
    enc = encode_examples(tok, examples)
    assert not any(unk in row for row in enc.ids)
    batch = encode(tok, [detection_prompt(7)])
    toks = tok.convert_ids_to_tokens(batch.input_ids[0].tolist())
    t = int(batch.position("trial")[0])
    assert toks[t + 1 : t + 3] == ["trial", "7"] and toks[-1] == "<|assistant|>"


def test_held_out_concepts_are_never_injected_in_training():
    cs = corpus.concepts(0)
    held = set(corpus.split(cs, "heldout")) | set(corpus.split(cs, "baseline"))
    pseudo = ["red", "north"]
    injected_words = {e.inject for e in corpus.phase2_examples(cs, 3000, 1, pseudo=pseudo)}
    assert injected_words - {None} and not (injected_words & held)
    assert set(pseudo) <= injected_words


def test_pipeline_writes_loadable_checkpoints(organisms):
    for name in ("base", "introspective"):
        meta = json.loads((organisms / name / "training.json").read_text())
        assert meta["phase"] == name and meta["config"]["layer"] == CFG.layer
        for backend in ("bridge", "hooked"):
            m = load_model(organisms / name, backend=backend)
            assert m.cfg.n_layers == CFG.n_layers
    base = load_model(organisms / "base")
    intro = load_model(organisms / "introspective")
    frozen = [f"blocks.{i}." for i in range(CFG.layer + 1)] + ["embed."]
    b_params, i_params = dict(base.named_parameters()), dict(intro.named_parameters())
    for k, v in b_params.items():
        if any(k.startswith(f) for f in frozen):
            assert torch.equal(v, i_params[k]), k  # phase 2 left the frozen part alone


def test_trainer_vectors_equal_hf_hidden_states(organisms):
    """The trainer's vectors (extract_vectors on the bridge, batched) equal Lindsey's
    recipe computed prompt by prompt from the plain HF model's hidden states."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mechintro.vectors import METHODS

    cs = corpus.concepts(0)
    words, base = ["dog", "rain", "joy"], corpus.split(cs, "baseline")
    unit, resid = concept_vectors(organisms / "base", words, base, CFG.layer, "cpu")
    tok = AutoTokenizer.from_pretrained(organisms / "base")
    hf = AutoModelForCausalLM.from_pretrained(organisms / "base", dtype=torch.float32).eval()
    acts = []
    for w in [*words, *base]:
        batch = encode(tok, [METHODS["lindsey"].prompt(w)])
        with torch.no_grad():
            out = hf(batch.input_ids, output_hidden_states=True)
        acts.append(out.hidden_states[CFG.layer + 1][0, -1])
    A = torch.stack(acts)
    mean = A[len(words) :].mean(0)
    for w, a in zip(words, A):
        torch.testing.assert_close(unit[w], (a - mean) / (a - mean).norm(), atol=1e-5, rtol=0)
    assert resid == pytest.approx(float(A.norm(dim=-1).double().mean()), rel=1e-5)


def test_training_injection_adds_what_injected_adds(organisms):
    from transformers import AutoModelForCausalLM

    folder = organisms / "base"
    model = load_model(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    batch = encode(model.tokenizer, [detection_prompt(2), detection_prompt(10)])
    v = torch.randn(2, CFG.d_model, generator=torch.Generator().manual_seed(0))
    inj = Injection(CFG.layer, v, [3.0, 1.0], mode="from-trial")
    with injected(model, inj, batch):
        ref = forward(model, batch.input_ids, batch.attention_mask)
    delta = v * torch.tensor([3.0, 1.0])[:, None]
    start, end = batch.position("trial"), torch.full((2,), batch.length)
    with hf_injection(hf, {CFG.layer: (delta, start, end)}), torch.no_grad():
        pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        got = hf(batch.input_ids, attention_mask=batch.attention_mask, position_ids=pos).logits
    real = batch.attention_mask.bool()
    torch.testing.assert_close(got[real], ref[real], atol=1e-5, rtol=0)


def test_detection_trials_table(organisms):
    cs = corpus.concepts(0)
    words = ["dog", "rain"]
    unit, resid = concept_vectors(
        organisms / "base", words, corpus.split(cs, "baseline"), CFG.layer, "cpu"
    )
    model = load_model(organisms / "introspective")
    df = detection_trials(
        model,
        unit,
        resid,
        layer=CFG.layer,
        words=words,
        strengths=[0.5, 1.0],
        trials=(1, 2),
        n_controls=6,
        max_new_tokens=3,
    )
    assert len(df) == 2 * 2 * 2 + 6 and df.injected.sum() == 8
    table = summary(df, corpus.category_of(cs))
    assert list(table.index) == [0.5, 1.0] and (table.n_control == 6).all()


def test_shipped_organisms_detect_and_name_held_out_concepts():
    """The shipped weights: the introspective organism names held-out concepts it was never
    trained on and stays silent on controls; the base organism claims nothing."""
    from mechintro.experiments.trials import grade_trials
    from mechintro.models import builtin_path

    cs = corpus.concepts(0)
    held = corpus.split(cs, "heldout")[::5]
    base = load_model("builtin:organism-base")
    vecs = extract_vectors(base, held, layer=3, baseline=corpus.split(cs, "baseline"))
    unit = {w: v.vector / v.norm for w, v in vecs.items()}
    resid = vecs[held[0]].resid_norm
    assert resid is not None
    assert (builtin_path("organism") / "model.safetensors").is_file()
    for name, claims in (("builtin:organism", True), ("builtin:organism-base", False)):
        df = detection_trials(
            load_model(name),
            unit,
            resid,
            layer=3,
            words=held,
            strengths=[1.0],
            n_controls=8,
            temperature=1.0,
        )
        g = grade_trials(df, corpus.category_of(cs))
        inj, ctrl = g[g.injected], g[~g.injected]
        assert (ctrl.detection == "NO").all()
        if claims:
            assert (inj.detection == "YES").all() and (inj.identification == "YES").all()
        else:
            assert (inj.detection == "NO").all()


def test_organism_commands_build_and_evaluate(tmp_path, capsys):
    """``mechintro organism build`` takes TrainConfig's fields as options and ``evaluate``
    measures the folder it wrote."""
    from mechintro.app.cli import main

    tiny = ["--d-model", "32", "--n-layers", "3", "--n-heads", "2", "--d-mlp", "64"]
    tiny += ["--layer", "1", "--phase1-steps", "2", "--phase2-steps", "2", "--batch-size", "8"]
    tiny += ["--n-examples", "300", "--warmup", "1", "--device", "cpu"]
    assert main(["organism", "build", "--out", str(tmp_path), *tiny]) == 0
    meta = json.loads((tmp_path / "introspective" / "training.json").read_text())
    assert meta["config"]["d_model"] == 32 and meta["config"]["phase2_steps"] == 2
    capsys.readouterr()
    folder = str(tmp_path / "introspective")
    argv = ["organism", "evaluate", folder, "--strengths", "1", "--trials", "1"]
    argv += ["--n-controls", "2"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["folder"] == folder and report["heldout"][0]["n_control"] == 2
    with pytest.raises(SystemExit, match="2"):  # argparse's usage error
        main(["organism", "build", "--out", str(tmp_path), "--d-model", "x"])
