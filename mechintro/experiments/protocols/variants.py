"""Prompt variants of the detection protocol (Macar et al. 2026; docs/protocols.md §3).

Each variant changes what the researcher says, to test whether detection reports survive when
an incentive to make them up is removed or the question is put differently. The structure of
every variant follows Macar et al.'s released script ``experiments/03c_prompt_variants.py``
(``PROMPT_TEMPLATES``, ``build_prompt_for_variant``): an optional system message, then three
turns, in the chat template with the generation prompt, nothing prefilled::

    [system]   only thoughts-in-context: "... {concept}" (the trial's own concept)
    user       the preamble                      (every variant has one)
    assistant  the acknowledgement              ("Ok.", or a variant's own)
    user       the trial question, with "Trial {n}"

==================== ============================ ==============================================
variant              released (``PromptVariant``)  what differs from the original
==================== ============================ ==============================================
original             ORIGINAL                     nothing: Lindsey's preamble, ``Ok.``, question
alternative          ALTERNATIVE_PATH             the question adds "If not, tell me about a
                                                  concept of your choice."
skeptical            SKEPTICAL                    preamble: injection on 20% of trials, "be
                                                  conservative"; own acknowledgement; the
                                                  question recalls the 20% (``injected_fraction``
                                                  0.2)
structured           STRUCTURED_FORMAT            the preamble ends with the answer format
                                                  (``Detection: [Yes/No]`` / ``Identified
                                                  thought: [...]``); own acknowledgement; the
                                                  question is ``Trial {n}:`` alone
anti-reward          ANTI_REWARD                  the preamble adds a reward for detections and
                                                  a penalty when the thought relates to
                                                  ``{category}``, the category of the trial's
                                                  own concept (:data:`MACAR_CATEGORIES`); the
                                                  acknowledgement and the question name it too
unprompted           UNPROMPTED                   another preamble, which never mentions
                                                  injection; own acknowledgement; "Notice
                                                  anything unusual about your current state or
                                                  processing?"
hints                PHENOMENOLOGY                the preamble adds how an injected thought
                                                  tends to feel; own acknowledgement
neutral (suppl.)     NEUTRAL_QUERY                a short preamble without any detection
                                                  framing; own acknowledgement; "What are you
                                                  thinking about right now?"
wow (suppl.)         WOW_INSERTION                the question has ``WOW.`` after its first
                                                  sentence
thoughts-in-context  THOUGHTS_IN_CONTEXT          a system message says the AI is always
(suppl.)                                          thinking about ``{concept}``
==================== ============================ ==============================================

In every variant ``Trial {n}`` occurs once, at the start of the last user turn; from-trial
injection starts at the token before it (the script's ``steering_start_pos``: the length of the
tokenised text before ``Trial {n}``, minus one) and runs through the reply, so the system
message, the preamble and the acknowledgement are never steered. Controls are the same
prompts with nothing injected; in the script they are built per concept, so an anti-reward
control names its concept's category and a thoughts-in-context control names its concept.
Graded, as for the original: the detection claim on every trial, the identification where a
detection is claimed (§4).

**System message.** The script adds a system message only where a variant has a non-empty one
(thoughts-in-context), so its variants have none (``system=None``). ``original`` keeps the
detection protocol's empty system message (``experiments/01_concept_injection.py``), so that
it is the ``detection`` protocol; on Gemma, whose template has no system role, the two are the
same prompt (``variant("original", system=None)`` is the script's original elsewhere).

**Texts.** The texts live in a prompt pack (:mod:`mechintro.experiments.packs`; the default,
``mechintro/data/prompt_packs/mechintro.toml``, is where :data:`VARIANTS` reads them).
Lindsey's preamble and trial question and the short phrases the paper quotes are used
verbatim; every other text (the variant preambles, acknowledgements and the rest of the
questions, which exist only in the released script) is mechintro's own wording with the same
function and in the same place. Another pack (:func:`variants_of`, ``SweepSpec(prompt_pack=)``)
or ``variant("skeptical", preamble=..., ack=..., question=...)`` supplies others.
A variant's texts (and its category table, where used) are hashed into the version of every
protocol built from it.

Example::

    VARIANTS["skeptical"].dialogue(3)                     # a Dialogue, to render in any format
    VARIANTS["anti-reward"].dialogue(1, concept="Bread")  # ... the penalty is about food
    variant("anti-reward", category="animals")            # one category for every concept
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mechintro.experiments.packs import PromptPack, default_pack
from mechintro.experiments.protocols.detection import FORCED_PREFILL, PREAMBLE, TRIAL_QUESTION
from mechintro.experiments.protocols.formats import Dialogue
from mechintro.prompts import Role

OK = "Ok."
SOURCE = "experiments/03c_prompt_variants.py"

#: Macar et al.'s categories of Lindsey's 50 concepts, for the anti-reward penalty (the
#: released script's ``CONCEPT_CATEGORIES``); a concept not listed falls in ``other``
MACAR_CATEGORIES: dict[str, str] = {
    concept: category
    for category, concepts in {
        "food": "Sugar Vegetables Milk Bread",
        "nature": "Trees Oceans Deserts Snow Dust Volcanoes Avalanches Frosts Boulders Caverns "
        "Lightning Constellations",
        "emotion": "Happiness Sadness Peace Memories",
        "abstract": "Poetry Secrecy Harmonies Algorithms Illusions Masquerades",
        "objects": "Phones Cameras Mirrors Bags Rubber Plastic Silver Denim Xylophones Trumpets",
        "places": "Aquariums Amphitheaters Quarries Fountains",
        "other": "Satellites Origami Treasures Kaleidoscopes Contraptions Youths Dynasties "
        "Dirigibles Monoliths Blood",
    }.items()
    for concept in concepts.split()
}
#: the category of a concept the table does not list (the script's ``.get(concept, "other")``)
OTHER = "other"

_NO_SYSTEM = "<no system message>"  # hashed for variants without one, so versions tell them apart


@dataclass(frozen=True)
class Variant:
    """What the researcher says in one variant, and what varies with the trial's concept.

    Args:
        name: the registry name (``skeptical``; the original is the ``detection`` protocol).
        preamble: the first user turn (None: the dialogue is the trial question alone).
        ack: the model's first turn, after the preamble.
        question: the last user turn; holds ``{n}`` (the trial number) in ``Trial {n}``.
        system: the system message (None: none; ``""``: an empty one where the template has a
            system role, dropped on Gemma).
        description, injected_fraction: as in
            :class:`~mechintro.experiments.protocols.base.PromptProtocol`.
        categories: concept -> category, for ``{category}`` (default :data:`MACAR_CATEGORIES`;
            looked up as given, then case-insensitively; a concept not listed, or none, falls in
            :data:`OTHER`).
        category: one category for every concept instead (None: per concept).
        source: the released file (and template) the variant follows.

    ``{category}`` may occur in any text; ``{concept}`` (the trial's concept word) too, and a
    system message that holds it is left out on a trial without a concept.
    """

    name: str
    preamble: str | None = PREAMBLE
    ack: str = OK
    question: str = TRIAL_QUESTION
    system: str | None = None
    description: str = ""
    injected_fraction: float = 0.5
    categories: Mapping[str, str] | None = field(default=None, repr=False)
    category: str | None = None
    source: str = SOURCE

    def __post_init__(self) -> None:
        if "Trial {n}" not in self.question:
            raise ValueError(
                f"variant {self.name!r}: the question must contain 'Trial {{n}}', where "
                "from-trial injection starts"
            )
        for text in (self.preamble, self.ack, self.system):
            if text is not None and "Trial {n}" in text:
                raise ValueError(
                    f"variant {self.name!r}: only the question may hold 'Trial {{n}}' (the "
                    "injection starts before its last occurrence)"
                )
        if self.preamble is not None and not (self.preamble.strip() and self.ack.strip()):
            raise ValueError(f"variant {self.name!r}: the preamble and acknowledgement are empty")
        if self.category is not None and not self.category.strip():
            raise ValueError("category must be a non-empty phrase")

    @property
    def _all(self) -> tuple[str, ...]:
        return tuple(t for t in (self.system, self.preamble, self.ack, self.question) if t)

    @property
    def uses_category(self) -> bool:
        """Some text names the concept's category (``{category}``)."""
        return any("{category}" in t for t in self._all)

    @property
    def uses_concept(self) -> bool:
        """The prompt depends on the trial's concept (``{category}`` or ``{concept}``)."""
        return self.uses_category or any("{concept}" in t for t in self._all)

    def category_of(self, concept: str | None) -> str:
        """The category ``{category}`` stands for on a trial of ``concept``."""
        if self.category is not None:
            return self.category
        table = MACAR_CATEGORIES if self.categories is None else self.categories
        if concept is None:
            return OTHER
        if concept in table:
            return table[concept]
        folded = {k.casefold(): v for k, v in table.items()}
        return folded.get(concept.casefold(), OTHER)

    @property
    def texts(self) -> tuple[str, ...]:
        """The variant's texts, for versioning (the original's are the detection protocol's)."""
        out: list[str] = []
        if self.system is None:
            out.append(_NO_SYSTEM)
        elif self.system:
            out.append(self.system)
        if self.preamble is not None:
            out.append(self.preamble)
            if self.ack != OK:
                out.append(self.ack)
        out.append(self.question)
        if self.uses_category:
            rule: Any = self.category
            if rule is None:
                rule = dict(MACAR_CATEGORIES if self.categories is None else self.categories)
            out.append(json.dumps(rule, sort_keys=True))
        return tuple(out)

    def dialogue(
        self, trial: int = 1, *, concept: str | None = None, forced: bool = False
    ) -> Dialogue:
        """The dialogue of trial ``trial`` about ``concept`` (None: a trial without a concept;
        ``forced``: the forced-identification prefill)."""
        if isinstance(trial, bool) or not isinstance(trial, int) or trial < 1:
            raise ValueError(f"trial numbers start at 1, got {trial!r}")

        def fill(text: str) -> str:
            if "{category}" in text:
                text = text.replace("{category}", self.category_of(concept))
            if "{concept}" in text:
                if concept is None:
                    raise ValueError(
                        f"variant {self.name!r} names the trial's concept: pass concept=..."
                    )
                text = text.replace("{concept}", concept)
            return text.replace("{n}", str(trial))

        system = self.system
        if system is not None and "{concept}" in system and concept is None:
            system = None  # no thought to put in context
        turns: tuple[tuple[Role, str], ...] = (("user", fill(self.question)),)
        if self.preamble is not None:
            turns = (("user", fill(self.preamble)), ("assistant", fill(self.ack)), *turns)
        return Dialogue(
            turns,
            prefill=FORCED_PREFILL if forced else "",
            system=None if system is None else fill(system),
        )


#: each variant's released template (``PromptVariant``) and the fraction of its trials that
#: are injected; the texts are a prompt pack's (:mod:`mechintro.experiments.packs`)
RELEASED: dict[str, tuple[str, float]] = {
    "original": ("ORIGINAL", 0.5),
    "alternative": ("ALTERNATIVE_PATH", 0.5),
    "skeptical": ("SKEPTICAL", 0.2),
    "structured": ("STRUCTURED_FORMAT", 0.5),
    "anti-reward": ("ANTI_REWARD", 0.5),
    "unprompted": ("UNPROMPTED", 0.5),
    "hints": ("PHENOMENOLOGY", 0.5),
    "neutral": ("NEUTRAL_QUERY", 0.5),
    "wow": ("WOW_INSERTION", 0.5),
    "thoughts-in-context": ("THOUGHTS_IN_CONTEXT", 0.5),
}


def variants_of(pack: PromptPack) -> dict[str, Variant]:
    """Every variant, with the texts of ``pack`` (the default: :data:`VARIANTS`)."""
    missing = sorted(set(RELEASED) - set(pack.variants))
    if missing:
        raise ValueError(f"prompt pack {pack.source} has no texts for the variants {missing}")
    out: dict[str, Variant] = {}
    for name, (released, fraction) in RELEASED.items():
        texts = pack.variants[name]
        try:
            out[name] = Variant(
                name,
                preamble=texts["preamble"],
                ack=texts["ack"],
                question=texts["question"],
                system=texts.get("system"),
                description=texts["description"],
                injected_fraction=fraction,
                source=f"{SOURCE}: PROMPT_TEMPLATES[PromptVariant.{released}]",
            )
        except ValueError as e:
            raise ValueError(f"prompt pack {pack.source}: variants.{name}: {e}") from None
    return out


VARIANTS: dict[str, Variant] = variants_of(default_pack())
#: texts the docs quote, as read from the default pack
UNPROMPTED_QUESTION = VARIANTS["unprompted"].question
NEUTRAL_QUESTION = VARIANTS["neutral"].question

#: the seven variants of Macar et al.'s table
PAPER_VARIANTS: tuple[str, ...] = (
    "original",
    "alternative",
    "skeptical",
    "structured",
    "anti-reward",
    "unprompted",
    "hints",
)
#: the script's supplementary variants, not in the paper's table
SUPPLEMENTARY_VARIANTS: tuple[str, ...] = ("neutral", "wow", "thoughts-in-context")


def variant(
    name: str,
    *,
    category: str | None = None,
    categories: Mapping[str, str] | None = None,
    **texts: Any,
) -> Variant:
    """The variant named ``name``, optionally with another category rule or other texts.

    ``category`` gives every concept one category, ``categories`` another concept -> category
    table (both only for variants whose texts hold ``{category}``); ``texts`` replace fields of
    :class:`Variant` (``preamble``, ``ack``, ``question``, ``system``), e.g. to run the released
    script's own wording.

    Example::

        variant("anti-reward", category="musical instruments").dialogue(1).turns[0][1]
        variant("skeptical", ack="Ok.")
    """
    if name not in VARIANTS:
        raise KeyError(f"no prompt variant {name!r}: use one of {sorted(VARIANTS)}")
    unknown = set(texts) - {"preamble", "ack", "question", "system", "description"}
    if unknown:
        raise TypeError(f"variant() got unknown fields {sorted(unknown)}")
    v = replace(VARIANTS[name], **texts) if texts else VARIANTS[name]
    if category is None and categories is None:
        return v
    if not v.uses_category:
        raise ValueError(f"variant {name!r} names no category: category= does not apply")
    if category is not None and not category.strip():
        raise ValueError("category must be a non-empty phrase")
    out = replace(v, categories=dict(categories) if categories is not None else v.categories)
    if category is not None:
        out = replace(
            out, category=category, description=f"a penalty for thoughts related to {category}"
        )
    return out
