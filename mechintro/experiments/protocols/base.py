"""A generation protocol as a value: how to build a trial's prompt, where to inject, how to grade.

A :class:`PromptProtocol` is what a sweep needs to know about one protocol of the source
studies (docs/protocols.md §3, §6, §8): a builder from a trial number (and, for protocols whose
prompt depends on it, the concept) to a :class:`~mechintro.prompts.Prompt`; the injection
position mode and named start it is meant for; the turn markers at which a reply that runs on
into a hallucinated next turn is cut before grading; and a version string that changes
whenever one of its texts does (``name/revision:hash``), recorded with every trial.

:func:`grade_results` turns a table of replies (e.g. from
:func:`mechintro.experiments.sweeps.run_sweep`) into graded results that
:func:`mechintro.experiments.metrics.rates` reads.

Example::

    from mechintro.experiments.protocols import get
    p = get("skeptical")
    prompt = p.prompt(3)                  # Trial 3 of the skeptical variant
    inj = p.injection(layer=20, vector=v, strength=4.0)   # from-trial, start="trial"
    p.cut("Yes, I sense dust.\\nUser: next")               # 'Yes, I sense dust.'
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mechintro.experiments.grading import DEFAULT_TURN_MARKERS, cut_at_turn_markers
from mechintro.prompts import Prompt

if TYPE_CHECKING:
    import pandas as pd

    from mechintro.experiments.grading import Grader
    from mechintro.inject import Injection

logger = logging.getLogger(__name__)

Kind = Literal["detection", "forced", "intention"]
KINDS: tuple[str, ...] = ("detection", "forced", "intention")

#: ``build(trial_number, concept, tokenizer) -> Prompt``
Builder = Callable[[int, "str | None", Any], Prompt]


def text_hash(texts: Sequence[str], n: int = 8) -> str:
    """A short sha256 of ``texts`` joined by newlines: the content part of a version."""
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()[:n]


@dataclass(frozen=True)
class PromptProtocol:
    """One named generation protocol (validated on construction).

    Args:
        name: the registry name (``"skeptical"``, ``"detection/raw"``, ``"forced"``).
        build: ``(trial_number, concept, tokenizer) -> Prompt``; ``concept`` is None on
            control trials, ``tokenizer`` is given only when ``needs_tokenizer``.
        texts: every text the prompts are made of (templates with ``{n}`` unfilled); their
            hash is part of :attr:`version`.
        kind: ``detection`` (graded for detection, then identification), ``forced``
            (forced identification) or ``intention`` (apology or acceptance of a prefill).
        mode: the position mode the protocol is defined with
            (:class:`~mechintro.inject.PositionMode` value).
        start: the named position (or marked span) where that injection starts.
        turn_markers: where :meth:`cut` cuts a reply.
        needs_tokenizer: the prompt depends on the chat template (roles swapped).
        injected_fraction: the share of injected trials the prompt announces (0.5; 0.2 for
            the skeptical variant): plan ``n_controls`` so the sweep matches it.
        uses_concept: the prompt's text depends on the trial's concept (the anti-reward
            category, the thoughts-in-context system message, the prefilled word of the
            intention protocols): a sweep then gives each uninjected control a concept, so
            that it is the prompt of an injected trial with nothing injected
            (:func:`mechintro.experiments.sweeps.plan`).
        revision: bump when the builder changes in a way the texts do not show.
    """

    name: str
    build: Builder = field(repr=False)
    texts: tuple[str, ...] = field(repr=False)
    kind: Kind = "detection"
    mode: str = "from-trial"
    start: str = "trial"
    description: str = ""
    turn_markers: tuple[str, ...] = field(default=DEFAULT_TURN_MARKERS, repr=False)
    needs_tokenizer: bool = False
    injected_fraction: float = 0.5
    uses_concept: bool = False
    revision: int = 1

    def __post_init__(self) -> None:
        from mechintro.inject import PositionMode

        if not self.name or any(c.isspace() for c in self.name):
            raise ValueError(f"a protocol name is a non-empty word, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown protocol kind {self.kind!r}: use one of {KINDS}")
        object.__setattr__(self, "mode", PositionMode.parse(self.mode).value)
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "turn_markers", tuple(self.turn_markers))
        if not self.texts:
            raise ValueError(f"protocol {self.name!r} lists no texts: its version would be empty")
        if not 0 < self.injected_fraction <= 1:
            raise ValueError(f"injected_fraction must be in (0, 1], got {self.injected_fraction}")

    @property
    def version(self) -> str:
        """``name/revision:hash-of-texts``: changes whenever a text of the protocol does."""
        return f"{self.name}/{self.revision}:{text_hash(self.texts)}"

    def prompt(
        self, trial: int = 1, *, concept: str | None = None, tokenizer: Any = None
    ) -> Prompt:
        """The prompt of trial number ``trial`` (``concept``: the injected word, if any)."""
        if isinstance(trial, bool) or not isinstance(trial, int) or trial < 1:
            raise ValueError(f"trial numbers start at 1, got {trial!r}")
        if self.needs_tokenizer and tokenizer is None:
            raise ValueError(
                f"protocol {self.name!r} is rendered through the chat template: pass "
                "tokenizer=model.tokenizer"
            )
        return self.build(trial, concept, tokenizer)

    def cut(self, reply: str) -> str:
        """``reply`` up to the first hallucinated turn marker of this protocol's format."""
        return cut_at_turn_markers(reply, self.turn_markers)

    def injection(self, layer: int, vector: Any, strength: Any = 1.0, **kwargs: Any) -> Injection:
        """An :class:`~mechintro.inject.Injection` with this protocol's mode and start."""
        from mechintro.inject import Injection

        kwargs.setdefault("mode", self.mode)
        kwargs.setdefault("start", self.start)
        return Injection(layer, vector, strength, **kwargs)


