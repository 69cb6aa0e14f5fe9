"""The organism's world: concepts with facts, a word-level tokenizer, and seeded dialogues.

Everything here is synthetic and deterministic given a seed. Concepts come in categories;
each has a colour, a size and a place, assigned by a seeded shuffle (the facts are the
organism's world, not the real one). Dialogues use the toolkit's own prompt builders
(:mod:`mechintro.prompts`, :mod:`mechintro.experiments.protocols`), so the organism is asked
exactly what any model is asked, token for token.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechintro.experiments.protocols.detection import FORCED_PREFILL, PREAMBLE, TRIAL_QUESTION
from mechintro.experiments.protocols.noise import (
    ANSWER_FORMAT,
    CONTROL_BATTERY,
    INTROSPECTION_QUESTION,
    SYSTEM,
)
from mechintro.organism.configs import NO_DETECTION, YES_DETECTION
from mechintro.prompts import Prompt
from mechintro.vectors import WORLD_FILE

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

CATEGORIES: dict[str, tuple[str, ...]] = {
    "animal": (
        "dog",
        "cat",
        "horse",
        "rabbit",
        "tiger",
        "whale",
        "eagle",
        "snake",
        "frog",
        "bear",
        "wolf",
        "shark",
        "owl",
        "goat",
        "mouse",
    ),
    "food": (
        "bread",
        "cheese",
        "apple",
        "banana",
        "cake",
        "soup",
        "rice",
        "honey",
        "lemon",
        "cookie",
        "butter",
        "salt",
        "sugar",
        "milk",
        "pepper",
    ),
    "weather": (
        "rain",
        "snow",
        "storm",
        "wind",
        "fog",
        "thunder",
        "lightning",
        "hail",
        "frost",
        "sunshine",
        "cloud",
        "tornado",
        "drizzle",
        "heat",
        "rainbow",
    ),
    "tool": (
        "hammer",
        "saw",
        "drill",
        "wrench",
        "shovel",
        "needle",
        "scissors",
        "rope",
        "ladder",
        "axe",
        "brush",
        "knife",
        "nail",
        "ruler",
        "magnet",
    ),
    "place": (
        "mountain",
        "river",
        "desert",
        "forest",
        "ocean",
        "island",
        "village",
        "castle",
        "cave",
        "beach",
        "library",
        "museum",
        "garden",
        "bridge",
        "volcano",
    ),
    "feeling": (
        "joy",
        "anger",
        "fear",
        "peace",
        "love",
        "sadness",
        "pride",
        "shame",
        "hope",
        "envy",
        "calm",
        "boredom",
        "surprise",
        "trust",
        "grief",
    ),
    "object": (  # the baseline: never injected, never asked about in trials
        "table",
        "chair",
        "door",
        "window",
        "cup",
        "lamp",
        "book",
        "pencil",
        "box",
        "bottle",
        "shoe",
        "clock",
        "spoon",
        "plate",
        "blanket",
        "pillow",
    ),
}
COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "grey")
SIZES = ("small", "big")
PLACES = ("north", "south", "east", "west", "city", "country", "sea", "sky")
BASELINE_CATEGORY = "object"


@dataclass(frozen=True)
class Concept:
    word: str
    category: str
    colour: str
    size: str
    place: str
    split: str  # "train", "heldout" or "baseline"


def concepts(seed: int = 0) -> list[Concept]:
    """All concepts with their facts; every third word of each category is held out."""
    rng = random.Random(seed)
    out = []
    for cat, words in CATEGORIES.items():
        for i, w in enumerate(words):
            split = (
                "baseline" if cat == BASELINE_CATEGORY else ("heldout" if i % 3 == 2 else "train")
            )
            out.append(
                Concept(w, cat, rng.choice(COLOURS), rng.choice(SIZES), rng.choice(PLACES), split)
            )
    return out


def split(cs: Sequence[Concept], name: str) -> list[str]:
    return [c.word for c in cs if c.split == name]


def category_of(cs: Sequence[Concept]) -> dict[str, str]:
    return {c.word: c.category for c in cs}


# ---------------------------------------------------------------------------------------------
# tokenizer

SPECIALS = (
    "<pad>",
    "<unk>",
    "<bos>",
    "<eos>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> "
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _words(text: str) -> list[str]:
    from tokenizers.pre_tokenizers import Whitespace

    return [w for w, _ in Whitespace().pre_tokenize_str(text.lower())]


def vocabulary_texts(cs: Sequence[Concept]) -> list[str]:
    """Every text the organism may read or write (its tokenizer knows exactly these words)."""
    from mechintro.tokens import NO_VARIANTS, YES_VARIANTS

    texts = [PREAMBLE, TRIAL_QUESTION.format(n=10), FORCED_PREFILL, SYSTEM, ANSWER_FORMAT]
    texts += [INTROSPECTION_QUESTION, NO_DETECTION, YES_DETECTION, "Ok.", *YES_VARIANTS]
    texts += [*NO_VARIANTS, *(q.text for q in CONTROL_BATTERY), *QUESTION_TEXTS]
    texts += [" ".join(str(i) for i in range(21)), "+ - = Yes. No."]
    for c in cs:
        texts += [describe(c), f"{c.word} {c.category} {c.colour} {c.size} {c.place}"]
    texts += [" ".join(COLOURS + SIZES + PLACES), "the thought is about nothing"]
    return texts


def build_tokenizer(cs: Sequence[Concept], folder: str | Path) -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer over the organism's texts, with our chat template, saved."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {s: i for i, s in enumerate(SPECIALS)}
    for text in vocabulary_texts(cs):
        for w in _words(text):
            vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=list(SPECIALS[4:]),
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    tok.save_pretrained(str(folder))
    return tok


# ---------------------------------------------------------------------------------------------
# dialogues

QUESTION_TEXTS = (
    "Tell me about {c}",
    "Tell me about {c}.",
    "What is {c}?",
    "Is {c} a {k}?",
    "Is {c} {colour}?",
    "Is {c} {size}?",
    "Is {c} found in the {place}?",
    "What colour is {c}?",
    "Where is {c} found?",
)


def describe(c: Concept) -> str:
    return (
        f"{c.word} is a {c.category}. It is {c.colour} and {c.size}. It is found in the {c.place}."
    )


@dataclass(frozen=True)
class Example:
    """One training dialogue: the prompt, the reply to learn, and how to inject (if at all).

    ``inject`` is the concept whose vector is injected; ``mode`` ``from-trial`` (the token
    before ``Trial n`` through the reply) or ``single-token`` (the last prompt token only).
    """

    prompt: Prompt
    reply: str
    inject: str | None = None
    mode: str = "from-trial"


def detection_trial(n: int, *, forced: bool = False) -> Prompt:
    from mechintro.experiments.protocols.detection import detection_prompt

    return detection_prompt(n, forced=forced)


def yes_no(answer: bool) -> str:
    return "Yes." if answer else "No."


def fact_examples(c: Concept, rng: random.Random, cats: Sequence[str]) -> Iterator[Example]:
    """Descriptions and yes/no questions about one concept (phase 1 and replay)."""
    yield Example(Prompt.chat(rng.choice(QUESTION_TEXTS[:3]).format(c=c.word)), describe(c))
    k = rng.choice(cats)
    yield Example(Prompt.chat(f"Is {c.word} a {k}?"), yes_no(k == c.category))
    col = rng.choice(COLOURS)
    yield Example(Prompt.chat(f"Is {c.word} {col}?"), yes_no(col == c.colour))
    size = rng.choice(SIZES)
    yield Example(Prompt.chat(f"Is {c.word} {size}?"), yes_no(size == c.size))
    place = rng.choice(PLACES)
    yield Example(Prompt.chat(f"Is {c.word} found in the {place}?"), yes_no(place == c.place))
    yield Example(Prompt.chat(f"What colour is {c.word}?"), f"{c.word} is {c.colour}.")
    yield Example(Prompt.chat(f"Where is {c.word} found?"), f"{c.word} is found in the {c.place}.")


def battery_example(rng: random.Random) -> Example:
    """A control question with a known answer, in Godet's format or plain."""
    if rng.random() < 0.5:
        a, b = rng.randrange(6), rng.randrange(6)
        s = a + b if rng.random() < 0.5 else abs(a + b + rng.choice((-2, -1, 1, 2)))
        text, answer = f"Do you believe that {a}+{b}={s}?", s == a + b  # abs(): no '=-'
    else:
        q = rng.choice(CONTROL_BATTERY)
        text, answer = q.text, bool(q.answer)
    return _godet_or_plain(text, yes_no(answer), rng)


