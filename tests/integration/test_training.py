"""Training: reply-only loss masks, HF injection = TL injection, LoRA on attention only, a few
steps lower the loss, DPO / SFT / SFT+KL by hand, the bias vector (held-out evaluation only),
checkpoint comparison, and the organism runs end to end (a step each)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from mechintro.experiments.protocols.detection import detection_prompt
from mechintro.experiments.trials import check_heldout
from mechintro.inject import Injection, injected
from mechintro.models import fingerprint, load_model
from mechintro.prompts import Prompt, encode
from mechintro.training import (
    BiasConfig,
    Checkpoint,
    LoRAConfig,
    PreferenceConfig,
    PreferencePair,
    TrainedBias,
    biased,
    compare_checkpoints,
    dpo_loss,
    encode_replies,
    evaluate_bias,
    reply_loss,
    sft_kl_loss,
    sft_loss,
    train_bias,
    train_lora,
    train_preferences,
)
from mechintro.training.common import hf_injection, hf_mlp_bias, sequence_logprobs
from mechintro.training.lora import introspection_examples, question_prompt
from mechintro.vectors import ConceptVector

WORDS = ["apple", "river", "storm", "lamp"]
QUESTIONS = ("Trial {n}: Do you detect an injected thought?", "Anything odd?")


def _hf(folder: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), tok


def _vectors(d: int, words=WORDS, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {w: torch.randn(d, generator=g) for w in words}


def _small_lora(**kw) -> LoRAConfig:
    base = dict(
        layer=1,
        strengths=(4.0, 8.0),
        questions=QUESTIONS,
        prompt_format="chat",
        r=4,
        alpha=8,
        batch_size=4,
        max_steps=3,
    )
    return LoRAConfig(**{**base, **kw})


# ---------------------------------------------------------------------------------------------
# tokenisation and losses


def test_reply_loss_mask_covers_exactly_the_reply(tiny_dirs):
    _, tok = _hf(tiny_dirs["llama"])
    prompts = [Prompt.chat("Hi"), Prompt.chat("A much longer question, right?")]
    replies = ["Hello.", "Yes, it is long."]
    b = encode_replies(tok, prompts, replies)
    for row in range(2):
        p = encode(tok, [prompts[row]]).input_ids[0].tolist()
        n = int(b.attention_mask[row].sum())
        assert b.input_ids[row, : len(p)].tolist() == p and int(b.prompt_len[row]) == len(p)
        where = b.loss_mask[row].nonzero().flatten().tolist()
        assert where == list(range(len(p), n))  # the reply and its end token, nothing else
        assert tok.decode(b.input_ids[row][b.loss_mask[row]]) == replies[row] + "<|im_end|>"
    assert not b.loss_mask[0, int(b.attention_mask[0].sum()) :].any()  # padding
    logits = torch.randn(*b.input_ids.shape, len(tok), generator=torch.Generator().manual_seed(0))
    m = b.loss_mask[:, 1:]
    hand = torch.nn.functional.cross_entropy(logits[:, :-1][m], b.input_ids[:, 1:][m])
    torch.testing.assert_close(reply_loss(logits, b), hand)
    moved = logits.clone()
    k = int(b.prompt_len[0]) - 1  # positions 0..k-1 predict prompt tokens
    moved[0, :k] += 5 * torch.randn_like(moved[0, :k])
    assert torch.equal(reply_loss(moved, b), reply_loss(logits, b))  # prompt tokens: no loss
    moved[0, k] += 5.0 * torch.randn(len(tok))
    assert not torch.equal(reply_loss(moved, b), reply_loss(logits, b))  # first reply token
    lp = logits[:, :-1].log_softmax(-1).gather(-1, b.input_ids[:, 1:, None])[..., 0]
    torch.testing.assert_close(sequence_logprobs(logits, b), (lp * m).sum(-1))


def test_raw_prompt_gets_a_space_and_eos(tiny_dirs):
    _, tok = _hf(tiny_dirs["llama"])
    b = encode_replies(tok, [Prompt.text("Human: Hi\n\nAssistant:")], ["Hello."])
    assert tok.decode(b.input_ids[0][b.loss_mask[0]]) == " Hello." + tok.eos_token
    with pytest.raises(ValueError, match="one reply per prompt"):
        encode_replies(tok, [Prompt.chat("a")], ["x", "y"])
    with pytest.raises(ValueError, match="empty"):
        encode_replies(tok, [Prompt.chat("a")], [""])


@pytest.mark.parametrize("mode", ["single-token", "from-trial"])
def test_hf_injection_adds_what_injected_adds(tiny_dir, mode):
    model = load_model(tiny_dir)
    hf = model.original_model
    prompts = [detection_prompt(2), Prompt.chat("Trial 10: anything?")]
    replies = ["No.", "Yes, I detect it."]
    rb = encode_replies(model.tokenizer, prompts, replies)
    v = _vectors(model.cfg.d_model, ["a", "b"])
    delta = torch.stack([3.0 * v["a"], torch.zeros(model.cfg.d_model)])  # row 1: a control
    start, end = rb.starts(mode)
    with torch.no_grad(), hf_injection(hf, {1: (delta, start, end)}):
        got = hf(input_ids=rb.input_ids, attention_mask=rb.attention_mask).logits
    # the same rows through TransformerLens, one at a time (no padding), with `injected`
    for row in range(2):
        n = int(rb.attention_mask[row].sum())
        ids = rb.input_ids[row : row + 1, :n]
        batch = encode(model.tokenizer, [prompts[row]])
        tl_mode = "single-token" if mode == "single-token" else "from-trial"
        inj = Injection(1, delta[row], 1.0, mode=tl_mode)
        with torch.no_grad(), injected(model, inj, batch):
            ref = model(ids)
        torch.testing.assert_close(got[row, :n], ref[0], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# LoRA


def test_introspection_examples_are_balanced_and_match_the_demo_prompt(tiny_dirs):
    cfg = _small_lora(negatives=1.0)
    ex = introspection_examples(WORDS, cfg)
    pos = [e for e in ex if e.concept]
    assert len(pos) == len(WORDS) * len(QUESTIONS) * 2 and len(ex) == 2 * len(pos)
    assert {e.reply for e in pos} == {cfg.yes_target.replace("{c}", w) for w in WORDS}
    assert {e.reply for e in ex if not e.concept} == {cfg.no_target}
    assert ex == introspection_examples(WORDS, cfg)  # seeded
    _, tok = _hf(tiny_dirs["llama"])
    trial = "Trial {n}: Do you detect an injected thought? If so, what is the injected thought"
    pre = _small_lora(preamble=True, questions=(trial + " about?",))
    got = encode(tok, [question_prompt(pre.questions[0], pre, 7)]).input_ids
    assert torch.equal(got, encode(tok, [detection_prompt(7)]).input_ids)
    raw = question_prompt("Is there a subliminal vector?", LoRAConfig())
    assert raw.raw == "Human: Is there a subliminal vector?\n\nAssistant:"


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"strengths": ()}, "strengths"),
        ({"strengths": (-1.0,)}, "strengths"),
        ({"unit": "norm"}, "unit"),
        ({"mode": "all"}, "mode"),
        ({"prompt_format": "fonseca", "preamble": True}, "preamble"),
        ({"yes_target": "I detect it."}, "{c}"),
        ({"r": 0}, "r must be"),
        ({"dropout": 1.0}, "dropout"),
        ({"max_steps": 0}, "max_steps"),
        ({"layer": 1.5}, "layer"),
        ({"schedule": "step"}, "schedule"),
    ],
)
def test_lora_config_is_validated(kw, match, unchecked):
    # LoRAConfig's own refusal (a float layer: the type checks would refuse it first)
    with unchecked(), pytest.raises(ValueError, match=match):
        LoRAConfig(**kw)


def test_lora_touches_only_attention_projections(tiny_dirs, tmp_path):
    pytest.importorskip("peft")
    from mechintro.training.lora import apply_lora, lora_parameters, merge_lora, save_lora

    hf, tok = _hf(tiny_dirs["llama"])
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    res = train_lora(
        hf, _vectors(hf.config.hidden_size), WORDS, _small_lora(lr=1e-2), tokenizer=tok, merge=False
    )
    names = [n for n, p in hf.named_parameters() if "lora_" in n]
    assert names and len(lora_parameters(hf)) == len(names) == 2 * 4 * hf.config.num_hidden_layers
    assert all(
        any(f"self_attn.{p}." in n for p in ("q_proj", "k_proj", "v_proj", "o_proj")) for n in names
    )
    assert all(p.requires_grad for p in hf.parameters())  # the caller's flags are back
    assert not hf.training and res.steps == 3 and len(res.losses) == 3
    assert save_lora(hf, tmp_path / "adapter.safetensors") == 4 * hf.config.num_hidden_layers
    assert merge_lora(hf) == 4 * hf.config.num_hidden_layers
    fresh, _ = _hf(tiny_dirs["llama"])  # the saved adapters, folded by hand, give peft's merge
    assert apply_lora(fresh, tmp_path / "adapter.safetensors") == 4 * hf.config.num_hidden_layers
    torch.testing.assert_close(fresh.state_dict(), hf.state_dict(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_lora(hf, tmp_path / "again.safetensors")  # merged: nothing left to save
    after = hf.state_dict()
    assert set(after) == set(before)  # no adapter left behind
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    attn = {
        k
        for k in before
        if any(f"self_attn.{p}.weight" in k for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
    }
    assert changed and changed <= attn


def test_lora_on_a_bridge_trains_the_modules_it_computes_with(tiny_dirs):
    pytest.importorskip("peft")
    model = load_model(tiny_dirs["qwen3"])
    batch = encode(model.tokenizer, [detection_prompt(1)])
    with torch.no_grad():
        before = model(batch.input_ids)
    res = train_lora(model, _vectors(model.cfg.d_model), WORDS, _small_lora(lr=1e-2))
    assert all("._original_component" in t for t in res.extra["targets"])
    with torch.no_grad():
        after = model(batch.input_ids)
        hf_after = model.original_model(batch.input_ids).logits
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, hf_after, atol=1e-5, rtol=1e-5)
    _, cache = model.run_with_cache(batch.input_ids, names_filter="blocks.0.attn.q.hook_out")
    assert "blocks.0.attn.q.hook_out" in cache  # the bridge's hooks still fire
    assert not any("lora_" in n for n, _ in model.named_parameters())


def test_a_few_lora_steps_lower_the_loss(tiny_dirs):
    pytest.importorskip("peft")
    hf, tok = _hf(tiny_dirs["llama"])
    cfg = _small_lora(lr=1e-2, max_steps=40, dropout=0.0, schedule="constant", batch_size=8)
    res = train_lora(hf, _vectors(hf.config.hidden_size), WORDS, cfg, tokenizer=tok)
    first, last = sum(res.losses[:5]) / 5, sum(res.losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    again, _ = _hf(tiny_dirs["llama"])
    res2 = train_lora(again, _vectors(hf.config.hidden_size), WORDS, cfg, tokenizer=tok)
    assert res2.losses == res.losses  # seeded
    torch.testing.assert_close(again.state_dict(), hf.state_dict())


def test_lora_refuses_bad_input(tiny_dirs):
    pytest.importorskip("peft")
    hf, tok = _hf(tiny_dirs["llama"])
    v = _vectors(hf.config.hidden_size)
    with pytest.raises(ValueError, match="out of range"):
        train_lora(hf, v, WORDS, _small_lora(layer=9), tokenizer=tok)
    with pytest.raises(KeyError, match="no vectors"):
        train_lora(hf, v, ["nope"], _small_lora(), tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer"):
        train_lora(hf, v, WORDS, _small_lora())
    with pytest.raises(ValueError, match="resid_norm"):
        train_lora(hf, v, WORDS, _small_lora(unit="resid-norm"), tokenizer=tok)
    with pytest.raises(ValueError, match="no nn.Linear"):
        train_lora(hf, v, WORDS, _small_lora(target_modules=("c_attn",)), tokenizer=tok)
    with pytest.raises(TypeError, match="HookedTransformer"):
        train_lora(load_model(tiny_dirs["llama"], backend="hooked"), v, WORDS, _small_lora())


# ---------------------------------------------------------------------------------------------
# DPO, SFT, SFT+KL


def test_dpo_loss_by_hand():
    pc, pr = torch.tensor([-3.0, -2.0]), torch.tensor([-5.0, -1.0])
    rc, rr = torch.tensor([-4.0, -2.5]), torch.tensor([-4.5, -1.5])
    beta = 0.5
    out = dpo_loss(pc, pr, rc, rr, beta=beta)
    h = [beta * ((-3 + 4) - (-5 + 4.5)), beta * ((-2 + 2.5) - (-1 + 1.5))]
    hand = sum(math.log(1 + math.exp(-x)) for x in h) / 2  # -log σ(h) = softplus(-h)
    assert float(out.loss) == pytest.approx(hand, rel=1e-6)
    torch.testing.assert_close(out.chosen_rewards, beta * (pc - rc))
    torch.testing.assert_close(out.rejected_rewards, beta * (pr - rr))
    assert out.accuracy == 0.5  # the second pair ties (0.25 vs 0.25)
    free = dpo_loss(pc, pr, beta=beta)  # reference-free
    hand_free = sum(math.log(1 + math.exp(-beta * (c - r))) for c, r in [(-3, -5), (-2, -1)]) / 2
    assert float(free.loss) == pytest.approx(hand_free, rel=1e-6)
    eps = 0.1
    smooth = dpo_loss(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
    hand_s = (
        sum((1 - eps) * math.log(1 + math.exp(-x)) + eps * math.log(1 + math.exp(x)) for x in h) / 2
    )
    assert float(smooth.loss) == pytest.approx(hand_s, rel=1e-6)
    same = dpo_loss(pc, pr, pc, pr)
    assert float(same.loss) == pytest.approx(math.log(2))  # policy = reference
    with pytest.raises(ValueError, match="both reference"):
        dpo_loss(pc, pr, rc, None)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(pc, pr, beta=0.0)
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(pc, pr[:1])


def test_sft_kl_reduces_to_sft_at_kl_weight_zero(tiny_dirs):
    _, tok = _hf(tiny_dirs["llama"])
    b = encode_replies(tok, [Prompt.chat("Hi"), Prompt.chat("Why?")], ["Hello.", "Because."])
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(*b.input_ids.shape, len(tok), generator=g)
    ref = torch.randn(*b.input_ids.shape, len(tok), generator=g)
    assert torch.equal(sft_kl_loss(logits, ref, b, kl_weight=0.0), sft_loss(logits, b))
    torch.testing.assert_close(sft_kl_loss(logits, logits, b, kl_weight=3.0), sft_loss(logits, b))
    m = b.loss_mask[:, 1:]
    p, q = logits[:, :-1][m].log_softmax(-1), ref[:, :-1][m].log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1).mean()
    torch.testing.assert_close(
        sft_kl_loss(logits, ref, b, kl_weight=0.5), sft_loss(logits, b) + 0.5 * kl
    )
    with pytest.raises(ValueError, match="kl_weight"):
        sft_kl_loss(logits, ref, b, kl_weight=-1.0)


@pytest.mark.parametrize("objective", ["sft", "sft-kl", "dpo", "dpo-reference-free"])
def test_a_few_preference_steps_lower_the_loss(tiny_dirs, objective):
    hf, tok = _hf(tiny_dirs["llama"])
    v = _vectors(hf.config.hidden_size)
    ask = [Prompt.chat(f"Trial {n}: anything?") for n in (1, 2)]  # short: byte-level tokens
    pairs = [PreferencePair(ask[0], f"Yes, {w}.", "No.", w, 6.0) for w in WORDS]
    pairs += [PreferencePair(ask[1], "No.", "Yes, apple.")] * 4
    cfg = PreferenceConfig(
        objective=objective,
        lr=1e-3,
        steps=12,
        batch_size=8,
        layer=1,
        schedule="constant",
        kl_weight=0.1,
    )
    res = train_preferences(hf, pairs, cfg, tokenizer=tok, vectors=v)
    assert res.losses[-1] < res.losses[0], res.losses
    if objective == "dpo":
        assert res.losses[0] == pytest.approx(math.log(2), abs=1e-5)  # starts at the reference
    with pytest.raises(ValueError, match="vectors"):
        train_preferences(hf, pairs, cfg, tokenizer=tok)
    if objective.startswith("dpo"):
        with pytest.raises(ValueError, match="rejected"):
            train_preferences(hf, [PreferencePair(ask[0], "No.")], cfg, tokenizer=tok)


# ---------------------------------------------------------------------------------------------
# trained bias vector


def test_biased_adds_the_same_as_the_training_hook(tiny_dirs):
    bridge = load_model(tiny_dirs["llama"])
    hooked = load_model(tiny_dirs["llama"], backend="hooked")
    hf, tok = _hf(tiny_dirs["llama"])
    b = torch.randn(hf.config.hidden_size, generator=torch.Generator().manual_seed(1))
    batch = encode(tok, [Prompt.chat("Trial 1: Do you detect an injected thought?")])
    with torch.no_grad(), hf_mlp_bias(hf, 2, b):
        ref = hf(batch.input_ids).logits
    for model in (bridge, hooked):
        with torch.no_grad(), biased(model, TrainedBias(2, b)) as site:
            got = model(batch.input_ids)
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
        assert site.endswith(("mlp.hook_out", "hook_mlp_out"))
        assert all(not hp._forward_hooks for hp in model.hook_dict.values())
    with (
        pytest.raises(ValueError, match="backend='bridge'"),
        biased(load_model(tiny_dirs["gemma3"], backend="hooked"), TrainedBias(0, torch.zeros(64))),
    ):
        pass
    with pytest.raises(ValueError, match="NaN"):
        TrainedBias(0, torch.full((4,), float("nan")))


def test_train_bias_lowers_the_loss_and_leaves_the_weights(tiny_dirs):
    model = load_model(tiny_dirs["llama"])
    fp = fingerprint(model)
    d = model.cfg.d_model
    vecs = {L: _vectors(d, seed=L) for L in (1, 2)}
    cfg = BiasConfig(
        layer=2,
        injection_layers=(1, 2),
        strengths=(2.0, 6.0),
        steps=15,
        batch_size=8,
        lr=5e-2,
        preamble=False,
    )
    res = train_bias(model, vecs, WORDS, cfg)
    assert res.bias.layer == 2 and float(res.bias.vector.norm()) > 0
    assert res.training.losses[-1] < res.training.losses[0]
    assert fingerprint(model) == fp  # the model itself is untouched
    assert all(p.requires_grad for p in model.original_model.parameters())
    with pytest.raises(KeyError, match="injection layers"):
        train_bias(model, {1: vecs[1]}, WORDS, cfg)


def test_trained_bias_evaluation_refuses_baseline_words(tiny_dirs):
    model = load_model(tiny_dirs["llama"])
    d = model.cfg.d_model
    base = ("table", "chair")
    vecs = {w: ConceptVector(w, t, 1, "lindsey", baseline=base) for w, t in _vectors(d).items()}
    vecs["table"] = ConceptVector("table", torch.randn(d), 1, "lindsey", baseline=base)
    bias = TrainedBias(2, torch.zeros(d))
    kw = dict(layer=1, strengths=[1.0], n_controls=2)
    with pytest.raises(ValueError, match="baseline words"):
        evaluate_bias(model, bias, vecs, 1.0, ["apple", "table"], **kw)  # baseline from vectors
    plain = {w: v.vector for w, v in vecs.items()}
    with pytest.raises(ValueError, match="baseline words"):
        evaluate_bias(model, bias, plain, 1.0, ["table"], baseline=base, **kw)
    with pytest.raises(ValueError, match="pass baseline="):
        evaluate_bias(model, bias, plain, 1.0, ["apple"], **kw)
    with pytest.raises(ValueError, match="trained on"):
        evaluate_bias(model, bias, vecs, 1.0, ["apple"], train_words=["apple"], **kw)
    assert check_heldout(["apple"], baseline=base, train_words=["lamp"]) == ["apple"]


def test_evaluate_bias_runs_before_and_after(tiny_dirs):
    model = load_model(tiny_dirs["llama"])
    d = model.cfg.d_model
    vecs = {w: v / v.norm() for w, v in _vectors(d).items()}
    zero = evaluate_bias(
        model,
        TrainedBias(2, torch.zeros(d)),
        vecs,
        1.0,
        ["apple", "river"],
        layer=1,
        strengths=[4.0],
        baseline=["table"],
        n_controls=3,
    )
    assert zero.before.n_injected == 2 and zero.before.n_control == 3
    # a zero bias changes nothing; the biased run takes the bridge (the twin has no bias hook)
    assert zero.before.paths == ["twin"] and zero.after.paths == ["bridge"]
    assert dataclasses.replace(zero.after, paths=["twin"]) == zero.before
    assert list(zero.before.to_dict())[:3] == ["tpr", "tpr_ci", "n_injected"]
    got = zero.trials.groupby("biased").reply.apply(list)
    assert got[True] == got[False]


# ---------------------------------------------------------------------------------------------
# checkpoints and the organism runs


def test_compare_checkpoints(tiny_dirs):
    calls = []

    def loader(source, **kw):
        calls.append((str(source), kw))
        return load_model(source)

    def run(model):
        return {"n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model}

    table = compare_checkpoints(
        [Checkpoint("a", tiny_dirs["llama"]), ("b", tiny_dirs["qwen3"])], run, load=loader
    )
    assert list(table.columns) == ["checkpoint", "source", "revision", "n_layers", "d_model"]
    assert table.checkpoint.tolist() == ["a", "b"] and (table.n_layers == 4).all()
    assert [c[1] for c in calls] == [{}, {}]
    frames = compare_checkpoints(
        {"x": tiny_dirs["llama"]}, lambda m: pd.DataFrame({"v": [1, 2]}), load=loader
    )
    assert frames.checkpoint.tolist() == ["x", "x"] and frames.v.tolist() == [1, 2]
    compare_checkpoints(
        [Checkpoint("r", "org/model", "step100")],
        lambda m: {"ok": 1},
        load=lambda s, **kw: calls.append((s, kw)),
    )
    assert calls[-1] == ("org/model", {"revision": "step100"})
    with pytest.raises(ValueError, match="duplicate"):
        compare_checkpoints([("a", "x"), ("a", "y")], run, load=loader)
    with pytest.raises(TypeError, match="mapping"):
        compare_checkpoints([("a", tiny_dirs["llama"])], lambda m: 3, load=loader)
    with pytest.raises(ValueError, match="reserved"):
        compare_checkpoints([("a", tiny_dirs["llama"])], lambda m: {"source": 1}, load=loader)


def test_detection_trials_batched_equal_per_trial(tiny_dirs):
    """Batches of 4 (the last one of controls only, which runs without a hook) give the
    replies of one trial at a time, and a row keeps its seed whatever its batch."""
    from mechintro.experiments.trials import detection_trials

    model = load_model(tiny_dirs["llama"])
    vecs = {w: v / v.norm() for w, v in _vectors(model.cfg.d_model).items()}
    kw = dict(layer=1, words=WORDS[:2], strengths=[2.0, 4.0], n_controls=3, max_new_tokens=3)
    one = detection_trials(model, vecs, 1.0, batch_size=1, **kw)
    four = detection_trials(model, vecs, 1.0, batch_size=4, **kw)
    assert len(one) == 7 and one.injected.tolist() == [True] * 4 + [False] * 3
    pd.testing.assert_frame_equal(four, one)
    sampled = dict(kw, temperature=1.0, seed=5)
    a = detection_trials(model, vecs, 1.0, batch_size=4, **sampled)
    b = detection_trials(model, vecs, 1.0, batch_size=4, **sampled)
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize("run", ["lora", "bias"])
def test_organism_runs_end_to_end(tmp_path, run):
    """``mechintro organism lora|bias``: the recipe's config fields are options (a LoRA's
    step limit is --max-steps, the bias's --steps), the rest keeps the organism's recipe."""
    if run == "lora":
        pytest.importorskip("peft")
    from mechintro.app.cli import main

    steps = "--max-steps" if run == "lora" else "--steps"
    argv = ["organism", run, "--out", str(tmp_path), steps, "1", "--n-controls", "2"]
    assert main(argv) == 0
    result = json.loads((tmp_path / "result.json").read_text())
    for when in ("before", "after"):
        assert result[when]["n_control"] == 2 and result[when]["n_injected"] == 30 * 4
        assert 0.0 <= result[when]["tpr"] <= 1.0 and 0.0 <= result[when]["fpr"] <= 1.0
    assert result["steps"] == 1 and result["before"]["tpr"] == 0.0  # the base never says yes
    assert not set(result["train_words"]) & {"table", "chair", "lamp"}  # baseline words


def test_the_papers_8bit_optimizer_is_an_option():
    from mechintro.training.common import make_optimizer
    from mechintro.training.lora import LoRAConfig

    assert LoRAConfig(optimizer="adamw8bit").optimizer == "adamw8bit"
    with pytest.raises(ValueError, match="optimizer must be one of"):
        LoRAConfig(optimizer="sgd")
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert isinstance(make_optimizer("adamw", params, lr=1e-3, weight_decay=0.0), torch.optim.AdamW)
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs bitsandbytes"):
            make_optimizer("adamw8bit", params, lr=1e-3, weight_decay=0.0)
