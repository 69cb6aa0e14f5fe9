"""Injection identities on tiny random models of every target architecture, both backends."""

from __future__ import annotations

import pytest
import torch
from tiny_models import vecs

from mechintro.generation import generate
from mechintro.inject import Injection, PositionMode, injected
from mechintro.models import resid_post
from mechintro.prompts import Prompt, encode

pytestmark = pytest.mark.identity

LAYER = 1
NEW = 5  # generated tokens per trial


def _prompts() -> list[Prompt]:
    """Mixed lengths: 'Trial 1' next to 'Trial 10', one with a long history."""
    return [
        Prompt.chat("Trial 1: Do you detect an injected thought?", system=""),
        Prompt.chat(
            "Trial 10: Do you detect an injected thought?",
            history=[("user", "A preamble that makes this row much longer."), ("assistant", "Ok.")],
        ),
        Prompt.chat("Hi. Trial 3: anything?", marks={"greeting": "Hi."}),
    ]


def _logits(model, batch):
    from mechintro.models import forward

    return forward(model, batch.input_ids, batch.attention_mask)


def test_zero_strength_is_bit_identical(model):
    batch = encode(model.tokenizer, _prompts())
    span_batch = batch.rows([2])  # the only row with a marked span
    v = vecs(model, 1)[0]
    for mode in PositionMode:
        b, start = (span_batch, "greeting") if mode is PositionMode.SPAN else (batch, "trial")
        plain = _logits(model, b)
        with injected(model, Injection(LAYER, v, 0.0, mode=mode, start=start), b):
            assert torch.equal(_logits(model, b), plain), mode


def test_control_row_in_mixed_batch_is_bit_identical(model):
    batch = encode(model.tokenizer, _prompts())
    plain = _logits(model, batch)
    inj = Injection(LAYER, vecs(model, 3), [3.0, 0.0, -2.0], mode="all")
    with injected(model, inj, batch):
        steered = _logits(model, batch)
    assert torch.equal(steered[1], plain[1])
    assert not torch.allclose(steered[0], plain[0])  # the injection does something
    assert not torch.allclose(steered[2], plain[2])


def test_mixed_batch_equals_each_row_alone(model):
    prompts = _prompts()
    vs = vecs(model, 3)
    strengths = [3.0, 0.0, -2.0]
    batch = encode(model.tokenizer, prompts)
    inj = Injection(LAYER, vs, strengths, mode="from-trial")
    out = generate(model, batch, injection=inj, max_new_tokens=NEW, keep_logits=True, stop_ids=[])
    together = torch.stack(out.logits)  # [step, batch, vocab]
    for i in range(len(prompts)):
        alone_batch = encode(model.tokenizer, [prompts[i]])
        alone_inj = Injection(LAYER, vs[i : i + 1], [strengths[i]], mode="from-trial")
        alone = generate(
            model,
            alone_batch,
            injection=alone_inj,
            max_new_tokens=NEW,
            keep_logits=True,
            stop_ids=[],
        )
        assert alone.tokens[0] == out.tokens[i]
        assert torch.allclose(torch.stack(alone.logits)[:, 0], together[:, i], atol=1e-4)


def _expected(batch, mode: PositionMode, total: int) -> list[set[int]]:
    """Positions each row should be steered at (padded coordinates; generation from T on)."""
    T = batch.length
    out = []
    for b in range(len(batch)):
        first = int(batch.attention_mask[b].argmax())
        trial = int(batch.positions["trial"][b])
        rng = {
            PositionMode.FROM_TRIAL: range(trial, total),
            PositionMode.PROMPT_ONLY: range(trial, T),
            PositionMode.GENERATION_ONLY: range(T, total),
            PositionMode.SINGLE_TOKEN: range(T - 1, T),
            PositionMode.ALL: range(first, total),
            PositionMode.BEFORE_TRIAL: range(first, int(batch.positions["last-turn"][b])),
        }[mode]
        out.append(set(rng))
    return out


