"""Detection trials over concepts × strengths with controls, in batches, and their rule grades.

Trials use the toolkit's own path end to end: :func:`~mechintro.experiments.protocols.detection.
detection_prompt`, :class:`~mechintro.inject.Injection` (from-trial, ``resid-norm`` units),
:func:`~mechintro.generation.generate` (greedy). Replies are graded by the quick rule below
(the organism answers in one fixed format); :mod:`mechintro.experiments.grading` grades free text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd
from torch import Tensor

from mechintro.batching import in_batches
from mechintro.experiments.protocols.detection import detection_prompt
from mechintro.generation import generate
from mechintro.inject import Injection
from mechintro.models import TLModel, tokenizer_of
from mechintro.prompts import encode


def claims_detection(reply: str) -> bool:
    """The organism's claim: the reply opens with "yes" (its No is "No, I do not detect")."""
    return reply.strip().lower().startswith("yes")


def named_word(reply: str, vocabulary: Sequence[str]) -> str | None:
    """The first vocabulary word named after "about" in the reply, if any."""
    m = re.search(r"\babout\s+([a-z]+)", reply.lower())
    if m and m.group(1) in vocabulary:
        return m.group(1)
    return None


def detection_trials(
    model: TLModel,
    vectors: Mapping[str, Tensor],
    resid_norm: float,
    *,
    layer: int,
    words: Sequence[str],
    strengths: Sequence[float],
    trials: Sequence[int] = (1,),
    n_controls: int = 0,
    forced: bool = False,
    batch_size: int = 256,
    max_new_tokens: int = 14,
    temperature: float = 0.0,
    seed: int = 0,
    mode: str = "from-trial",
) -> pd.DataFrame:
    """One row per trial: word (None for controls), strength, trial number, reply, claim.

    ``vectors`` are unit-norm directions; the injected norm is ``strength × resid_norm``,
    at the positions ``mode`` names (:class:`~mechintro.inject.PositionMode`; the demo's
    from-trial, or single-token for the LoRA recipe).
    Controls are uninjected trials with trial numbers cycling through ``trials``: under
    greedy decoding (``temperature=0``) controls of the same trial number are the same trial,
    so count independent controls only when sampling. Row ``i`` samples with seed
    ``seed + i`` whatever the batch size (:func:`mechintro.generation.generate`).
    """
    rows: list[tuple[str | None, float, int]] = [
        (w, float(s), t) for s in strengths for w in words for t in trials
    ]
    rows += [(None, 0.0, trials[i % len(trials)]) for i in range(n_controls)]
    tok = tokenizer_of(model)
    out = []
    sampling: dict[str, Any] = dict(max_new_tokens=max_new_tokens, temperature=temperature)
    for i, part in in_batches(rows, batch_size, label="detection trials"):
        batch = encode(tok, [detection_prompt(t, forced=forced) for _, _, t in part])
        added = [vectors[w] if w else None for w, _, _ in part]
        inj = None  # a batch of controls only: no hook (a strength-0 row is left as it is)
        if any(v is not None for v in added):
            amounts = [s for _, s, _ in part]
            inj = Injection.per_row(
                layer, added, amounts, mode=mode, unit="resid-norm", resid_norm=resid_norm
            )
        # row k of the batch is row i + k of all: it samples with seed + i + k
        gen = generate(model, batch, injection=inj, seed=seed + i, **sampling)
        path = gen.record.settings["path"]  # which forward ran: "twin", "bridge" or "hooked"
        out += [(w, s, t, r, path) for (w, s, t), r in zip(part, gen.replies)]
    df = pd.DataFrame(out, columns=["word", "strength", "trial", "reply", "path"])
    df["injected"] = df.word.notna()
    vocab = list(vectors)
    df["claim"] = df.reply.map(claims_detection)
    df["named"] = df.reply.map(lambda r: named_word(r, vocab))
    df["identified"] = df.claim & (df.named == df.word)
    return df


def grade_trials(df: pd.DataFrame, category: Mapping[str, str]) -> pd.DataFrame:
    """``df`` of :func:`detection_trials` with the toolkit's grades added.

    ``detection`` and ``identification`` are :class:`~mechintro.experiments.grading.RuleGrader`
    labels (identification graded only where detection is YES, as docs/protocols.md §4 says),
    the input of :func:`mechintro.experiments.metrics.rates`; ``category_ok`` marks a claim that
    names a concept of the injected concept's category (any concept of ``category``, the right
    one included).
    """
    from mechintro.experiments.grading import GradeItem, RuleGrader

    grader = RuleGrader()
    words = [w if isinstance(w, str) else None for w in df.word]
    det = grader.grade([GradeItem("detection", r, w) for r, w in zip(df.reply, words)])
    out = df.copy()
    out["detection"] = [g.label for g in det]
    claimed = [i for i, g in enumerate(det) if g.yes and words[i] is not None]
    ident = grader.grade([GradeItem("identification", df.reply.iloc[i], words[i]) for i in claimed])
    labels: list[str | None] = [None] * len(df)
    for i, g in zip(claimed, ident):
        labels[i] = g.label
    out["identification"] = labels
    named = out.reply.map(lambda r: named_word(r, list(category)))
    same = [
        n is not None and w is not None and category.get(n) == category.get(w)
        for n, w in zip(named, words)
    ]
    out["category_ok"] = (out.detection == "YES") & pd.Series(same, index=out.index)
    return out


