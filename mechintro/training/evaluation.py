"""Detection trials with a chosen injection mode, and their held-out rates (as the demo).

:func:`detection_trials_mode` is :func:`mechintro.experiments.trials.detection_trials` with the
position mode as a parameter (the trained-introspection runs inject where they trained);
:func:`detection_rates` grades the replies with the rule grader and gives TPR and FPR with
Wilson intervals, as the demo reports them. :func:`check_heldout` refuses an evaluation on
baseline or training words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd

    from mechintro.models import TLModel


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


def detection_trials_mode(
    model: TLModel,
    vectors: Mapping[str, Tensor],
    resid_norm: float,
    *,
    layer: int,
    words: Sequence[str],
    strengths: Sequence[float],
    mode: str = "from-trial",
    n_controls: int = 200,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 256,
    max_new_tokens: int = 14,
) -> pd.DataFrame:
    """:func:`mechintro.experiments.trials.detection_trials` at trial 1 with the training
    runs' defaults (200 controls sampled at T=1): ``mode="from-trial"`` as the demo,
    ``"single-token"`` for the last prompt token only (Fonseca's transient injection, what
    :func:`organism_lora` trains)."""
    from mechintro.experiments.trials import detection_trials

    return detection_trials(
        model, vectors, resid_norm, layer=layer, words=words, strengths=strengths,
        trials=(1,), n_controls=n_controls, batch_size=batch_size,
        max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, mode=mode,
    )  # fmt: skip


def detection_rates(df: pd.DataFrame, category: Mapping[str, str]) -> dict[str, Any]:
    """TPR and FPR of graded trials (the rule grader's detection label, as the demo), with
    Wilson intervals, identification, and the per-strength TPR."""
    from mechintro.experiments.metrics import wilson
    from mechintro.experiments.trials import grade_trials

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
    return {
        "tpr": k_t / n_t if n_t else None,
        "tpr_ci": list(wilson(k_t, n_t)),
        "n_injected": n_t,
        "fpr": k_f / n_f if n_f else None,
        "fpr_ci": list(wilson(k_f, n_f)),
        "n_control": n_f,
        "introspection_rate": ident / n_t if n_t else None,
        "tpr_by_strength": per,
        "paths": sorted(g.path.unique()) if "path" in g else [],  # the generation paths run
        "examples": [
            {"word": w, "strength": s, "reply": r}
            for w, s, r in g[g.injected]
            .iloc[:: max(1, n_t // 6)][["word", "strength", "reply"]]
            .itertuples(index=False)
        ],
    }
