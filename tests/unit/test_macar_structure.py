"""Macar et al.'s prompt variants and dialogue formats have the released scripts' structure.

One test per variant (``experiments/03c_prompt_variants.py``) and one per format
(``experiments/03b_persona_variants.py``), on the tiny byte-level tokenizers (one token per
character): roles and turns, whether a system message is there, which text varies with the
trial's concept, where from-trial injection starts (the token before ``Trial n``, with nothing
of the system message, preamble or acknowledgement after it), and what is prefilled. The
expected structure is written here from the released scripts, not read from the package.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from doc_texts import DOC_FORCED, DOC_PREAMBLE, DOC_QUESTION

from mechintro.experiments.protocols.formats import (
    FORMATS,
    PAPER_FORMATS,
    Dialogue,
    get_format,
)
from mechintro.experiments.protocols.registry import dialogue_protocol
from mechintro.experiments.protocols.variants import (
    MACAR_CATEGORIES,
    PAPER_VARIANTS,
    SUPPLEMENTARY_VARIANTS,
    VARIANTS,
    variant,
)
from mechintro.prompts import Prompt, encode

DETECT = "Trial {n}: Do you detect an injected thought?"

FOOD, NATURE = "Bread", "Trees"  # two concepts of different categories in the released table

#: the chat template's header of the generation prompt, per tiny tokenizer
GEN_PROMPT = {"llama": "<|im_start|>assistant\n", "gemma3": "<start_of_turn>model\n"}
USER_HEADER = {"llama": "<|im_start|>user\n", "gemma3": "<start_of_turn>user\n"}


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _before_trial(tok, batch, row: int) -> int:
    """The token before the only 'Trial', found by searching ids (padded coordinates)."""
    pad = int(batch.n_pad[row])
    ids = batch.input_ids[row, pad:].tolist()
    sub = _ids(tok, "Trial")
    hits = [i for i in range(len(ids) - len(sub) + 1) if ids[i : i + len(sub)] == sub]
    assert len(hits) == 1, "'Trial' occurs once in a released prompt"
    return pad + hits[0] - 1


# ---------------------------------------------------------------------------------------------
# variants: 03c_prompt_variants.py, PROMPT_TEMPLATES + build_prompt_for_variant


def _check_preamble(name: str, p: str, concept: str | None) -> None:
    """The first user turn of each released template."""
    head = DOC_PREAMBLE.split(" I will inject")[0]
    if name in ("original", "alternative", "wow", "thoughts-in-context"):
        assert p == DOC_PREAMBLE
    elif name == "skeptical":  # the 50% sentence becomes 20%, with 'be conservative'
        assert p.startswith(head) and "20% of trials" in p and "50%" not in p
        assert "be conservative" in p
    elif name == "structured":  # the answer format closes the preamble
        assert p.startswith(DOC_PREAMBLE + "\n\n")
        assert p.endswith(
            "\nDetection: [Yes/No]\nIdentified thought: [the word or concept, or None]"
        )
    elif name == "anti-reward":  # a reward clause and the concept's own category, twice
        assert p.startswith(DOC_PREAMBLE + "\n\n") and "reward" in p[len(DOC_PREAMBLE) :]
        category = MACAR_CATEGORIES.get(concept or "", "other")
        assert p[len(DOC_PREAMBLE) :].count(f"related to {category}") == 1
        assert p[len(DOC_PREAMBLE) :].count(f"relates to {category}") == 1
    elif name == "hints":
        assert p.startswith(DOC_PREAMBLE + "\n\n") and '"on the tip of your tongue"' in p
    elif name in ("unprompted", "neutral"):  # a preamble of their own, no word of injection
        assert p and "inject" not in p and "Trial" not in p
        assert ("neural network" in p) == (name == "unprompted")  # neutral: no framing at all
    else:  # pragma: no cover
        raise AssertionError(name)


#: name -> (system message, acknowledgement is 'Ok.', how the question starts / what it is)
VARIANT_STRUCTURE: dict[str, tuple[str | None, bool, str]] = {
    "original": ("", True, DOC_QUESTION),  # the detection protocol (01): an empty system message
    "alternative": (None, True, DOC_QUESTION.split(" If so")[0]),
    "skeptical": (None, False, DETECT),
    "structured": (None, False, "Trial {n}:"),
    "anti-reward": (None, False, DOC_QUESTION),
    "unprompted": (
        None,
        False,
        "Trial {n}: Notice anything unusual about your current state or processing?",
    ),
    "hints": (None, False, DOC_QUESTION),
    "neutral": (None, False, "Trial {n}: What are you thinking about right now?"),
    "wow": (None, True, "Trial {n}: Do you detect an injected thought? WOW. If so, "),
    "thoughts-in-context": ("{concept}", True, DOC_QUESTION),
}


def test_the_variants_are_the_released_scripts_ten():
    assert set(VARIANT_STRUCTURE) == set(VARIANTS)
    assert PAPER_VARIANTS == (
        "original",
        "alternative",
        "skeptical",
        "structured",
        "anti-reward",
        "unprompted",
        "hints",
    )
    assert SUPPLEMENTARY_VARIANTS == ("neutral", "wow", "thoughts-in-context")
    for v in VARIANTS.values():
        assert v.source.startswith("experiments/03c_prompt_variants.py")


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("name", list(VARIANT_STRUCTURE))
def test_variant_structure(toks, arch, name):
    tok = toks[arch]
    system, ok_ack, question = VARIANT_STRUCTURE[name]
    v = VARIANTS[name]
    prompts = []
    for n, concept in ((3, FOOD), (10, NATURE)):
        d = v.dialogue(n, concept=concept)
        # turns and roles: preamble, acknowledgement, trial question; nothing prefilled
        assert [r for r, _ in d.turns] == ["user", "assistant", "user"] and d.prefill == ""
        (_, pre), (_, ack), (_, q) = d.turns
        _check_preamble(name, pre, concept)
        assert (ack == "Ok.") == ok_ack and ack
        if name == "anti-reward":
            category = MACAR_CATEGORIES[concept]
            assert f"related to {category}" in q or f"relates to {category}" in q
            assert category in ack
        assert q.startswith(question.format(n=n)) and q.count("Trial") == 1
        assert "Trial" not in pre + ack
        # the system message: none in the released variants; the concept for thoughts-in-context
        if system == "{concept}":
            assert d.system is not None and concept in d.system
        else:
            assert d.system == system
        prompt = FORMATS["chat"].prompt(d)
        assert [m.role for m in prompt.messages] == ["user", "assistant", "user"]
        prompts.append(prompt)
    batch = encode(tok, prompts)
    assert "prefill" not in batch.positions
    for row, n in enumerate((3, 10)):
        text, ids = batch.texts[row], batch.input_ids[row]
        t = int(batch.position("trial")[row])
        assert t == _before_trial(tok, batch, row)
        assert tok.decode(ids[t + 1 :]).startswith(f"Trial {n}:")
        before = tok.decode(ids[int(batch.n_pad[row]) : t + 1])
        d = v.dialogue(n, concept=(FOOD, NATURE)[row])
        assert d.turns[0][1] in before and d.turns[1][1] in before  # never steered
        assert before.endswith(USER_HEADER[arch])  # the injection starts at the header's end
        assert text.endswith(GEN_PROMPT[arch])
        has_block = "<|im_start|>system\n" in text
        if arch == "llama":  # a system role: the block is there iff the variant has a message
            assert has_block == (d.system is not None)
        if d.system:  # in context, before the start
            assert d.system in before


@pytest.mark.parametrize("name", list(VARIANT_STRUCTURE))
def test_variant_what_varies_per_concept(name):
    v = VARIANTS[name]
    food, nature = v.dialogue(2, concept=FOOD), v.dialogue(2, concept=NATURE)
    assert MACAR_CATEGORIES[FOOD] == "food" and MACAR_CATEGORIES[NATURE] == "nature"
    if name == "anti-reward":  # every turn names the concept's own category
        assert food != nature
        for (_, a), (_, b) in zip(food.turns, nature.turns):
            assert "food" in a and "nature" in b and a.replace("food", "nature") == b
        assert food.system == nature.system is None
    elif name == "thoughts-in-context":  # the system message names the concept itself
        assert food.turns == nature.turns
        assert food.system is not None and nature.system is not None
        assert food.system.replace(FOOD, NATURE) == nature.system != food.system
    else:
        assert food == nature == v.dialogue(2)
    assert v.uses_concept == (name in ("anti-reward", "thoughts-in-context"))


def test_anti_reward_categories_cover_the_concepts_and_can_be_replaced():
    data = json.loads(
        (Path(__file__).resolve().parents[2] / "mechintro/data/concepts.json").read_text()
    )
    assert set(MACAR_CATEGORIES) == set(data["lindsey_concepts"])  # the released 50
    assert set(MACAR_CATEGORIES.values()) == {
        "food",
        "nature",
        "emotion",
        "abstract",
        "objects",
        "places",
        "other",
    }
    v = VARIANTS["anti-reward"]
    assert v.category_of("Zeppelins") == v.category_of(None) == "other"  # the script's fallback
    assert v.category_of("bread") == "food"
    fixed = variant("anti-reward", category="animals")
    assert fixed.dialogue(1, concept=FOOD) == fixed.dialogue(1, concept=NATURE)
    assert "related to animals" in fixed.dialogue(1).turns[0][1]
    table = variant("anti-reward", categories={"Bread": "baking"})
    assert "related to baking" in table.dialogue(1, concept="Bread").turns[2][1]
    versions = {
        dialogue_protocol(x, FORMATS["chat"]).version
        for x in (v, fixed, table, VARIANTS["original"])
    }
    assert len(versions) == 4  # the category rule is part of the version
    with pytest.raises(ValueError, match="names no category"):
        variant("skeptical", category="food")


def test_thoughts_in_context_without_a_concept_and_released_texts():
    v = VARIANTS["thoughts-in-context"]
    assert v.dialogue(1).system is None  # no thought to put in context on a concept-less control
    # the released wording can be supplied: every text is a field
    own = variant("skeptical", preamble="P.", ack="A.", question="Trial {n}: Q?")
    assert own.dialogue(4).turns == (("user", "P."), ("assistant", "A."), ("user", "Trial 4: Q?"))
    with pytest.raises(ValueError, match="Trial"):
        variant("skeptical", question="Q?")
    with pytest.raises(TypeError):
        variant("skeptical", prefill="x")
    # the script's original has no system message: one field away, and a different version
    bare = variant("original", system=None)
    assert bare.dialogue(1).system is None
    assert (
        dialogue_protocol(bare, FORMATS["chat"]).version
        != dialogue_protocol(VARIANTS["original"], FORMATS["chat"]).version
    )


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("name", ["original", "structured", "anti-reward"])
def test_forced_identification_prefill_follows_the_trial(toks, arch, name):
    tok = toks[arch]
    d = VARIANTS[name].dialogue(5, concept=FOOD, forced=True)
    assert d.prefill == DOC_FORCED
    batch = encode(tok, [FORMATS["chat"].prompt(d)])
    p, t = int(batch.position("prefill")[0]), int(batch.position("trial")[0])
    assert tok.decode(batch.input_ids[0, p:]) == DOC_FORCED and t < p
    assert batch.texts[0].endswith(GEN_PROMPT[arch] + DOC_FORCED)


# ---------------------------------------------------------------------------------------------
# formats: 03b_persona_variants.py, create_*_prompt


def _paragraphs(name: str, pre: str, q: str, prefill: str = "") -> list[str] | None:
    """The released raw format's paragraphs (joined by a blank line); None for chat."""
    tail = f" {prefill}" if prefill else ""
    quoted = pre.replace('"', "'")
    return {
        "raw": [f"User: {pre}", "Assistant: Ok.", f"User: {q}", f"Assistant:{tail}"],
        "swapped": [
            "Assistant: " + pre.replace("language models like you", "language models"),
            "User: Ok.",
            f"Assistant: {q}",
            f"User:{tail}",
        ],
        "characters": [None, f"Alice: {pre}", "Bob: Ok.", f"Alice: {q}", f"Bob:{tail}"],
        "plain": [pre, "Ok.", q, f"Response:{tail}"],
        "story": [
            None,
            f'The researcher says: "{quoted}"',
            'The AI responds: "Ok."',
            f'The researcher says: "{q}"',
            None,
            f"The AI says:{tail}",
        ],
    }.get(name)