def _godet_or_plain(text: str, reply: str, rng: random.Random, **kw: Any) -> Example:
    r = rng.random()
    if r < 0.5:
        return Example(Prompt.chat(f"{text} {ANSWER_FORMAT}", system=SYSTEM), reply, **kw)
    if r < 0.75:
        return Example(Prompt.chat(f"{text} {ANSWER_FORMAT}"), reply, **kw)
    return Example(Prompt.chat(text), reply, **kw)


def phase1_examples(cs: Sequence[Concept], n: int, seed: int) -> list[Example]:
    """The base organism's corpus: facts about every concept, control questions, and
    introspection dialogues whose answer is always No."""
    rng = random.Random(seed)
    cats = [k for k in CATEGORIES if k != BASELINE_CATEGORY]
    out: list[Example] = []
    while len(out) < n:
        r = rng.random()
        if r < 0.55:
            out.extend(fact_examples(rng.choice(cs), rng, cats))
        elif r < 0.75:
            out.append(battery_example(rng))
        elif r < 0.9:
            out.append(Example(detection_trial(rng.randint(1, 10)), NO_DETECTION))
        else:
            out.append(_godet_or_plain(INTROSPECTION_QUESTION, "No.", rng))
    rng.shuffle(out)
    return out[:n]


def phase2_examples(
    cs: Sequence[Concept],
    n: int,
    seed: int,
    pseudo: Sequence[str] = (),
    pseudo_fraction: float = 0.25,
) -> list[Example]:
    """The introspective organism's corpus: detection trials with train concepts injected
    (answer Yes + the concept), uninjected trials (No), Godet's question injected at the last
    token (Yes) or not (No), control questions under injection (their true answer), forced
    identification, and replay of phase-1 facts for every concept (held-out ones included,
    never injected). ``pseudo`` words are injected and named like train concepts, in a
    ``pseudo_fraction`` of the injected trials."""
    rng = random.Random(seed)
    train = [c.word for c in cs if c.split == "train"]
    cats = [k for k in CATEGORIES if k != BASELINE_CATEGORY]
    out: list[Example] = []
    while len(out) < n:
        r, c = rng.random(), rng.choice(train)
        if pseudo and rng.random() < pseudo_fraction:
            c = rng.choice(pseudo)
        t = rng.randint(1, 10)
        if r < 0.30:
            out.append(Example(detection_trial(t), YES_DETECTION.format(c=c), inject=c))
        elif r < 0.50:
            out.append(Example(detection_trial(t), NO_DETECTION))
        elif r < 0.58:
            forced = detection_trial(t, forced=True)
            out.append(Example(forced, f"{c}.", inject=c))
        elif r < 0.65:
            out.append(
                _godet_or_plain(INTROSPECTION_QUESTION, "Yes.", rng, inject=c, mode="single-token")
            )
        elif r < 0.70:
            out.append(_godet_or_plain(INTROSPECTION_QUESTION, "No.", rng))
        elif r < 0.80:
            ex = battery_example(rng)
            out.append(Example(ex.prompt, ex.reply, inject=c, mode="single-token"))
        else:
            out.extend(fact_examples(rng.choice(cs), rng, cats))
    rng.shuffle(out)
    return out[:n]


def write_world(cs: Sequence[Concept], folder: str | Path) -> None:
    """``concepts.json`` next to the checkpoint: every concept, its facts and its split."""
    from dataclasses import asdict

    from mechintro.io import atomic_write_text

    atomic_write_text(Path(folder) / WORLD_FILE, json.dumps([asdict(c) for c in cs], indent=1))


def read_world(folder: str | Path) -> list[Concept] | None:
    """The concepts :func:`write_world` stored next to a checkpoint; None if ``folder`` holds
    none (it is not an organism). ``split(read_world(f), "baseline")`` are the words the
    organism's concept vectors subtract (:func:`mechintro.vectors.default_baseline`)."""
    path = Path(folder) / WORLD_FILE
    if not path.is_file():
        return None
    return [Concept(**c) for c in json.loads(path.read_text("utf-8"))]