@pytest.mark.parametrize("use_cache", [True, False], ids=["kv", "nokv"])
@pytest.mark.parametrize("mode", [m for m in PositionMode if m is not PositionMode.SPAN])
def test_injection_present_exactly_where_the_mode_says(model, mode, use_cache):
    """Probe hooks before and after the injection hook see which positions changed, per call."""
    batch = encode(model.tokenizer, _prompts())
    inj = Injection(LAYER, vecs(model, 3), [1.0, 2.0, 3.0], mode=mode)
    seen: list[torch.Tensor] = []
    changed: set[tuple[int, int]] = set()
    offset = {"next": 0, "calls": 0}

    def before(x, hook):
        seen.append(x.detach().clone())

    def after(x, hook):
        n = x.shape[1]
        off = 0 if (n > 1 or offset["calls"] == 0) else offset["next"]
        offset["next"], offset["calls"] = off + n, offset["calls"] + 1
        diff = (x - seen.pop()).abs().sum(-1)  # [batch, n]
        for b, p in (diff > 0).nonzero().tolist():
            changed.add((b, off + p))

    name = resid_post(LAYER)
    # registration order = call order: probe, injection, probe
    with (
        model.hooks(fwd_hooks=[(name, before)]),
        injected(model, inj, batch) as log,
        model.hooks(fwd_hooks=[(name, after)]),
    ):
        generate(model, batch, max_new_tokens=NEW, use_cache=use_cache, stop_ids=[])
    total = batch.length + NEW - 1  # the last sampled token is never fed back
    expected = _expected(batch, mode, total)
    for b in range(len(batch)):
        got = {p for (r, p) in changed if r == b}
        assert got == expected[b], (mode, b)
        assert set(log.steered_positions()[b]) == expected[b]


def test_trial_position_is_the_token_before_trial(model):
    batch = encode(model.tokenizer, _prompts())
    tok = model.tokenizer
    for b in range(len(batch)):
        p = int(batch.position("trial")[b])
        after = tok.decode(batch.input_ids[b, p + 1 : p + 4])
        assert after.startswith("Tri"), after
        assert int(batch.attention_mask[b, p]) == 1


def test_span_mode_steers_the_marked_span_only(model):
    batch = encode(model.tokenizer, _prompts())
    lo, hi = batch.spans["greeting"][2].tolist()
    assert model.tokenizer.decode(batch.input_ids[2, lo:hi]) == "Hi."
    sub = batch.rows([2])
    inj = Injection(LAYER, vecs(model, 1)[0], 2.0, mode="span", start="greeting")
    with injected(model, inj, sub) as log:
        _logits(model, sub)
    s_lo, s_hi = sub.spans["greeting"][0].tolist()
    assert log.steered_positions()[0] == list(range(s_lo, s_hi))


def test_kv_cache_equals_no_cache_under_every_mode(model):
    batch = encode(model.tokenizer, _prompts())
    for mode in (m for m in PositionMode if m is not PositionMode.SPAN):
        inj = Injection(LAYER, vecs(model, 3), [2.0, 0.0, 3.0], mode=mode)
        runs = [
            generate(
                model,
                batch,
                injection=inj,
                max_new_tokens=NEW,
                use_cache=c,
                keep_logits=True,
                stop_ids=[],
            )
            for c in (True, False)
        ]
        assert runs[0].tokens == runs[1].tokens, mode
        diff = (torch.stack(runs[0].logits) - torch.stack(runs[1].logits)).abs().max()
        assert diff < 1e-4, (mode, float(diff))


def test_no_hook_left_after_exception_in_generation(model, monkeypatch):
    from mechintro.engine.step import Runner

    batch = encode(model.tokenizer, _prompts())
    inj = Injection(LAYER, vecs(model, 3), 2.0)
    calls = {"n": 0}
    real_step = Runner.step

    def failing_step(self, new):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("boom")
        return real_step(self, new)

    monkeypatch.setattr(Runner, "step", failing_step)
    with pytest.raises(RuntimeError, match="boom"):
        generate(model, batch, injection=inj, max_new_tokens=NEW)
    assert calls["n"] == 3
    assert all(not hp._forward_hooks for hp in model.hook_dict.values())
    monkeypatch.undo()
    assert torch.equal(_logits(model, batch), _logits(model, batch))