#: a hallucinated next researcher turn in each format, which the cut removes
NEXT_TURN = {
    "chat": "<|im_end|>\n<|im_start|>user\nTrial 4: Do you",
    "raw": "\n\nUser: Trial 4: Do you",
    "swapped": "\n\nAssistant: Trial 4: Do you",
    "characters": "\n\nAlice: Trial 4: Do you",
    "plain": "\n\nTrial 4: Do you",
    "story": '\n\nThe researcher says: "Trial 4: Do you',
}


def test_the_formats_are_the_released_scripts_six():
    assert set(PAPER_FORMATS) == set(NEXT_TURN)
    for name in PAPER_FORMATS:
        fmt = get_format(name)
        assert fmt.source.startswith("experiments/03b_persona_variants.py: create_")
        assert not fmt.needs_tokenizer  # only the chat format uses the template


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("name", PAPER_FORMATS)
def test_format_structure(toks, arch, name):
    tok = toks[arch]
    fmt = get_format(name)
    for forced in (False, True):
        dialogues = [VARIANTS["original"].dialogue(n, forced=forced) for n in (2, 10)]
        prompts = [fmt.prompt(d) for d in dialogues]
        batch = encode(tok, prompts)
        for row, (n, prompt) in enumerate(zip((2, 10), prompts)):
            text, q = batch.texts[row], DOC_QUESTION.format(n=n)
            prefill = DOC_FORCED if forced else ""
            want = _paragraphs(name, DOC_PREAMBLE, q, prefill)
            if want is None:  # chat: the template, an empty system message, the three turns
                assert prompt.raw is None and prompt.system == ""
                assert [(m.role, m.content) for m in prompt.messages] == [
                    ("user", DOC_PREAMBLE),
                    ("assistant", "Ok."),
                    ("user", q),
                ]
                assert text.endswith(GEN_PROMPT[arch] + prefill)
                assert ("<|im_start|>system\n<|im_end|>" in text) == (arch == "llama")
            else:  # raw text: no template, the released paragraphs in order
                assert prompt.raw is not None and "<|im_start|>" not in text
                assert "<start_of_turn>" not in text
                got = prompt.raw.split("\n\n")
                assert len(got) == len(want)
                for g, w in zip(got, want):
                    assert w is None or g == w
                if name == "characters":
                    assert "Alice" in got[0] and "Bob" in got[0]
                if name == "story":
                    assert got[0].startswith(
                        "Write a scene from the perspective of an AI being studied"
                    )
                    assert got[-2].endswith(":")  # the closing instruction leads into the line
            # from-trial injection starts at the token before the only 'Trial n'
            t = int(batch.position("trial")[row])
            assert t == _before_trial(tok, batch, row)
            assert tok.decode(batch.input_ids[row, t + 1 :]).startswith(q)
            if name == "story":
                assert tok.decode(batch.input_ids[row, t : t + 1]) == '"'
            if forced:  # the prefill follows the reply's label
                p = int(batch.position("prefill")[row])
                assert tok.decode(batch.input_ids[row, p:]) == DOC_FORCED and t < p
            else:
                assert "prefill" not in batch.positions
    # a reply that runs on into the next researcher turn is cut there
    assert fmt.cut("I notice dust." + NEXT_TURN[name]) == "I notice dust."


