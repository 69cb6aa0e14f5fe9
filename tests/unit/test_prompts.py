"""Prompt rendering and exact named positions, on the tiny models' real tokenizers."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from mechintro.prompts import Message, Prompt, encode, render, system_support


def _tok(tiny_dirs, arch):
    return AutoTokenizer.from_pretrained(tiny_dirs[arch])


def test_positions_in_a_batch_are_each_rows_own_positions_shifted_by_padding(tiny_dirs):
    tok = _tok(tiny_dirs, "llama")
    prompts = [
        Prompt.chat("Trial 1: yes?", prefill="Yes, I", marks={"q": "yes?"}),
        Prompt.chat(
            "Trial 10: yes?",
            history=[("user", "a long first turn " * 4), ("assistant", "Ok.")],
            prefill="Yes, I",
            marks={"q": "yes?"},
        ),
    ]
    together = encode(tok, prompts)
    for i, p in enumerate(prompts):
        alone = encode(tok, [p])
        pad = int(together.n_pad[i])
        real = together.input_ids[i, pad:]
        assert real.tolist() == alone.input_ids[0].tolist()
        for name in ("trial", "last", "prefill", "q"):
            assert int(together.positions[name][i]) - pad == int(alone.positions[name][0]), name
        assert (together.spans["q"][i] - pad).tolist() == alone.spans["q"][0].tolist()
    assert together.positions["last"].tolist() == [together.length - 1] * 2


def test_a_batch_repeating_prompts_equals_each_row_encoded_alone(tiny_dirs):
    """encode() renders and tokenises each distinct prompt once: the repeats' rows, texts and
    positions must still be their own prompt's, in the batch's order."""
    tok = _tok(tiny_dirs, "gemma3")
    one = Prompt.chat("Trial 1: yes?", system="Be brief.", marks={"q": "yes?"})
    ten = Prompt.chat("Trial 10: a longer question?", prefill="I", marks={"q": "question"})
    prompts = [one, ten, Prompt.chat("Trial 1: yes?", system="Be brief.", marks={"q": "yes?"}),
               ten, one]  # fmt: skip
    together = encode(tok, prompts)
    assert set(together.positions) == {"first", "last", "trial", "last-turn", "prefill", "q"}
    for i, p in enumerate(prompts):
        alone = encode(tok, [p])
        pad = int(together.n_pad[i])
        assert together.input_ids[i, pad:].tolist() == alone.input_ids[0].tolist()
        assert together.texts[i] == alone.texts[0]
        for name, at in together.positions.items():
            if name in alone.positions and name != "first":
                assert int(at[i]) - pad == int(alone.positions[name][0]), name
            else:
                assert name == "first" or int(at[i]) == -1, name
        assert (together.spans["q"][i] - pad).tolist() == alone.spans["q"][0].tolist()


def test_prompts_known_from_earlier_calls_encode_as_fresh_ones(tiny_dirs):
    """encode(known=...) reuses what earlier calls tokenised: the batch equals a fresh one."""
    tok = _tok(tiny_dirs, "llama")
    a = Prompt.chat("Trial 1: yes?", prefill="Yes", marks={"q": "yes?"})
    b = Prompt.chat("Trial 2: yes?", history=[("user", "Hi."), ("assistant", "Ok.")])
    known: dict = {}
    encode(tok, [a, a], known=known)
    assert len(known) == 1
    again = encode(tok, [b, a, b], known=known)
    assert len(known) == 2
    fresh = encode(tok, [b, a, b])
    assert torch.equal(again.input_ids, fresh.input_ids)
    assert torch.equal(again.attention_mask, fresh.attention_mask)
    assert again.texts == fresh.texts
    for got, want in ((again.positions, fresh.positions), (again.spans, fresh.spans)):
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in got)


def test_named_positions_point_at_the_right_tokens(tiny_dirs):
    tok = _tok(tiny_dirs, "llama")
    batch = encode(
        tok, [Prompt.chat("Hello. Trial 7: go", prefill="Yes, I", marks={"h": "Hello."})]
    )
    ids = batch.input_ids[0]
    t = int(batch.position("trial")[0])
    assert tok.decode(ids[t + 1 :]).startswith("Trial 7")
    assert not tok.decode(ids[t:]).startswith("Trial")
    assert tok.decode(ids[int(batch.position("prefill")[0]) :]) == "Yes, I"
    lo, hi = batch.spans["h"][0].tolist()
    assert tok.decode(ids[lo:hi]) == "Hello."


def test_no_double_bos(tiny_dirs):
    for arch in ("llama", "gemma3"):
        tok = _tok(tiny_dirs, arch)
        ids = encode(tok, [Prompt.chat("hi")]).input_ids[0].tolist()
        assert ids.count(tok.bos_token_id) == 1, arch
        assert ids[0] == tok.bos_token_id


def test_system_role_handling(tiny_dirs):
    native = _tok(tiny_dirs, "llama")
    gemma = _tok(tiny_dirs, "gemma3")
    assert system_support(native) == "native"
    assert system_support(gemma) == "folded"
    # native: an empty system message is kept (docs/protocols.md §3)
    with_empty, _ = render(native, Prompt.chat("hi", system=""))
    without, _ = render(native, Prompt.chat("hi"))
    assert with_empty != without and "system" in with_empty
    # Gemma: an empty system message is dropped, a non-empty one folded into the user turn
    assert render(gemma, Prompt.chat("hi", system=""))[0] == render(gemma, Prompt.chat("hi"))[0]
    folded, _ = render(gemma, Prompt.chat("hi", system="Be brief."))
    assert "Be brief.\n\nhi" in folded


def test_system_support_follows_the_template_not_the_object(tiny_dirs):
    """The answer is cached by template, not by object: the same tokenizer, given Gemma's
    template, folds the system message (an id-keyed cache answered "native" again)."""
    tok = _tok(tiny_dirs, "llama")
    assert system_support(tok) == "native"
    tok.chat_template = _tok(tiny_dirs, "gemma3").chat_template
    assert system_support(tok) == "folded"


def test_raw_prompt_positions(tiny_dirs):
    tok = _tok(tiny_dirs, "llama")
    batch = encode(tok, [Prompt.text("Human: Tell me about dust.\n\nAssistant:")])
    assert tok.decode(batch.input_ids[0, -1:]) == ":"


def test_missing_mark_and_missing_template_are_refused(tiny_dirs, notemplate_tokenizer_dir):
    tok = _tok(tiny_dirs, "llama")
    with pytest.raises(ValueError, match="marks must be exact substrings"):
        encode(tok, [Prompt.chat("hello", marks={"x": "absent text"})])
    bare = AutoTokenizer.from_pretrained(notemplate_tokenizer_dir)
    with pytest.raises(ValueError, match="has no chat template: use Prompt.text"):
        encode(bare, [Prompt.chat("hello")])
    batch = encode(tok, [Prompt.chat("no trial here")])
    with pytest.raises(KeyError, match="no position named 'trial'"):
        batch.position("trial")


def test_bad_prompts_are_refused(unchecked):
    with pytest.raises(ValueError, match="either messages"):
        Prompt(messages=(), raw=None)
    with pytest.raises(ValueError, match="raw text is empty"):
        Prompt.text("")
    with pytest.raises(ValueError, match="prefill="):
        Prompt(messages=(Message("user", "a"), Message("assistant", "b")))
    with unchecked(), pytest.raises(ValueError, match="role must be"):
        Message("narrator", "x")  # type: ignore[arg-type]
