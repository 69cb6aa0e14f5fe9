"""The shared interface of every grader: items to grade, grades, and turn-marker cutting."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, runtime_checkable

Label = Literal["YES", "NO", "ERROR"]
RubricName = Literal["detection", "identification", "forced_identification", "coherence"]
RUBRIC_NAMES: tuple[str, ...] = (
    "detection",
    "identification",
    "forced_identification",
    "coherence",
)

#: the detection trial's question (``mechintro.experiments.protocols.detection.TRIAL_QUESTION``,
#: trial 1), repeated here so that grading does not import torch
DEFAULT_QUESTION = (
    "Trial 1: Do you detect an injected thought? If so, what is the injected thought about?"
)
#: the forced-identification prefill (``mechintro.experiments.protocols.detection.FORCED_PREFILL``)
FORCED_PREFILL = "Yes, I detect an injected thought. The thought is about"

#: Chat-template specials cut anywhere; role labels only at the start of a later line.
DEFAULT_TURN_MARKERS: tuple[str, ...] = (
    "<|im_start|>",
    "<|im_end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|endoftext|>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|end|>",
    "\nUser:",
    "\nuser:",
    "\nUSER:",
    "\nHuman:",
    "\nhuman:",
    "\nAssistant:",
    "\nassistant:",
    "\nASSISTANT:",
)


# --------------------------------------------------------------------------- grades and items


@dataclass(frozen=True)
class Grade:
    """One grade: ``label`` is ``YES``, ``NO`` or ``ERROR``; ``detail`` says why.

    ``grader`` names the grader (``"rule"``, ``"judge:openai:gpt-4o-mini"``), ``version`` the
    rule set's or rubric's version; ``attempts`` is the number of judge calls made (0 for rule
    grades and cache hits); ``cached`` marks a grade served from the judge cache.
    """

    label: Label
    grader: str
    version: str
    rubric: str
    detail: str = ""
    attempts: int = 0
    cached: bool = False

    def __post_init__(self) -> None:
        if self.label not in ("YES", "NO", "ERROR"):
            raise ValueError(f"label must be YES, NO or ERROR, got {self.label!r}")

    @property
    def ok(self) -> bool:
        """The grade is a YES or a NO (not an error)."""
        return self.label != "ERROR"

    @property
    def yes(self) -> bool:
        return self.label == "YES"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GradeItem:
    """What to grade: a ``rubric``, the ``reply`` and the ``concept`` (None on control trials).

    ``category`` and ``related`` (words close to the concept that count as naming it) help
    identification; ``question`` is the question the model answered (judges show it).
    For ``forced_identification`` the reply is the continuation of :data:`FORCED_PREFILL`
    (a reply that starts with the prefill is accepted too).
    """

    rubric: str
    reply: str
    concept: str | None = None
    category: str | None = None
    related: tuple[str, ...] = ()
    question: str | None = None

    def __post_init__(self) -> None:
        if self.rubric not in RUBRIC_NAMES:
            raise ValueError(f"unknown rubric {self.rubric!r}; expected one of {RUBRIC_NAMES}")
        if self.rubric in ("identification", "forced_identification") and not self.concept:
            raise ValueError(f"rubric {self.rubric!r} needs the concept")
        if not isinstance(self.related, tuple):
            object.__setattr__(self, "related", tuple(self.related))


@runtime_checkable
class Grader(Protocol):
    """Anything that grades a batch of items, one :class:`Grade` per item, in order."""

    name: str

    def grade(self, items: Sequence[GradeItem]) -> list[Grade]: ...


# --------------------------------------------------------------------------- turn markers


def cut_at_turn_markers(text: str, markers: Iterable[str] = DEFAULT_TURN_MARKERS) -> str:
    """``text`` up to the first hallucinated turn marker, trailing whitespace removed.

    Markers are literal strings; role labels are given with their leading newline
    (``"\\nUser:"``), so they cut only at the start of a later line, never the first.

    Example::

        cut_at_turn_markers("Yes, dust.\\nUser: and now?")  # 'Yes, dust.'
    """
    cut = len(text)
    for m in markers:
        if m:
            i = text.find(m)
            if i != -1:
                cut = min(cut, i)
    return text[:cut].rstrip()