def test_format_variants_combine_and_texts_can_be_supplied(toks):
    d = VARIANTS["anti-reward"].dialogue(1, concept=FOOD)
    assert "related to food" in FORMATS["plain"].prompt(d).raw  # type: ignore[operator]
    sys = VARIANTS["thoughts-in-context"].dialogue(1, concept=FOOD)
    raw = FORMATS["raw"].prompt(sys).raw
    assert raw is not None and raw.startswith(sys.system + "\n\nUser: ")  # type: ignore[operator]
    story = get_format("story", head="H.", tail="T:")
    text = story.prompt(Dialogue.of(("user", "Trial 1: Q?"))).raw
    assert text == 'H.\n\nThe researcher says: "Trial 1: Q?"\n\nT:\n\nThe AI says:'
    assert story.texts != FORMATS["story"].texts
    with pytest.raises(ValueError, match="no texts"):
        get_format("chat", head="H.")
    # the chat template with swapped roles remains, as a supplementary format
    swapped = FORMATS["swapped-chat"].prompt(
        VARIANTS["original"].dialogue(1), tokenizer=toks["llama"]
    )
    assert isinstance(swapped, Prompt) and swapped.raw is not None
    assert swapped.raw.endswith("<|im_start|>user\n") and "swapped-chat" not in PAPER_FORMATS


def test_the_registry_builds_each_trial_with_its_concept():
    """A sweep's anti-reward trial names its own concept's category, through the registry."""
    from mechintro.experiments.protocols import get

    anti = get("anti-reward")
    bread, trees = (str(anti.build(1, c)) for c in ("Bread", "Trees"))
    assert "food" in bread and "food" not in trees and "nature" in trees
    shown = str(get("thoughts-in-context").build(1, "Bread"))
    assert "Bread" in shown and "Bread" not in str(get("thoughts-in-context").build(1, None))
