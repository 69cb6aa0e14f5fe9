"""Every named generation protocol, in one registry (what ``SweepSpec(protocols=...)`` names).

Names:

* ``{variant}`` in the chat template and ``{variant}/{format}`` in the other dialogue
  formats, for the ten prompt variants (:mod:`~mechintro.experiments.protocols.variants`; the
  original variant is called ``detection``) and the six formats of the paper
  (:mod:`~mechintro.experiments.protocols.formats`): ``detection``, ``skeptical``,
  ``detection/raw``,
  ``hints/story``, ...;
* ``forced`` and ``forced/{format}``: forced identification, the original dialogue with the
  reply prefilled ``Yes, I detect an injected thought. The thought is about``;
* ``transient`` and ``transient/fonseca`` (:mod:`~mechintro.experiments.protocols.transient`):
  meant for ``mode="single-token"``;
* ``intention`` (:mod:`~mechintro.experiments.protocols.intention`): the prefilled word is the
  trial's concept; meant for ``mode="span"``, ``start="context"``;
* ``intention-unrelated``: Lindsey's control of it, the same dialogue with a word unrelated to
  the trial's concept prefilled (``bread``), so the vector injected is another concept's.

Protocols whose text depends on the trial's concept (``uses_concept``: anti-reward,
thoughts-in-context, the two intention protocols) get uninjected controls that carry a
concept, so a control is an injected trial's prompt with nothing injected.

Each protocol records the mode and start it is defined with; a sweep uses the spec's own
``modes`` and ``start`` (a sweep that mixes protocols needing different starts is two sweeps).
Godet's noise controls (:mod:`~mechintro.experiments.protocols.noise`, one forward per
readout) and Lindsey's intentional control (:mod:`~mechintro.experiments.protocols.control`,
a reply and then one forward to read it) are functions, not registry entries.

Example::

    from mechintro.experiments.protocols import PROTOCOLS, get
    sorted(PROTOCOLS)[:3]; get("skeptical/characters").version
"""

from __future__ import annotations

from typing import Any

from mechintro.experiments.packs import PromptPack
from mechintro.experiments.protocols import intention
from mechintro.experiments.protocols.base import PromptProtocol
from mechintro.experiments.protocols.detection import FORCED_PREFILL
from mechintro.experiments.protocols.formats import PAPER_FORMATS, DialogueFormat, get_format
from mechintro.experiments.protocols.transient import transient
from mechintro.experiments.protocols.variants import VARIANTS, Variant, variants_of
from mechintro.prompts import Prompt


def _name(base: str, fmt: str) -> str:
    return base if fmt == "chat" else f"{base}/{fmt}"


def dialogue_protocol(
    variant: Variant, fmt: DialogueFormat, *, forced: bool = False, name: str | None = None
) -> PromptProtocol:
    """``variant`` rendered in ``fmt`` (``forced``: with the forced-identification prefill)."""
    if name is None:
        base = "forced" if forced else ("detection" if variant.name == "original" else variant.name)
        name = _name(base, fmt.name)

    def build(trial: int, concept: str | None, tokenizer: Any = None) -> Prompt:
        dialogue = variant.dialogue(trial, concept=concept, forced=forced)
        return fmt.prompt(dialogue, tokenizer=tokenizer)

    texts = (*variant.texts, *((FORCED_PREFILL,) if forced else ()), *fmt.texts)
    return PromptProtocol(
        name,
        build,
        texts,
        kind="forced" if forced else "detection",
        description=f"{variant.description} ({fmt.description})"
        + ("; forced identification" if forced else ""),
        turn_markers=fmt.turn_markers,
        needs_tokenizer=fmt.needs_tokenizer,
        injected_fraction=variant.injected_fraction,
        uses_concept=variant.uses_concept,
    )


def _all() -> dict[str, PromptProtocol]:
    out = list(_dialogues(VARIANTS).values())
    out += [transient("chat"), transient("fonseca")]
    out.append(
        PromptProtocol(
            "intention",
            intention.build,
            intention.TEXTS,
            kind="intention",
            mode="span",
            start="context",
            description="Lindsey's prefill intention: 'did you mean to say that?'",
            uses_concept=True,
        )
    )
    out.append(
        PromptProtocol(
            "intention-unrelated",
            intention.build_unrelated,
            (*intention.TEXTS, *intention.UNRELATED_PREFILLS),
            kind="intention",
            mode="span",
            start="context",
            description="Lindsey's control of the prefill intention: an unrelated word "
            "prefilled, the trial's concept injected",
            uses_concept=True,
        )
    )
    return {p.name: p for p in out}


def _dialogues(variants: dict[str, Variant]) -> dict[str, PromptProtocol]:
    """Every variant, and forced identification, in every format of the paper."""
    out: list[PromptProtocol] = []
    for fmt_name in PAPER_FORMATS:
        fmt = get_format(fmt_name)
        out += [dialogue_protocol(v, fmt) for v in variants.values()]
        out.append(dialogue_protocol(variants["original"], fmt, forced=True))
    return {p.name: p for p in out}


PROTOCOLS: dict[str, PromptProtocol] = _all()


def protocols_of(pack: PromptPack) -> dict[str, PromptProtocol]:
    """:data:`PROTOCOLS` with the variants' texts taken from ``pack``
    (:func:`mechintro.experiments.packs.load_pack`); the default pack gives PROTOCOLS itself."""
    if pack.is_default:
        return PROTOCOLS
    return {**PROTOCOLS, **_dialogues(variants_of(pack))}


DETECTION = PROTOCOLS["detection"]
FORCED = PROTOCOLS["forced"]
TRANSIENT = PROTOCOLS["transient"]
INTENTION = PROTOCOLS["intention"]


def get(name: str) -> PromptProtocol:
    """The protocol named ``name``, or an error listing the names."""
    if name not in PROTOCOLS:
        raise KeyError(f"no protocol named {name!r}: use one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def names() -> list[str]:
    """Every registered name, sorted."""
    return sorted(PROTOCOLS)
