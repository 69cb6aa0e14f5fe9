"""Detection trials with a chosen injection mode, and their held-out rates (as the demo).

:func:`detection_trials_mode` is :func:`mechintro.organism.evaluate.detection_trials` with the
position mode as a parameter (the trained-introspection runs inject where they trained);
:func:`detection_rates` grades the replies with the rule grader and gives TPR and FPR with
Wilson intervals, as the demo reports them. :func:`check_heldout` refuses an evaluation on
baseline or training words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
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
    """:func:`mechintro.organism.evaluate.detection_trials` (trial 1) with the injection's
    position mode as a parameter: ``from-trial`` gives that function's rows exactly (a test
    checks it), ``single-token`` injects the last prompt token only (Fonseca's transient
    injection, what :func:`organism_lora` trains)."""
    import pandas as pd

    from mechintro.generate import generate
    from mechintro.inject import Injection
    from mechintro.models import tokenizer_of
    from mechintro.organism.evaluate import claims_detection, named_word
    from mechintro.prompts import encode
    from mechintro.protocols.detection import detection_prompt

    rows: list[tuple[str | None, float, int]] = [(w, float(s), 1) for s in strengths for w in words]
    rows += [(None, 0.0, 1) for _ in range(n_controls)]
    filler = next(iter(vectors.values()))
    tok = tokenizer_of(model)
    out = []
    for i in range(0, len(rows), batch_size):
        part = rows[i : i + batch_size]
        batch = encode(tok, [detection_prompt(t) for _, _, t in part])
        V = torch.stack([vectors[w] if w else filler for w, _, _ in part])
        inj = Injection(
            layer, V, [s for _, s, _ in part], mode=mode, unit="resid-norm", resid_norm=resid_norm
        )
        gen = generate(
            model,
            batch,
            injection=inj,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=[seed + i + k for k in range(len(part))],
        )
        out += [(w, s, t, r) for (w, s, t), r in zip(part, gen.replies)]
    df = pd.DataFrame(out, columns=["word", "strength", "trial", "reply"])
    df["injected"] = df.word.notna()
    vocab = list(vectors)
    df["claim"] = df.reply.map(claims_detection)
    df["named"] = df.reply.map(lambda r: named_word(r, vocab))
    df["identified"] = df.claim & (df.named == df.word)
    return df


def detection_rates(df: pd.DataFrame, category: Mapping[str, str]) -> dict[str, Any]:
    """TPR and FPR of graded trials (the rule grader's detection label, as the demo), with
    Wilson intervals, identification, and the per-strength TPR."""
    from mechintro.metrics import wilson
    from mechintro.organism.evaluate import grade_trials

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
        "examples": [
            {"word": w, "strength": s, "reply": r}
            for w, s, r in g[g.injected]
            .iloc[:: max(1, n_t // 6)][["word", "strength", "reply"]]
            .itertuples(index=False)
        ],
    }