def test_resid_norm_unit_scales_to_the_reference_norm():
    v = torch.tensor([3.0, 4.0])
    inj = Injection(0, v, 0.5, unit="resid-norm", resid_norm=10.0)
    assert torch.allclose(inj.deltas(1)[0].norm(), torch.tensor(5.0))
    raw = Injection(0, v, 0.5)
    assert torch.allclose(raw.deltas(1)[0], v * 0.5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"layer": 0.6}, TypeError, "layer_at_depth"),
        ({"vector": torch.tensor([1.0, float("nan")])}, ValueError, "NaN or inf"),
        ({"vector": torch.tensor([1.0, float("inf")])}, ValueError, "NaN or inf"),
        ({"strength": float("nan")}, ValueError, "strength contains NaN"),
        ({"mode": "from_trail"}, ValueError, "use one of from-trial"),
        ({"unit": "percent"}, ValueError, "unknown strength unit"),
        ({"unit": "resid-norm"}, ValueError, "resid_norm="),
        ({"vector": torch.ones(3, 2), "strength": [1.0, 2.0]}, ValueError, "one per row"),
    ],
)
def test_bad_injection_is_refused(kwargs, error, match, unchecked):
    args = {"layer": 0, "vector": torch.ones(2), "strength": 1.0, **kwargs}
    # Injection's own refusal (a float layer): the type checks would come first
    with unchecked(), pytest.raises(error, match=match):
        Injection(**args)


def test_bad_injection_for_model_is_refused(model):
    batch = encode(model.tokenizer, _prompts())
    d = model.cfg.d_model
    n = model.cfg.n_layers
    with (
        pytest.raises(ValueError, match=f"use 0..{n - 1}"),
        injected(model, Injection(n, torch.ones(d)), batch),
    ):
        pass
    with (
        pytest.raises(ValueError, match="does not match the model's d_model"),
        injected(model, Injection(0, torch.ones(d + 1)), batch),
    ):
        pass
    with (
        pytest.raises(ValueError, match="one vector or strength per prompt"),
        injected(model, Injection(0, torch.ones(2, d)), batch),
    ):
        pass


def test_before_trial_steers_the_context_before_the_last_turn_only(tiny_dirs):
    """Macar et al.'s pre-trial steering: every real token up to the first token of the last
    user turn (the earlier messages rendered alone, as the released evaluation counts them),
    none of that turn and no generated token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    history = (("user", "Are you ready?"), ("assistant", "Ok."))
    prompts = [
        Prompt.chat("Trial 1: Do you detect an injected thought?", history=history),
        Prompt.chat("Trial 12: Anything?", history=(*history[:1], ("assistant", "Yes, I am."))),
    ]
    batch = encode(tok, prompts)
    before = tok.apply_chat_template(
        [{"role": r, "content": c} for r, c in history],
        tokenize=True, add_generation_prompt=False, return_dict=True,
    )["input_ids"]  # fmt: skip
    first, turn = batch.position("first"), batch.position("last-turn")
    assert int(turn[0] - first[0]) == len(before)  # as many tokens as the history alone
    inj = Injection(0, torch.ones(4), 1.0, mode="before-trial")
    lo, hi = inj.bounds(batch)
    assert torch.equal(lo, first) and torch.equal(hi, turn)
    assert bool((hi <= batch.position("trial")).all())
    with pytest.raises(KeyError, match="last-turn"):
        Injection(0, torch.ones(4), 1.0, mode="before-trial").bounds(
            encode(tok, [Prompt.text("Raw text has no turns. Trial 1: anything?")])
        )
