"""The LLM judge: versioned rubrics, answer parsing, retries and the grade cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from mechintro.batching import in_batches
from mechintro.experiments.grading.base import (
    DEFAULT_QUESTION,
    DEFAULT_TURN_MARKERS,
    Grade,
    GradeItem,
    Label,
    cut_at_turn_markers,
)
from mechintro.experiments.packs import PromptPack, default_pack

logger = logging.getLogger(__name__)


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


def rubrics_of(pack: PromptPack) -> dict[str, Rubric]:
    """The rubrics of a prompt pack (:mod:`mechintro.experiments.packs`)."""
    return {n: Rubric(n, r["version"], r["template"]) for n, r in pack.rubrics.items()}


#: The judge rubrics, written for mechintro (none is copied from a paper's prompt), as read
#: from the default prompt pack (``mechintro/data/prompt_packs/mechintro.toml``).
RUBRICS: dict[str, Rubric] = rubrics_of(default_pack())

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

    The rubrics are the default prompt pack's, or ``pack``'s
    (:func:`mechintro.experiments.packs.load_pack`), with ``rubrics`` replacing any by name.

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
        pack: PromptPack | None = None,
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
        self.rubrics = {**(RUBRICS if pack is None else rubrics_of(pack)), **(rubrics or {})}
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
            for _, chunk in in_batches(prompts, self.batch_size):
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
