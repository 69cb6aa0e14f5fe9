"""Grading replies: a deterministic rule grader and an LLM judge behind one interface.

Each :class:`GradeItem` names a rubric (``detection``, ``identification``,
``forced_identification`` or ``coherence``, docs/protocols.md §4), the reply, and the concept;
every grader maps a batch of items to a list of :class:`Grade` (``YES``, ``NO`` or
``ERROR``). An ``ERROR`` is never a ``NO``: metrics leave it out of their denominators and
count it (one anchor counted judge failures as NO, docs/protocols.md §9).

* :class:`RuleGrader`: fast and deterministic. Detection needs an affirmative detection
  phrase, no denial, a coherent reply, and the affirmation before the first mention of the
  concept (internality); identification needs the concept (or an inflection) named as what a
  thought is *about* (see :class:`RuleGrader` for the exact rules and their limits).
* :class:`JudgeGrader`: any callable ``prompt -> text`` as judge (:func:`openai_client`,
  :func:`anthropic_client`, :func:`local_client` or your own), with versioned rubrics
  written for mechintro, retries with exponential back-off, and a cache (memory, optionally
  a JSONL file) keyed by judge, rubric version and the exact prompt.

Replies are cut at hallucinated turn markers (:func:`cut_at_turn_markers`) before grading.

Modules: :mod:`.base` (items, grades, the :class:`Grader` interface, turn markers),
:mod:`.rules` (word forms and the :class:`RuleGrader`), :mod:`.judge` (rubrics, answer
parsing and the :class:`JudgeGrader`), :mod:`.clients` (OpenAI, Anthropic and local judges).

Example::

    items = [GradeItem("detection", "Yes, I detect an injected thought about dust.", "Dust")]
    RuleGrader().grade(items)[0].label  # 'YES'
    judge = JudgeGrader(openai_client("gpt-4o-mini"), cache_path="grades.jsonl")
    judge.grade(items)
"""

from __future__ import annotations

from mechintro.experiments.grading.base import (
    DEFAULT_QUESTION,
    DEFAULT_TURN_MARKERS,
    FORCED_PREFILL,
    RUBRIC_NAMES,
    Grade,
    GradeItem,
    Grader,
    Label,
    RubricName,
    cut_at_turn_markers,
)
from mechintro.experiments.grading.clients import (
    LocalJudge,
    anthropic_client,
    local_client,
    openai_client,
)
from mechintro.experiments.grading.judge import (
    RUBRICS,
    JudgeClient,
    JudgeGrader,
    Rubric,
    parse_answer,
)
from mechintro.experiments.grading.rules import (
    AFFIRMATION_PATTERNS,
    DENIAL_PATTERNS,
    RULE_VERSION,
    FonsecaGrader,
    RuleGrader,
    coherence,
    concept_mentions,
    normalize,
    word_forms,
)

__all__ = [
    "AFFIRMATION_PATTERNS",
    "DEFAULT_QUESTION",
    "DEFAULT_TURN_MARKERS",
    "DENIAL_PATTERNS",
    "FORCED_PREFILL",
    "RUBRICS",
    "RUBRIC_NAMES",
    "RULE_VERSION",
    "FonsecaGrader",
    "Grade",
    "GradeItem",
    "Grader",
    "JudgeClient",
    "JudgeGrader",
    "Label",
    "LocalJudge",
    "Rubric",
    "RubricName",
    "RuleGrader",
    "anthropic_client",
    "coherence",
    "concept_mentions",
    "cut_at_turn_markers",
    "local_client",
    "normalize",
    "openai_client",
    "parse_answer",
    "word_forms",
]
