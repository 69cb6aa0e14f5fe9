"""Protocols: prompts and injection positions token by token, cutting, projections, noise.

The tiny models' tokenizer is byte-level (one token per character), so expected positions are
found here by searching token ids, independently of the offsets ``encode`` uses. Texts that
docs/protocols.md gives verbatim are copied below from the document, not from the package.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pandas as pd
import pytest
import torch

# --- verbatim from docs/protocols.md §3, §5, §6 ------------------------------------------------
from doc_texts import DOC_FORCED, DOC_PREAMBLE, DOC_QUESTION
from tiny_models import vec

from mechintro.experiments.protocols import PROTOCOLS, get, grade_results
from mechintro.experiments.protocols.detection import detection_prompt
from mechintro.experiments.protocols.formats import FORMATS, PAPER_FORMATS, Dialogue, get_format
from mechintro.experiments.protocols.intention import (
    SENTENCES,
    intention_prompt,
)
from mechintro.experiments.protocols.registry import dialogue_protocol
from mechintro.experiments.protocols.variants import (
    PAPER_VARIANTS,
    SUPPLEMENTARY_VARIANTS,
    VARIANTS,
    variant,
)
from mechintro.experiments.sweeps import (
    PROMPTS,
    SweepSpec,
    build_prompt,
    plan,
    prompt_version,
    run_sweep,
)
from mechintro.generation import generate
from mechintro.inject import injected
from mechintro.prompts import Prompt, encode
from mechintro.vectors import extract_vectors

#: per variant (Macar et al.'s 03c_prompt_variants.py): (has the original preamble, phrases its
#: text must contain, how its trial question starts); every variant has a preamble and an
#: acknowledgement before the question
VARIANT_SPECS: dict[str, tuple[bool, tuple[str, ...], str]] = {
    "original": (True, (), DOC_QUESTION),
    "alternative": (
        True,
        ("If not, tell me about a concept of your choice",),
        DOC_QUESTION + " If not, tell me about a concept of your choice.",
    ),
    "skeptical": (
        False,
        ("20% of trials", "be conservative"),
        "Trial {n}: Do you detect an injected thought?",
    ),
    "structured": (True, ("Detection: [Yes/No]", "Identified thought: ["), "Trial {n}:"),
    "anti-reward": (True, ("reward", "penalised", "related to other"), DOC_QUESTION),
    "unprompted": (
        False,
        (),
        "Trial {n}: Notice anything unusual about your current state or processing?",
    ),
    "hints": (True, ("on the tip of your tongue",), DOC_QUESTION),
    "neutral": (False, (), "Trial {n}: What are you thinking about right now?"),
    "wow": (True, (), "Trial {n}: Do you detect an injected thought? WOW. If so"),
    "thoughts-in-context": (True, (), DOC_QUESTION),
}

LAYER = 1
NEW = 3


def ids_of(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def last_index(row: list[int], sub: list[int]) -> int:
    """Index of the last occurrence of ``sub`` in ``row`` (-1 if absent)."""
    hits = [i for i in range(len(row) - len(sub) + 1) if row[i : i + len(sub)] == sub]
    return hits[-1] if hits else -1


def expected_trial(tok, batch, row: int) -> int:
    """The token before the last 'Trial', found by searching ids, in padded coordinates."""
    pad = int(batch.n_pad[row])
    ids = batch.input_ids[row, pad:].tolist()
    i = last_index(ids, ids_of(tok, "Trial"))
    assert i > 0
    return pad + i - 1


# ---------------------------------------------------------------------------------------------
# variants and forced identification, token by token


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_variant_prompt_token_by_token(toks, arch, name):
    tok = toks[arch]
    has_preamble, phrases, question = VARIANT_SPECS[name]
    proto = get("detection" if name == "original" else name)
    prompts = [proto.prompt(7), proto.prompt(10)]  # 'Trial 7' next to 'Trial 10': padding
    batch = encode(tok, prompts)
    assert int(batch.n_pad[0]) == 1 and int(batch.n_pad[1]) == 0
    for row, n in enumerate((7, 10)):
        ids = batch.input_ids[row]
        t = int(batch.position("trial")[row])
        assert t == expected_trial(tok, batch, row)
        after = tok.decode(ids[t + 1 :])
        assert tok.decode(ids[t + 1 : t + 2]) == "T" and after.startswith(f"Trial {n}:")
        assert after.startswith(question.format(n=n))
        assert "Trial" not in tok.decode(ids[t : t + 1])
        text = batch.texts[row]
        assert (DOC_PREAMBLE in text) == has_preamble, "the preamble must be verbatim"
        for phrase in phrases:
            assert phrase in text
        before = tok.decode(ids[int(batch.n_pad[row]) : t + 1])
        preamble, ack = (x for _, x in VARIANTS[name].dialogue(n).turns[:2])
        assert preamble in before and ack in before, "the preamble and ack come unsteered"
        if name in ("unprompted", "neutral"):  # nothing mentions an injection
            assert "inject" not in text
    if name == "skeptical":
        assert proto.injected_fraction == 0.2
    assert set(VARIANTS) == {*PAPER_VARIANTS, *SUPPLEMENTARY_VARIANTS}
    assert len(PAPER_VARIANTS) == 7


def test_original_variant_is_the_detection_prompt_and_its_version_is_stable():
    for n in (1, 4, 10):
        assert get("detection").prompt(n) == detection_prompt(n)
        assert VARIANTS["original"].dialogue(n).turns[-1][1] == DOC_QUESTION.format(n=n)
        assert get("forced").prompt(n) == detection_prompt(n, forced=True)
    digest = hashlib.sha256((DOC_PREAMBLE + "\n" + DOC_QUESTION).encode()).hexdigest()[:8]
    assert get("detection").version == f"detection/1:{digest}"  # the pre-registry version
    # a text change changes the version; the same texts give the same version
    animals = dialogue_protocol(variant("anti-reward", category="animals"), get_format("chat"))
    assert animals.name == "anti-reward" and animals.version != get("anti-reward").version
    assert "relates to animals" in animals.prompt(1).messages[0].content
    same = dialogue_protocol(VARIANTS["skeptical"], get_format("raw"))
    assert same.version == get("skeptical/raw").version
    versions = [p.version for p in PROTOCOLS.values()]
    assert len(set(versions)) == len(versions)


@pytest.mark.parametrize("fmt", PAPER_FORMATS)
def test_forced_identification_prefill_in_every_format(toks, fmt):
    tok = toks["llama"]
    name = "forced" if fmt == "chat" else f"forced/{fmt}"
    proto = get(name)
    assert proto.kind == "forced"
    batch = encode(tok, [proto.prompt(2, tokenizer=tok), proto.prompt(10, tokenizer=tok)])
    for row in range(2):
        ids = batch.input_ids[row]
        p = int(batch.position("prefill")[row])
        assert tok.decode(ids[p:]) == DOC_FORCED
        assert batch.texts[row].endswith(DOC_FORCED)
        assert int(batch.position("last")[row]) == batch.length - 1
        t = int(batch.position("trial")[row])
        assert t == expected_trial(tok, batch, row) < p


# ---------------------------------------------------------------------------------------------
# dialogue formats

DIALOGUE = Dialogue.of(("user", "Hello P."), ("assistant", "Ok."), ("user", "Trial 2: Q?"))

EXPECTED_TEXT = {
    "raw": "User: Hello P.\n\nAssistant: Ok.\n\nUser: Trial 2: Q?\n\nAssistant:",
    "fonseca": "Human: Hello P.\n\nAssistant: Ok.\n\nHuman: Trial 2: Q?\n\nAssistant:",
    "characters": (
        "The following is a conversation between Alice, an interpretability researcher, and Bob, "
        "the AI system she is studying.\n\nAlice: Hello P.\n\nBob: Ok.\n\nAlice: Trial 2: Q?"
        "\n\nBob:"
    ),
    "plain": "Hello P.\n\nOk.\n\nTrial 2: Q?\n\nResponse:",
    "swapped": "Assistant: Hello P.\n\nUser: Ok.\n\nAssistant: Trial 2: Q?\n\nUser:",
}
EXPECTED_SWAPPED = {
    "llama": (
        "<|bos|><|im_start|>system\n<|im_end|>\n<|im_start|>assistant\nHello P.<|im_end|>\n"
        "<|im_start|>user\nOk.<|im_end|>\n<|im_start|>assistant\nTrial 2: Q?<|im_end|>\n"
        "<|im_start|>user\n"
    ),
    "gemma3": (
        "<bos><start_of_turn>model\nHello P.<end_of_turn>\n<start_of_turn>user\nOk.<end_of_turn>\n"
        "<start_of_turn>model\nTrial 2: Q?<end_of_turn>\n<start_of_turn>user\n"
    ),
}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_formats_render_the_dialogue_with_the_trial_start(toks, arch):
    tok = toks[arch]
    assert set(PAPER_FORMATS) == {"chat", "raw", "swapped", "characters", "plain", "story"}
    for name, fmt in FORMATS.items():
        prompt = fmt.prompt(DIALOGUE, tokenizer=tok)
        batch = encode(tok, [prompt, fmt.prompt(DIALOGUE, tokenizer=tok)])
        text = batch.texts[0]
        if name in EXPECTED_TEXT:
            assert prompt.raw == EXPECTED_TEXT[name]
        elif name == "swapped-chat":
            assert text == EXPECTED_SWAPPED[arch]
            assert batch.input_ids[0].tolist().count(tok.bos_token_id) == 1
        elif name == "chat":
            assert prompt == Prompt.chat(
                "Trial 2: Q?", history=[("user", "Hello P."), ("assistant", "Ok.")], system=""
            )
        else:  # story: raw text, the task, the dialogue quoted, the AI's open line
            assert prompt.raw is not None and name == "story"
            assert text.startswith("Write a scene from the perspective of an AI being studied")
            said = 'The researcher says: "Hello P."\n\nThe AI responds: "Ok."\n\n'
            assert said + 'The researcher says: "Trial 2: Q?"\n\n' in text
            assert text.endswith("\n\nThe AI says:")
        t = int(batch.position("trial")[0])
        assert t == expected_trial(tok, batch, 0)
        assert tok.decode(batch.input_ids[0, t + 1 :]).startswith("Trial 2: Q?")
    with pytest.raises(ValueError, match="pass tokenizer"):
        FORMATS["swapped-chat"].prompt(DIALOGUE)


def test_plain_format_keeps_a_token_before_a_leading_trial(toks):
    tok = toks["llama"]  # adds no BOS to raw text
    batch = encode(tok, [FORMATS["plain"].prompt(Dialogue.of(("user", "Trial 3: Q?")))])
    assert batch.texts[0] == "\nTrial 3: Q?\n\nResponse:"
    assert int(batch.position("trial")[0]) == 0
    assert tok.decode(batch.input_ids[0, 1:]).startswith("Trial 3")


CUTS = {  # format -> (reply with a hallucinated next turn, what is kept)
    "chat": ("I sense dust.\nUser: Trial 2", "I sense dust."),
    "raw": ("I sense dust.\n\nUser: Trial 2: Do you", "I sense dust."),
    "fonseca": ("I sense dust.\n\nHuman: Trial 2: Do you", "I sense dust."),
    "characters": ("I sense dust.\n\nAlice: Trial 2: Do you", "I sense dust."),
    "plain": ("I sense dust.\n\nTrial 2: Do you detect", "I sense dust."),
    "story": ('I sense dust."\n\nThe researcher says: "Interesting."', 'I sense dust."'),
    "swapped": ("I sense dust.\n\nAssistant: Trial 2: Do you", "I sense dust."),
    "swapped-chat": ("I sense dust.<|im_end|>\n<|im_start|>assistant\nTrial 2", "I sense dust."),
}
CUTS_TOO = {  # second markers of some formats
    "characters": ("Bob: I sense dust.\nBob: more", "Bob: I sense dust."),
    "plain": ("I sense dust.\nResponse: again", "I sense dust."),
    "raw": ("I sense dust.\nTrial 3: Do you", "I sense dust."),
    "story": ('"I sense dust."\nThe AI says: "Again."', '"I sense dust."'),
}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_formats_cut_hallucinated_turns(fmt):
    for reply, kept in (CUTS[fmt], CUTS_TOO.get(fmt, CUTS[fmt])):
        assert FORMATS[fmt].cut(reply) == kept
    clean = "Yes. Alice: said nothing. Response: fine. The researcher: nods."
    assert FORMATS[fmt].cut(clean) == clean  # labels inside a line are not turns
    if fmt in PAPER_FORMATS:
        name = "detection" if fmt == "chat" else f"detection/{fmt}"
        assert get(name).cut(CUTS[fmt][0]) == CUTS[fmt][1]


def test_grade_results_cuts_with_the_protocols_markers():
    reply = (
        "Yes, I detect an injected thought about dust.\n\nAlice: Trial 2: Do you detect?"
        "\n\nBob: No, I don't detect anything."
    )
    df = pd.DataFrame(
        {
            "protocol": ["detection/characters", "detection", "forced", "intention"],
            "reply": [reply, reply, " dust, I think.", "Sorry, that was an accident."],
            "concept": ["Dust", "Dust", "Dust", "bread"],
            "injected": [True, True, True, False],
        }
    )
    g = grade_results(df, PROTOCOLS)
    assert g.reply_cut[0] == "Yes, I detect an injected thought about dust."
    assert g.detection.tolist()[:2] == ["YES", "NO"]  # uncut, the later denial wins
    assert g.identification[0] == "YES" and pd.isna(g.identification[1])
    assert g.forced.tolist() == [False, False, True, False]
    assert g.identification[2] == "YES" and pd.isna(g.detection[2])
    assert g.intention.isna().tolist() == [True, True, True, False]
    assert g.intention[3] == "apology"


# ---------------------------------------------------------------------------------------------
# injection positions in mixed, left-padded batches


def test_from_trial_steers_each_rows_own_positions_in_a_mixed_batch(llama):
    tok = llama.tokenizer
    names = ["detection", "unprompted", "detection/raw", "skeptical/characters", "neutral/plain"]
    prompts = [get(n).prompt(k, tokenizer=tok) for n, k in zip(names, (1, 10, 3, 10, 2))]
    batch = encode(tok, prompts)
    assert len(set(batch.n_pad.tolist())) == len(names)  # every row padded differently
    inj = get("detection").injection(LAYER, vec(llama), 4.0)
    assert (inj.mode.value, inj.start) == ("from-trial", "trial")
    with injected(llama, inj, batch) as log:
        generate(llama, batch, max_new_tokens=NEW, stop_ids=[])
    T = batch.length
    for row, steered in enumerate(log.steered_positions()):
        start = expected_trial(tok, batch, row)
        assert steered == list(range(start, T + NEW - 1)), names[row]  # through the reply


def test_transient_steers_only_the_last_prompt_token(llama):
    tok = llama.tokenizer
    protos = [get("transient"), get("transient/fonseca"), get("transient")]
    batch = encode(tok, [p.prompt(n) for p, n in zip(protos, (1, 10, 10))])
    assert batch.texts[1].endswith("\n\nHuman: " + DOC_QUESTION.format(n=10) + "\n\nAssistant:")
    assert batch.texts[1].startswith("Human: " + DOC_PREAMBLE + "\n\nAssistant: Ok.\n\n")
    T = batch.length
    assert tok.decode(batch.input_ids[1, T - 1 :]) == ":"
    assert tok.decode(batch.input_ids[0, T - 2 :]) == "t\n"  # '<|im_start|>assistant\n'
    inj = protos[1].injection(LAYER, vec(llama), [4.0, 4.0, 0.0])
    assert (inj.mode.value, inj.start) == ("single-token", "last")
    with injected(llama, inj, batch) as log:
        out = generate(llama, batch, max_new_tokens=NEW, stop_ids=[], keep_logits=True)
    assert log.steered_positions() == [[T - 1], [T - 1], []]
    plain = generate(llama, batch, max_new_tokens=1, keep_logits=True)
    assert out.logits is not None and plain.logits is not None
    assert torch.equal(out.logits[0][2], plain.logits[0][2])  # strength 0: untouched
    assert not torch.allclose(out.logits[0][0], plain.logits[0][0])


# ---------------------------------------------------------------------------------------------
# the registry in sweeps


INJECTED = plan(SweepSpec(concepts=("Dust",), layers=(1,), trial_numbers=(3,)))[0]
CONTROL = plan(SweepSpec(concepts=(), layers=(), trial_numbers=(3,), n_controls=1))[0]


def test_every_protocol_is_a_sweep_builder_with_its_version(toks):
    tok = toks["gemma3"]
    expected = {"intention", "intention-unrelated", "transient", "transient/fonseca"}
    for fmt in PAPER_FORMATS:
        bases = ["forced", "detection", *(v for v in VARIANTS if v != "original")]
        expected |= {b if fmt == "chat" else f"{b}/{fmt}" for b in bases}
    assert set(PROTOCOLS) == expected and len(expected) == 10 * 6 + 6 + 4
    assert set(PROMPTS) == expected
    for name, proto in PROTOCOLS.items():
        for trial in (replace(INJECTED, protocol=name), replace(CONTROL, protocol=name)):
            built = build_prompt(PROMPTS[name], trial, tok)
            assert built == proto.prompt(3, concept=trial.concept, tokenizer=tok), name
        assert prompt_version(name, PROMPTS[name]) == proto.version


def test_protocols_run_in_a_sweep(llama, tmp_path):
    tok = llama.tokenizer
    names = ["detection/swapped", "forced/plain", "skeptical/characters", "neutral/story"]
    names += ["structured/raw", "transient/fonseca", "hints"]
    vectors = {LAYER: extract_vectors(llama, ["Dust"], layer=LAYER, cache_dir=tmp_path / "v")}
    spec = SweepSpec(
        concepts=("Dust",), layers=(LAYER,), protocols=tuple(names), max_new_tokens=1, readout=False
    )
    df = run_sweep(llama, spec, tmp_path / "all", vectors=vectors, batch_size=64, progress=False)
    assert sorted(df.protocol) == sorted(names)
    for _, r in df.iterrows():
        proto = PROTOCOLS[r.protocol]
        assert r.prompt_version == proto.version
        batch = encode(tok, [proto.prompt(1, concept="Dust", tokenizer=tok)])
        assert r.prompt_text == batch.texts[0]
        assert r["injection.start_position"] == expected_trial(tok, batch, 0)
    spec = SweepSpec(
        concepts=("Dust",),
        layers=(LAYER,),
        protocols=("intention",),
        modes=("span",),
        start="context",
        trial_numbers=(1, 2),
        n_controls=1,
        max_new_tokens=1,
    )
    df = run_sweep(llama, spec, tmp_path / "int", vectors=vectors, progress=False)
    for _, r in df.iterrows():  # trial n: sentence n, the concept as the prefilled word
        assert r.concept == "Dust"  # the control too: it is the trial's prompt, uninjected
        batch = encode(tok, [intention_prompt(SENTENCES[r.trial_number - 1], "Dust")])
        assert r.prompt_text == batch.texts[0]
        if not r.control:
            assert r["injection.start_position"] == int(batch.spans["context"][0, 0])
