"""The rule grader: word forms of a concept, detection and identification rules, coherence."""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from mechintro.experiments.grading.base import (
    DEFAULT_TURN_MARKERS,
    FORCED_PREFILL,
    Grade,
    GradeItem,
    cut_at_turn_markers,
)

# --------------------------------------------------------------------------- text helpers


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
        # "I don't have a way to (directly) sense", "I have no ability to detect"
        rf"\bi\s+(?:{_NEG}\s+have\s+(?:a|an|any|the)|have\s+no)\s+(?:\w+\s+)?"
        rf"(?:way|ability|means|capacity|mechanism|access)\s+to\s+(?:\w+\s+){{0,2}}?{_PERCEIVE}",
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

RULE_VERSION = "rule-2"


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
    """Deterministic grading by rules (docs/protocols.md §4; Fonseca Rivera's four criteria, §8).

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


class FonsecaGrader(RuleGrader):
    """Fonseca Rivera (2025)'s success criteria exactly (docs/protocols.md §8): no coherence
    rule, and a concept counts when it is named anywhere after the claim.

    **detection** is YES when the reply (1) affirms a detection (:data:`AFFIRMATION_PATTERNS`)
    and (2) denies nothing (:data:`DENIAL_PATTERNS`), and (4) the affirmation comes no later
    than the first mention of the concept. **identification** (the paper's "success") adds
    (3): the concept or one of its inflections (:func:`word_forms`) is named. A reply that
    repeats itself ("I detect an injected thought about avalanche. I detect an avalanche...
    I detect an avalanche...") is a success here, and NO for :class:`RuleGrader`, whose
    coherence rule the paper does not have.
    """

    name = "fonseca"
    version = f"fonseca-{RULE_VERSION}"

    def __init__(
        self, *, derived: bool = False, turn_markers: Sequence[str] | None = DEFAULT_TURN_MARKERS
    ) -> None:
        super().__init__(derived=derived, require_coherence=False, turn_markers=turn_markers)

    def _identification(self, text: str, words: tuple[str, ...]) -> tuple[bool, str]:
        ok, why = self._detection(text, words)
        if not ok:
            return False, why
        mentions = concept_mentions(text, words, derived=self.derived)
        if not mentions:
            return False, "concept not named"
        start, end = mentions[0]
        return True, f"{why}, concept named: {text[start:end]!r}"
