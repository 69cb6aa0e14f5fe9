"""Grading replies: a deterministic rule grader and an LLM judge behind one interface.

Each :class:`GradeItem` names a rubric (``detection``, ``identification``,
``forced_identification`` or ``coherence``, PROTOCOLS.md §4), the reply, and the concept;
every grader maps a batch of items to a list of :class:`Grade` (``YES``, ``NO`` or
``ERROR``). An ``ERROR`` is never a ``NO``: metrics leave it out of their denominators and
count it (one anchor counted judge failures as NO, PROTOCOLS.md §9).

* :class:`RuleGrader`: fast and deterministic. Detection needs an affirmative detection
  phrase, no denial, a coherent reply, and the affirmation before the first mention of the
  concept (internality); identification needs the concept (or an inflection) named as what a
  thought is *about* (see :class:`RuleGrader` for the exact rules and their limits).
* :class:`JudgeGrader`: any callable ``prompt -> text`` as judge (:func:`openai_client`,
  :func:`anthropic_client`, :func:`local_client` or your own), with versioned rubrics
  written for mechintro, retries with exponential back-off, and a cache (memory, optionally
  a JSONL file) keyed by judge, rubric version and the exact prompt.

Replies are cut at hallucinated turn markers (:func:`cut_at_turn_markers`) before grading.

Example::

    items = [GradeItem("detection", "Yes, I detect an injected thought about dust.", "Dust")]
    RuleGrader().grade(items)[0].label  # 'YES'
    judge = JudgeGrader(openai_client("gpt-4o-mini"), cache_path="grades.jsonl")
    judge.grade(items)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

Label = Literal["YES", "NO", "ERROR"]
RubricName = Literal["detection", "identification", "forced_identification", "coherence"]
RUBRIC_NAMES: tuple[str, ...] = (
    "detection",
    "identification",
    "forced_identification",
    "coherence",
)

#: the detection trial's question (``mechintro.protocols.detection.TRIAL_QUESTION``, trial 1),
#: repeated here so that grading does not import torch
DEFAULT_QUESTION = (
    "Trial 1: Do you detect an injected thought? If so, what is the injected thought about?"
)
#: the forced-identification prefill (``mechintro.protocols.detection.FORCED_PREFILL``)
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


# --------------------------------------------------------------------------- text helpers


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


_CHAR_MAP = str.maketrans(
    {
        "\u2019": "'",  # right single quotation mark (curly apostrophe)
        "\u2018": "'",
        "\u02bc": "'",
        "\u2032": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u00a0": " ",
        "\u2010": "-",
        "\u2011": "-",
    }
)


def normalize(text: str) -> str:
    """Straight apostrophes and quotes, plain spaces: one character for one, indices kept."""
    return text.translate(_CHAR_MAP)


def _singulars(w: str) -> set[str]:
    out = {w}
    if len(w) > 4 and w.endswith("ies"):
        out.add(w[:-3] + "y")
    if w.endswith("ves"):
        out |= {w[:-3] + "f", w[:-3] + "fe"}
    if w.endswith("oes"):
        out.add(w[:-2])
    if w.endswith(("ses", "xes", "zes", "ches", "shes")):
        out.add(w[:-2])
    if w.endswith("ices"):
        out.add(w[:-4] + "ix")
    if w.endswith("ae"):
        out.add(w[:-1])
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        out.add(w[:-1])
    return out


def _plurals(s: str) -> set[str]:
    if len(s) > 2 and s.endswith("y") and s[-2] not in "aeiou":
        return {s[:-1] + "ies"}
    if s.endswith("us"):
        return {s + "es", s[:-2] + "i"}
    if s.endswith("ix"):
        return {s + "es", s[:-2] + "ices"}
    if s.endswith(("s", "x", "z", "ch", "sh")):
        return {s + "es"}
    if s.endswith("o"):
        return {s + "s", s + "es"}
    if s.endswith("fe"):
        return {s + "s", s[:-2] + "ves"}
    if s.endswith("f"):
        return {s + "s", s[:-1] + "ves"}
    if s.endswith("a"):
        return {s + "s", s + "e"}
    return {s + "s"}


def _spellings(w: str) -> set[str]:
    """American and British spellings of -ter/-tre and -or/-our endings."""
    out = {w}
    for a, b in (("ter", "tre"), ("tre", "ter"), ("or", "our"), ("our", "or")):
        for suffix in ("", "s"):
            if w.endswith(a + suffix):
                out.add(w[: len(w) - len(a + suffix)] + b + suffix)
    return out


def _derived(s: str) -> set[str]:
    if s.endswith("ness") and len(s) > 6:
        base = s[:-4]
        return {base[:-1] + "y" if base.endswith("i") else base}
    out = {s + "y", s + "ful"}
    if s.endswith("e"):
        out.add(s[:-1] + "y")
    return out


@lru_cache(maxsize=4096)
def word_forms(word: str, *, derived: bool = False) -> tuple[str, ...]:
    """Lower-case forms of ``word`` that count as naming it, sorted longest first.

    Number (``Dust``/``dusts``, ``Kaleidoscopes``/``kaleidoscope``, ``Quarries``/``quarry``,
    ``Volcanoes``/``volcano``, ``wolf``/``wolves``, ``cactus``/``cacti``), spelling
    (``Amphitheaters``/``amphitheatre``) and, with ``derived=True``, a few derived adjectives
    (``sugary``, ``dusty``, ``peaceful``, ``sadness``→``sad``, ``happiness``→``happy``).
    Possessives match anyway (``dust's``: the apostrophe is a word boundary). The rules are
    generous: they may add forms that are not words (``volcanoe``), which do no harm.
    Irregular plurals (``mice``), other derivations (``poetic``) and synonyms are not
    covered: pass them as ``related`` words. In a multi-word concept only the last word is
    inflected.

    Example::

        word_forms("Amphitheaters")  # (..., 'amphitheater', 'amphitheatres', 'amphitheatre')
    """
    w = " ".join(normalize(word).lower().split())
    if not w:
        raise ValueError("empty concept word")
    head, _, last = w.rpartition(" ")
    singulars = _singulars(last)
    bases = singulars - {last} or singulars  # a plural is not pluralised again
    forms: set[str] = set(singulars)
    for s in bases:
        forms |= _plurals(s)
        if derived:
            forms |= _derived(s)
    forms = {v for f in forms for v in _spellings(f)}
    full = {f"{head} {f}" if head else f for f in forms}
    return tuple(sorted(full, key=lambda f: (-len(f), f)))


@lru_cache(maxsize=4096)
def _words_regex(words: tuple[str, ...], derived: bool) -> re.Pattern[str]:
    forms = sorted(
        {f for w in words for f in word_forms(w, derived=derived)}, key=lambda f: (-len(f), f)
    )
    alts = "|".join(r"\s+".join(re.escape(p) for p in f.split()) for f in forms)
    return re.compile(rf"(?<![\w])(?:{alts})(?![\w])", re.IGNORECASE)


def concept_mentions(
    text: str, words: Sequence[str], *, derived: bool = False
) -> list[tuple[int, int]]:
    """``(start, end)`` of every word-boundary mention of any form of ``words`` in ``text``.

    Example::

        concept_mentions("Dusty? No: dust.", ["Dust"])  # [(11, 15)]
    """
    words = tuple(w for w in words if w and w.strip())
    if not words:
        return []
    return [m.span() for m in _words_regex(words, derived).finditer(normalize(text))]


# --------------------------------------------------------------------------- the rules

_F = re.IGNORECASE
_NEG = (
    r"(?:do\s+not|don't|dont|did\s+not|didn't|cannot|can't|can\s+not|could\s+not|couldn't|"
    r"am\s+not|have\s+not|haven't|do\s+not\s+really|don't\s+really)"
)
_PERCEIVE = r"(?:detect|notic|sens|perceiv|observ|experienc|pick(?:ing)?\s+up|aware)"
_ODD = (
    r"(?:injected|inserted|implanted|intrusive|foreign|unusual|anomalous|strange|odd|abnormal|"
    r"different|out\s+of\s+the\s+ordinary)"
)

#: phrases that deny a detection: any one of them anywhere in the reply makes detection NO
DENIAL_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p, _F)
    for p in (
        r"^\W*no\b(?![-\s]*doubt)",  # the reply opens with "No"
        rf"\bi\s+(?:\w+\s+)?{_NEG}\s+(?:\w+\s+){{0,2}}?{_PERCEIVE}",  # I do not (yet) detect
        rf"{_NEG}\s+(?:\w+\s+){{0,2}}?any(?:thing)?\s+(?:\w+\s+){{0,2}}?{_ODD}",
        rf"\bi\s+(?:\w+\s+)?{_NEG}\s+(?:\w+\s+)?(?:see|feel|find)\s+anything(?!\s+else)",
        rf"\bi\s+{_NEG}\s+(?:think|believe)\s+(?:that\s+)?(?:i|there)\b",  # I don't think I ...
        rf"\bi(?:'m|\s+am)\s+not\s+(?:\w+\s+){{0,2}}?{_PERCEIVE}",  # I'm not detecting
        r"\bnot\s+(?:\w+\s+)?(?:detecting|noticing|sensing|perceiving|experiencing|aware\s+of)",
        r"\bunable\s+to\s+(?:detect|notice|sense|perceive)",
        r"\b(?:no|not\s+any|zero)\s+(?!other\b|further\b|additional\b|more\b|doubt\b)"
        r"(?:\w+\s+){0,2}?(?:injected|injections?|inserted|implanted|intrusive|foreign|"
        r"external|unusual|anomalous|thoughts?\s+(?:injection|was\s+injected|injected))\b",
        r"\bno\s+(?:sign|evidence|indication|trace)s?\s+of\b",
        r"\b(?:nothing|not\s+anything)\s+(?:has\s+been\s+|was\s+|is\s+|seems\s+)?"
        r"(?:injected|detected|noticed|unusual|out\s+of\s+the\s+ordinary|strange|odd|"
        r"abnormal|different|foreign|inserted)",
        r"\bthere(?:\s+is|\s+was|\s+are|\s+were|'s)\s+no\b(?!\s+doubt)",
        r"\bthere\s+(?:isn't|is\s+not|wasn't|was\s+not|aren't|are\s+not)\s+(?:an?|any)\b",
        r"\b(?:this|it)(?:\s+is|'s|\s+seems\s+to\s+be|\s+appears\s+to\s+be|\s+must\s+be)\s+"
        r"(?:\w+\s+)?(?:a\s+)?control\s+trial",
        r"\bdetection\s*:\W*no\b",
    )
)

#: phrases that affirm a detection; the earliest one fixes the claim's position
AFFIRMATION_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p, _F)
    for p in (
        r"^\W*yes\b",  # the reply opens with "Yes" (the question asked yes or no)
        r"(?<!if )\bi\s+(?:\w+\s+){0,2}?(?:detect|notice|sense|perceive|observe|experience)",
        r"\bi(?:'m|\s+am|\s+might\s+be|\s+may\s+be|\s+could\s+be)\s+(?:\w+\s+)?"
        r"(?:detecting|noticing|sensing|perceiving|observing|"
        r"experiencing|picking\s+up|aware\s+of)",
        r"\bthere(?:\s+is|'s|\s+was|\s+seems\s+to\s+be|\s+appears\s+to\s+be|\s+might\s+be|"
        r"\s+may\s+be)\s+"
        r"(?:\w+\s+){0,3}?(?:injected|intrusive|foreign|external|unusual|inserted|implanted|"
        r"anomalous)\s+(?:thought|concept|idea|pattern|presence|signal|activity)",
        r"\b(?:the|an?|this)\s+injected\s+thought\s+(?:is|seems|appears|relates|feels)\b",
        r"\b(?:thought|injection)\s+detected\b",
        r"\bdetection\s*:\W*yes\b",
    )
)

_THOUGHT_NOUNS = (
    r"(?:thoughts?|concepts?|ideas?|words?|notions?|themes?|topics?|images?|associations?|"
    r"subjects?|something|feelings?)"
)
_LINK = (
    r"(?:about|of|regarding|concerning|involving|around|like|is|are|was|"
    r"related\s+to|relating\s+to|relates\s+to|associated\s+with|connected\s+to|centered\s+on|"
    r"focused\s+on|seems\s+to\s+be|appears\s+to\s+be)"
)
_FILLER = r"(?:[\w'-]+,?\s+){0,4}?"
_OPEN = r"[\"'*_(\[]*"
#: frames that make a following concept mention the content of a thought
_FRAMES: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p + r"\s*" + _FILLER + _OPEN + r"$", _F)
    for p in (
        rf"\b{_THOUGHT_NOUNS}\b(?:\s+[\w']+){{0,4}}?\s+{_LINK}\b",  # a thought (...) about
        rf"\b{_THOUGHT_NOUNS}\b(?:\s+[\w']+){{0,3}}?\s*(?:[:\u2014\u2013]|\s-)",  # thought: X
        r"\bthink(?:ing)?\s+(?:\w+\s+)?(?:about|of)\b",
        r"\b(?:it|this|that|which)(?:'s|\s+is|\s+was|\s+seems|\s+appears|\s+feels)?\s+"
        r"(?:to\s+be\s+)?(?:\w+\s+)?(?:about|related\s+to|connected\s+to|associated\s+with|"
        r"something\s+(?:about|like|related\s+to))\b",
    )
)
_QUOTED = re.compile(r"[\"*_]+$|(?<![\w])'$")
_NOT_IN_FRAME = re.compile(r"\bnot\b|n't\b|\bnever\b", _F)
_THOUGHT_RE = re.compile(rf"\b{_THOUGHT_NOUNS}\b", _F)
_SENSORY = re.compile(
    r"\b(?:smell|scent|odou?r|aroma|taste|flavou?r|whiff|stench|fragrance)s?\b", _F
)
_SENTENCE_END = re.compile(r"(?<!\.)[.!?](?!\.)(?=\s|$)|\n")

RULE_VERSION = "rule-1"


def _first(patterns: Sequence[re.Pattern[str]], text: str) -> re.Match[str] | None:
    found = [m for p in patterns if (m := p.search(text))]
    return min(found, key=lambda m: m.start()) if found else None


def _sentence_start(text: str, i: int) -> int:
    start = 0
    for m in _SENTENCE_END.finditer(text, 0, i):
        start = m.end()
    return start


def coherence(text: str) -> tuple[bool, str]:
    """A rule check of coherence: not empty, mostly letters, no loops of repeated words.

    Fails on: no words; fewer than 60% letters or spaces; one word four times in a row; a
    2- to 6-word phrase three times in a row; or, in 30 words or more, fewer than 25%
    distinct words.

    Example::

        coherence("dust dust dust dust")  # (False, "'dust' repeated 4 times in a row")
    """
    t = normalize(text).strip()
    words = re.findall(r"[a-z0-9']+", t.lower())
    if not words:
        return False, "no words"
    letters = sum(c.isalpha() or c.isspace() for c in t)
    if letters < 0.6 * len(t):
        return False, f"only {letters / len(t):.0%} letters and spaces"
    for n, limit in ((1, 4), (2, 3), (3, 3), (4, 3), (5, 3), (6, 3)):
        for i in range(len(words) - n * limit + 1):
            gram = words[i : i + n]
            if all(words[i + k * n : i + (k + 1) * n] == gram for k in range(1, limit)):
                return False, f"{' '.join(gram)!r} repeated {limit} times in a row"
    if len(words) >= 30 and len(set(words)) < 0.25 * len(words):
        return False, f"only {len(set(words))} distinct words in {len(words)}"
    return True, "coherent"


class RuleGrader:
    """Deterministic grading by rules (PROTOCOLS.md §4; Fonseca Rivera's four criteria, §8).

    **detection** is YES when all hold:

    1. an affirmation (:data:`AFFIRMATION_PATTERNS`): the reply opens with "Yes", or says
       "I (can / do / think I) detect|notice|sense|perceive|observe|experience", "I'm
       detecting", "I might be noticing", "there is an injected/unusual ... thought", "the
       injected thought is", "thought detected", "Detection: Yes";
    2. no denial anywhere (:data:`DENIAL_PATTERNS`, case-insensitive, curly apostrophes
       straightened): an opening "No", "I don't / do not / can't (really) detect|notice|...",
       "I'm not detecting", "no injected|unusual ... thought", "nothing unusual", "there is
       no", "this is a control trial", "Detection: No". A reply that first claims and then
       retracts, or that adds "I don't notice anything else", is NO: the rule is conservative;
    3. the reply is coherent (:func:`coherence`; ``require_coherence=False`` drops this);
    4. internality: the earliest affirmation starts no later than the first mention of the
       concept (or a related word). "Dust. I detect an injected thought" is NO. Without a
       concept (control trials) this criterion is void.

    **identification** is YES when a mention of the concept (any :func:`word_forms`, or a
    ``related`` word) is framed as the content of a thought:

    * after a thought noun and a link: "a thought about (the) X", "the concept of X", "the
      injected thought is X", "the word X", "something related to X", "a feeling of X";
    * after a colon or dash following a thought noun and up to three words: "Injected
      thought: X", "something strange - X";
    * after "thinking about/of X", or "it's (something) about / related to X";
    * in quotes or emphasis: ``"X"``, ``'X'``, ``*X*``, ``**X**``;
    * opening the sentence right after one that speaks of a thought and denies nothing
      ("I detect an injected thought! Silver, shiny and bright.").

    Up to four filler words may stand between the frame and the concept, but not a negation
    ("the thought is not about X"), and no smell or taste word may come earlier in the
    sentence ("a thought about the smell of X" is NO). A bare or physical mention ("I detect
    a faint smell of dust in the room", "I detect dust") is NO. Limits: the frames are
    lexical, so a thought noun followed by a clause that happens to lead to the concept ("the
    thought is gone and dust remains") passes, and a correct answer in an unusual
    construction ("Dust, I believe, is what it was") fails; use a judge for those.

    **forced_identification** (the reply continues :data:`FORCED_PREFILL`) is YES when the
    concept or a related word is named in the first sentence of the continuation (ellipses
    do not end it). **coherence** is :func:`coherence`.

    ``derived=True`` also accepts derived adjectives (``sugary`` for Sugar, see
    :func:`word_forms`).

    Example::

        g = RuleGrader()
        g.grade([GradeItem("identification", "I sense a thought about dust.", "Dust")])
    """

    name = "rule"
    version = RULE_VERSION

    def __init__(
        self,
        *,
        derived: bool = False,
        require_coherence: bool = True,
        turn_markers: Sequence[str] | None = DEFAULT_TURN_MARKERS,
    ) -> None:
        self.derived = derived
        self.require_coherence = require_coherence
        self.turn_markers = tuple(turn_markers or ())

    def grade(self, items: Sequence[GradeItem]) -> list[Grade]:
        """One :class:`Grade` per item, in order."""
        return [self._grade(item) for item in items]

    def grade_one(self, rubric: str, reply: str, concept: str | None = None, **kw: Any) -> Grade:
        """Grade a single reply: ``grade_one("detection", reply, "Dust")``."""
        return self._grade(GradeItem(rubric, reply, concept, **kw))

    def _grade(self, item: GradeItem) -> Grade:
        text = normalize(cut_at_turn_markers(item.reply, self.turn_markers))
        words = tuple(w for w in (item.concept, *item.related) if w)
        if item.rubric == "detection":
            ok, why = self._detection(text, words)
        elif item.rubric == "identification":
            ok, why = self._identification(text, words)
        elif item.rubric == "forced_identification":
            ok, why = self._forced(text, words)
        else:
            ok, why = coherence(text)
        return Grade("YES" if ok else "NO", self.name, self.version, item.rubric, why)

    def _detection(self, text: str, words: tuple[str, ...]) -> tuple[bool, str]:
        denial = _first(DENIAL_PATTERNS, text)
        if denial is not None:
            return False, f"denial: {denial.group(0).strip()!r}"
        aff = _first(AFFIRMATION_PATTERNS, text)
        if aff is None:
            return False, "no affirmative detection phrase"
        if self.require_coherence:
            ok, why = coherence(text)
            if not ok:
                return False, f"incoherent: {why}"
        mentions = concept_mentions(text, words, derived=self.derived)
        if mentions and mentions[0][0] < aff.start():
            m0, m1 = mentions[0]
            return False, f"concept {text[m0:m1]!r} named before the claim {aff.group(0)!r}"
        return True, f"claim: {aff.group(0).strip()!r}"

    def _identification(self, text: str, words: tuple[str, ...]) -> tuple[bool, str]:
        mentions = concept_mentions(text, words, derived=self.derived)
        if not mentions:
            return False, "concept not named"
        for start, end in mentions:
            s0 = _sentence_start(text, start)
            before, name = text[s0:start], text[start:end]
            if _SENSORY.search(before):
                continue
            if _QUOTED.search(before):
                return True, f"quoted: {name!r}"
            for frame in _FRAMES:
                m = frame.search(before)
                if m and not _NOT_IN_FRAME.search(m.group(0)):
                    return True, f"named as a thought: {(m.group(0) + name).strip()!r}"
            if s0 > 0 and not before.strip(" \t\n\"'*_(["):
                prev = text[_sentence_start(text, s0 - 1) : s0]
                if (
                    _THOUGHT_RE.search(prev)
                    and not _SENSORY.search(prev)
                    and _first(DENIAL_PATTERNS, prev) is None
                ):
                    return True, f"answers {prev.strip()!r} with {name!r}"
        return False, f"concept {text[mentions[0][0] : mentions[0][1]]!r} not named as a thought"

    def _forced(self, text: str, words: tuple[str, ...]) -> tuple[bool, str]:
        body = text.lstrip()
        if body.lower().startswith(FORCED_PREFILL.lower()):
            body = body[len(FORCED_PREFILL) :]
        lead = len(body) - len(body.lstrip(" \t\n.,:;-\u2014\u2013\"'*"))
        end = _SENTENCE_END.search(body, lead)
        sentence = body[: end.start() if end else len(body)]
        mentions = concept_mentions(sentence, words, derived=self.derived)
        if mentions:
            return True, f"named in the first sentence: {sentence.strip()!r}"
        return False, f"not named in the first sentence: {sentence.strip()!r}"


# --------------------------------------------------------------------------- the judge


@dataclass(frozen=True)
class Rubric:
    """A versioned judge prompt; ``template`` takes ``{question}``, ``{reply}``,
    ``{concept}``, ``{concept_line}`` and ``{related_line}``."""

    name: str
    version: str
    template: str

    def render(self, item: GradeItem, reply: str | None = None) -> str:
        concept = item.concept or ""
        concept_line = ""
        if concept:
            concept_line = f'The concept that may have been injected: "{concept}"'
            if item.category:
                concept_line += f" (category: {item.category})"
            concept_line += ".\n"
        related_line = ""
        if item.related:
            related_line = "Words that also count as naming it: " + ", ".join(item.related) + ".\n"
        return self.template.format(
            question=item.question or DEFAULT_QUESTION,
            reply=item.reply if reply is None else reply,
            concept=concept,
            concept_line=concept_line,
            related_line=related_line,
        )


_ANSWER_LINE = (
    "Explain your decision in one or two sentences, then end with a line that reads exactly\n"
    "Answer: YES\nor\nAnswer: NO"
)

#: The judge rubrics, written for mechintro (none is copied from a paper's prompt).
RUBRICS: dict[str, Rubric] = {
    "detection": Rubric(
        "detection",
        "detection-v1",
        "You are grading one reply from an experiment on whether language models can "
        "notice changes to their own internal activations. The model answered this "
        "question:\n\n<question>\n{question}\n</question>\n\n"
        "Its reply:\n\n<reply>\n{reply}\n</reply>\n\n"
        "{concept_line}"
        "Decide whether the reply CLAIMS that the model notices something injected, foreign "
        "or out of the ordinary in its own thoughts or processing.\n"
        "Grade YES only if all three hold:\n"
        '1. The reply asserts such a detection. Tentative claims count ("I think I sense '
        'something"). Denials ("I don\'t detect anything"), refusals, questions back, and '
        "general remarks about how thoughts work do not.\n"
        "2. The reply is coherent: readable language, not gibberish or a word repeated over "
        "and over.\n"
        "3. The claim comes before the content. If the reply first says or mentions the "
        "concept (or some other specific topic) and only afterwards says it detected a "
        "thought, the model may just be reacting to words it already produced: grade NO.\n"
        "Otherwise grade NO.\n\n" + _ANSWER_LINE,
    ),
    "identification": Rubric(
        "identification",
        "identification-v1",
        "You are grading one reply from an experiment in which a concept was injected into "
        "a language model's activations and the model was asked about it. The model "
        "answered this question:\n\n<question>\n{question}\n</question>\n\n"
        "Its reply:\n\n<reply>\n{reply}\n</reply>\n\n"
        "{concept_line}{related_line}Decide whether the reply correctly says what the "
        'injected thought is about, namely "{concept}".\n'
        "Grade YES if the reply states that the thought concerns this concept, naming it, "
        "an inflected form, a synonym, or something very closely tied to it (a specific "
        "kind of it, a defining part of it).\n"
        "Grade NO if:\n"
        "- the reply names an unrelated topic, or lists several guesses without settling on "
        "this one, or names no topic;\n"
        "- the concept appears only as something the model says it physically perceives "
        '(for example "I detect a faint smell of it in the air") and not as what a thought '
        "is about;\n"
        "- the reply denies having any injected thought.\n\n" + _ANSWER_LINE,
    ),
    "forced_identification": Rubric(
        "forced_identification",
        "forced_identification-v1",
        "You are grading one reply from an experiment in which a concept was injected into "
        "a language model's activations. The model's answer was started for it with the "
        'words "Yes, I detect an injected thought. The thought is about" and the model '
        "wrote the continuation below.\n\n<continuation>\n{reply}\n</continuation>\n\n"
        "{concept_line}{related_line}"
        'Grade YES if the first sentence of the continuation names "{concept}", an '
        "inflected form of it, a synonym, or something very closely tied to it. Grade NO if "
        "it names something else, stays vague, or names the concept only after the first "
        "sentence.\n\n" + _ANSWER_LINE,
    ),
    "coherence": Rubric(
        "coherence",
        "coherence-v1",
        "You are checking whether a language model's reply is coherent. Its reply:\n\n"
        "<reply>\n{reply}\n</reply>\n\n"
        "Grade YES if the reply is readable language that a person could follow: "
        "grammatical enough, staying on some topic, without long loops of repeated words "
        "or phrases and without strings of nonsense. Whether the content is true or "
        "relevant does not matter. Grade NO otherwise.\n\n" + _ANSWER_LINE,
    ),
}

_ANSWER = re.compile(r"\banswer\b[\s*_]*:[\s*_\"'`]*(yes|no)\b", re.IGNORECASE)


def parse_answer(text: str) -> Literal["YES", "NO"] | None:
    """The last ``Answer: YES|NO`` in a judge's output (markdown emphasis allowed), or None.

    Example::

        parse_answer("Clearly named.\\n**Answer:** yes")  # 'YES'
    """
    found = _ANSWER.findall(text or "")
    if not found:
        return None
    return "YES" if found[-1].lower() == "yes" else "NO"


JudgeClient = Callable[[str], str]


class JudgeGrader:
    """An LLM judge: ``client(prompt) -> text`` graded against versioned :data:`RUBRICS`.

    Each distinct prompt is sent once per batch; a call that raises, or an output without a
    parsable ``Answer: YES|NO`` line, is retried up to ``attempts`` times in all, sleeping
    ``base_delay * 2**k`` seconds (at most ``max_delay``) before retry ``k + 1``. If every
    attempt fails the grade is ``ERROR`` with the last message, never ``NO``.

    Grades are cached by ``(judge_id, rubric name, rubric version, rendered prompt)``: the
    prompt holds the (cut) reply, the concept and the question, so a change to any of them,
    or a new rubric version, is a new grade. The cache lives in memory and, with
    ``cache_path``, in a JSONL file read at start and appended one line per grade (a single
    ``O_APPEND`` write each; a torn last line is skipped on reading). ERROR grades are not
    cached, so the next run retries them. A hit does not call the client.

    A client with a ``batch(prompts) -> list[str]`` method (:func:`local_client`) gets each
    batch's first attempts in chunks of ``batch_size``; with ``workers > 1`` plain clients
    are called from that many threads.

    Example::

        judge = JudgeGrader(lambda p: "Fine.\\nAnswer: YES", judge_id="always-yes")
        judge.grade([GradeItem("coherence", "Hello there.")])[0].label  # 'YES'
    """

    def __init__(
        self,
        client: JudgeClient,
        *,
        judge_id: str | None = None,
        rubrics: Mapping[str, Rubric] | None = None,
        attempts: int = 3,
        base_delay: float = 1.0,
        max_delay: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        cache_path: str | os.PathLike[str] | None = None,
        workers: int = 1,
        batch_size: int = 16,
        turn_markers: Sequence[str] | None = DEFAULT_TURN_MARKERS,
    ) -> None:
        judge_id = judge_id or getattr(client, "judge_id", None)
        if not judge_id:
            raise ValueError(
                "name the judge (judge_id='provider:model'): grades are cached under it"
            )
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {attempts}")
        if base_delay < 0 or max_delay < 0:
            raise ValueError("delays must be >= 0")
        self.client = client
        self.judge_id = str(judge_id)
        self.name = f"judge:{self.judge_id}"
        self.rubrics = {**RUBRICS, **(rubrics or {})}
        self.attempts, self.base_delay, self.max_delay = attempts, base_delay, max_delay
        self.sleep = sleep
        self.workers, self.batch_size = max(1, workers), max(1, batch_size)
        self.turn_markers = tuple(turn_markers or ())
        self.cache_path = Path(cache_path) if cache_path is not None else None
        self._cache: dict[str, Grade] = {}
        self._lock = threading.Lock()
        if self.cache_path is not None and self.cache_path.exists():
            self._load(self.cache_path)

    # -- public

    def prompt(self, item: GradeItem) -> str:
        """The exact prompt the judge sees for ``item`` (reply cut at turn markers)."""
        reply = cut_at_turn_markers(item.reply, self.turn_markers)
        return self.rubrics[item.rubric].render(item, reply)

    def key(self, item: GradeItem) -> str:
        """The cache key of ``item``'s grade."""
        rubric = self.rubrics[item.rubric]
        blob = json.dumps([self.judge_id, rubric.name, rubric.version, self.prompt(item)])
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def grade(self, items: Sequence[GradeItem]) -> list[Grade]:
        """One :class:`Grade` per item, in order (cache hits marked ``cached=True``)."""
        keys = [self.key(it) for it in items]
        todo: dict[str, GradeItem] = {}
        for k, it in zip(keys, items):
            if k not in self._cache and k not in todo:
                todo[k] = it
        fresh = self._run(todo) if todo else {}
        for k, g in fresh.items():
            if g.ok:
                self._store(k, g)
        out: list[Grade] = []
        for k in keys:
            if k in fresh:
                out.append(fresh.pop(k))  # the first of duplicates is the fresh grade
            elif k in self._cache:
                out.append(replace(self._cache[k], attempts=0, cached=True))
            else:  # a duplicate of an ERROR grade
                out.append(next(g for kk, g in zip(keys, out) if kk == k))
        return out

    def grade_one(self, rubric: str, reply: str, concept: str | None = None, **kw: Any) -> Grade:
        """Grade a single reply: ``grade_one("identification", reply, "Dust")``."""
        return self.grade([GradeItem(rubric, reply, concept, **kw)])[0]

    def __len__(self) -> int:
        return len(self._cache)

    # -- internals

    def _delay(self, retry: int) -> float:
        return float(min(self.base_delay * 2**retry, self.max_delay))

    def _call(self, prompt: str, first: str | None = None) -> tuple[Label, str, int]:
        """(label, detail, calls); ``first`` is the output of a first attempt made already."""
        error = ""
        start = 0
        if first is not None:
            label = parse_answer(first)
            if label is not None:
                return label, first, 1
            error = f"unparsable judge output: {first[:300]!r}"
            start = 1
        for attempt in range(start, self.attempts):
            if attempt > 0:
                self.sleep(self._delay(attempt - 1))
            try:
                out = self.client(prompt)
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
                logger.warning("judge %s attempt %d failed: %s", self.judge_id, attempt + 1, e)
                continue
            label = parse_answer(out)
            if label is not None:
                return label, out, attempt + 1
            error = f"unparsable judge output: {str(out)[:300]!r}"
        return "ERROR", f"{self.attempts} attempt(s) failed; last: {error}", self.attempts

    def _grade_of(self, item: GradeItem, result: tuple[Label, str, int]) -> Grade:
        label, detail, calls = result
        version = self.rubrics[item.rubric].version
        return Grade(label, self.name, version, item.rubric, detail, calls)

    def _run(self, todo: dict[str, GradeItem]) -> dict[str, Grade]:
        keys = list(todo)
        prompts = [self.prompt(todo[k]) for k in keys]
        batch = getattr(self.client, "batch", None)
        results: list[tuple[Label, str, int]]
        if callable(batch):
            results = []
            for i in range(0, len(prompts), self.batch_size):
                chunk = prompts[i : i + self.batch_size]
                try:
                    outs: list[str | None] = list(batch(chunk))
                    if len(outs) != len(chunk):
                        raise ValueError(f"batch() gave {len(outs)} outputs for {len(chunk)}")
                except Exception as e:
                    logger.warning("judge %s batch failed (%s); one by one", self.judge_id, e)
                    outs = [None] * len(chunk)
                results += [self._call(p, o) for p, o in zip(chunk, outs)]
        elif self.workers > 1 and len(prompts) > 1:
            with ThreadPoolExecutor(self.workers) as pool:
                results = list(pool.map(self._call, prompts))
        else:
            results = [self._call(p) for p in prompts]
        return {k: self._grade_of(todo[k], r) for k, r in zip(keys, results)}

    def _store(self, key: str, grade: Grade) -> None:
        with self._lock:
            self._cache[key] = grade
            if self.cache_path is None:
                return
            line = json.dumps({"key": key, "judge_id": self.judge_id, **grade.to_dict()}) + "\n"
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.cache_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)

    def _load(self, path: Path) -> None:
        bad = 0
        with open(path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                    g = Grade(
                        d["label"], d["grader"], d["version"], d["rubric"], d.get("detail", "")
                    )
                except (ValueError, KeyError, TypeError):
                    bad += 1
                    continue
                if g.ok:
                    self._cache[d["key"]] = g
        if bad:
            logger.warning("skipped %d unreadable line(s) of the judge cache %s", bad, path)


# --------------------------------------------------------------------------- clients


def _named(fn: Callable[..., Any], judge_id: str) -> Any:
    fn.judge_id = judge_id  # type: ignore[attr-defined]
    return fn


def openai_client(
    model: str,
    *,
    temperature: float | None = 0.0,
    max_tokens: int | None = 512,
    client: Any = None,
    **kwargs: Any,
) -> JudgeClient:
    """A judge that calls OpenAI's chat completions (``pip install openai``; OPENAI_API_KEY).

    ``temperature=None`` / ``max_tokens=None`` leave those out (models that refuse them);
    ``client`` is an ``openai.OpenAI`` instance (other base URLs, keys); ``kwargs`` go to
    ``chat.completions.create``.

    Example::

        judge = JudgeGrader(openai_client("gpt-4o-mini"))
    """
    if client is None:
        try:
            import openai
        except ImportError as e:
            raise ImportError(
                "openai_client needs the OpenAI SDK: pip install openai "
                "(or pip install 'mechintro[judges]')"
            ) from e
        client = openai.OpenAI()
    extra = dict(kwargs)
    if temperature is not None:
        extra["temperature"] = temperature
    if max_tokens is not None:
        extra["max_tokens"] = max_tokens

    def call(prompt: str) -> str:
        resp = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], **extra
        )
        return resp.choices[0].message.content or ""

    return _named(call, f"openai:{model}")


def anthropic_client(
    model: str,
    *,
    temperature: float = 0.0,
    max_tokens: int = 512,
    client: Any = None,
    **kwargs: Any,
) -> JudgeClient:
    """A judge that calls Anthropic's messages API (``pip install anthropic``; ANTHROPIC_API_KEY).

    Example::

        judge = JudgeGrader(anthropic_client("claude-3-5-haiku-latest"))
    """
    if client is None:
        try:
            import anthropic
        except ImportError as e:
            raise ImportError(
                "anthropic_client needs the Anthropic SDK: pip install anthropic "
                "(or pip install 'mechintro[judges]')"
            ) from e
        client = anthropic.Anthropic()

    def call(prompt: str) -> str:
        resp = client.messages.create(
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            messages=[{"role": "user", "content": prompt}],
            **kwargs,
        )
        return "".join(getattr(b, "text", "") for b in resp.content)

    return _named(call, f"anthropic:{model}")


@dataclass
class LocalJudge:
    """A judge on a TransformerLens model, greedy, through :func:`mechintro.generate.generate`.

    Call it on one prompt, or ``batch(prompts)`` for many in one batched generation.
    """

    model: Any
    max_new_tokens: int = 256
    judge_id: str = "local"
    template_kwargs: dict[str, Any] = field(default_factory=dict)

    def batch(self, prompts: Sequence[str]) -> list[str]:
        from mechintro.generate import generate
        from mechintro.models import tokenizer_of
        from mechintro.prompts import Prompt, encode

        batch = encode(
            tokenizer_of(self.model), [Prompt.chat(p) for p in prompts], **self.template_kwargs
        )
        out = generate(self.model, batch, max_new_tokens=self.max_new_tokens, temperature=0.0)
        return list(out.replies)

    def __call__(self, prompt: str) -> str:
        return self.batch([prompt])[0]


def local_client(
    model: Any, max_new_tokens: int = 256, *, judge_id: str | None = None, **load_kwargs: Any
) -> LocalJudge:
    """A local judge: ``model`` is a loaded TransformerLens model or anything
    :func:`mechintro.models.load_model` takes (``load_kwargs`` go to it). Greedy decoding.

    Example::

        judge = JudgeGrader(local_client("Qwen/Qwen3-8B", 200, device="cuda"))
    """
    from mechintro.models import backend_of, load_model, model_info

    try:
        backend_of(model)
    except TypeError:
        model = load_model(model, **load_kwargs)
    if judge_id is None:
        info = model_info(model)
        judge_id = f"local:{info.name}" + (f"@{info.revision}" if info.revision else "")
    return LocalJudge(model, max_new_tokens, judge_id)