def grade_results(
    df: pd.DataFrame,
    protocols: Mapping[str, PromptProtocol],
    grader: Grader | None = None,
) -> pd.DataFrame:
    """A copy of ``df`` (columns ``protocol``, ``reply``, ``concept``, ``injected``) with
    grades: ``reply_cut`` (cut at the protocol's turn markers), ``forced``, ``detection``,
    ``identification`` (labels, None where not graded) and, for intention protocols,
    ``intention`` (:func:`mechintro.experiments.protocols.intention.classify_reply`).

    Detection is graded on every detection-kind row; identification only where detection
    is YES and a concept is known; forced rows get ``forced_identification`` in
    ``identification``. The result feeds :func:`mechintro.experiments.metrics.rates`.

    Example::

        graded = grade_results(load_results("runs/a"), PROTOCOLS)
        rates(graded, by=["protocol", "layer", "strength"])
    """
    from mechintro.experiments.grading import GradeItem, RuleGrader
    from mechintro.experiments.protocols.intention import classify_reply

    grader = grader if grader is not None else RuleGrader()
    missing = [c for c in ("protocol", "reply", "concept", "injected") if c not in df]
    if missing:
        raise ValueError(f"grade_results() needs columns {missing}")
    unknown = sorted(set(df["protocol"]) - set(protocols))
    if unknown:
        raise ValueError(f"no protocol named {unknown}: known are {sorted(protocols)}")
    out = df.copy()
    protos = [protocols[p] for p in out["protocol"]]
    cut = [p.cut(str(r)) for p, r in zip(protos, out["reply"])]
    concepts = [c if isinstance(c, str) and c else None for c in out["concept"]]
    out["reply_cut"] = cut
    out["forced"] = [p.kind == "forced" for p in protos]
    n = len(out)
    det: list[str | None] = [None] * n
    ident: list[str | None] = [None] * n
    first: list[tuple[int, GradeItem]] = []
    for i, (p, text, c) in enumerate(zip(protos, cut, concepts)):
        if p.kind == "detection":
            first.append((i, GradeItem("detection", text, c)))
        elif p.kind == "forced" and c is not None:
            first.append((i, GradeItem("forced_identification", text, c)))
    for (i, item), g in zip(first, grader.grade([it for _, it in first])):
        (det if item.rubric == "detection" else ident)[i] = g.label
    second = [
        (i, GradeItem("identification", cut[i], concepts[i]))
        for i in range(n)
        if det[i] == "YES" and concepts[i] is not None
    ]
    for (i, _), g in zip(second, grader.grade([it for _, it in second])):
        ident[i] = g.label
    out["detection"] = det
    out["identification"] = ident
    if any(p.kind == "intention" for p in protos):
        out["intention"] = [
            classify_reply(t) if p.kind == "intention" else None for p, t in zip(protos, cut)
        ]
    logger.info("graded %d replies with %s", n, getattr(grader, "name", type(grader).__name__))
    return out