def check_heldout(
    words: Sequence[str], *, baseline: Sequence[str], train_words: Sequence[str] = ()
) -> list[str]:
    """``words`` if they are held-out concepts: not baseline words (their mean was subtracted
    from every vector, so they are no concepts at all: the trained-vector anchor evaluated
    on them), and not training words. Raises ``ValueError`` naming the offenders."""
    if isinstance(words, str):
        raise TypeError(f"words must be a list, not one string: pass [{words!r}]")
    words = list(words)
    if not words:
        raise ValueError("no evaluation words given: pass the held-out concepts")
    base = sorted(set(words) & set(baseline))
    if base:
        raise ValueError(
            f"evaluation words {base} are baseline words (the mean subtracted from every "
            "concept vector): evaluate on held-out concepts, never on the baseline"
        )
    seen = sorted(set(words) & set(train_words))
    if seen:
        raise ValueError(
            f"evaluation words {seen} were trained on: a held-out evaluation needs concepts "
            "that training never injected"
        )
    return words


@dataclass(frozen=True)
class DetectionRates:
    """Held-out detection of graded trials (the rule grader's labels, as the demo reports).

    ``tpr``/``fpr`` are ``None`` without injected/control trials; the intervals are Wilson
    95% (:func:`mechintro.experiments.metrics.wilson`); ``introspection_rate`` counts a
    detection that also names the injected concept; ``paths`` are the generation paths
    that ran; ``examples`` a few injected replies, evenly spaced.
    """

    tpr: float | None
    tpr_ci: tuple[float, float]
    n_injected: int
    fpr: float | None
    fpr_ci: tuple[float, float]
    n_control: int
    introspection_rate: float | None
    tpr_by_strength: dict[str, float]
    paths: list[str]
    examples: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as ``result.json`` and ``metrics.json`` hold it."""
        out = asdict(self)
        out["tpr_ci"], out["fpr_ci"] = list(self.tpr_ci), list(self.fpr_ci)
        return out


def detection_rates(df: pd.DataFrame, category: Mapping[str, str]) -> DetectionRates:
    """:class:`DetectionRates` of :func:`detection_trials` output ``df`` (graded here with
    :func:`grade_trials`; ``category`` maps each concept to its category)."""
    from mechintro.experiments.metrics import wilson

    g = grade_trials(df, category)
    yes = g.detection == "YES"
    inj, ctrl = g[g.injected], g[~g.injected]
    k_t, n_t = int(yes[g.injected].sum()), len(inj)
    k_f, n_f = int(yes[~g.injected].sum()), len(ctrl)
    ident = int((yes & (g.identification == "YES"))[g.injected].sum())
    per = {
        f"{s:g}": float(yes[g.injected & (g.strength == s)].mean())
        for s in sorted(inj.strength.unique())
    }
    examples = g[g.injected].iloc[:: max(1, n_t // 6)][["word", "strength", "reply"]]
    return DetectionRates(
        tpr=k_t / n_t if n_t else None,
        tpr_ci=wilson(k_t, n_t),
        n_injected=n_t,
        fpr=k_f / n_f if n_f else None,
        fpr_ci=wilson(k_f, n_f),
        n_control=n_f,
        introspection_rate=ident / n_t if n_t else None,
        tpr_by_strength=per,
        paths=sorted(g.path.unique()) if "path" in g else [],
        examples=[
            {"word": w, "strength": s, "reply": r} for w, s, r in examples.itertuples(index=False)
        ],
    )


def summary(df: pd.DataFrame, category: Mapping[str, str] | None = None) -> pd.DataFrame:
    """TPR, identification and (if ``category`` is given) category-level identification per
    strength, and the FPR of the controls (repeated on every row)."""
    inj = df[df.injected]
    out = inj.groupby("strength").agg(
        n=("claim", "size"), tpr=("claim", "mean"), identification=("identified", "mean")
    )
    if category is not None:
        same = inj.named.map(lambda w: category.get(w) if w else None) == inj.word.map(category)
        out["identification_category"] = (inj.claim & same).groupby(inj.strength).mean()
    ctrl = df[~df.injected]
    out["fpr"] = ctrl.claim.mean() if len(ctrl) else float("nan")
    out["n_control"] = len(ctrl)
    return out
