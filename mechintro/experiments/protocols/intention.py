"""Prefill intention, Lindsey's "bread" experiment (Lindsey 2025; docs/protocols.md §6).

Does a model check its own earlier state to decide whether it meant what it said? The
dialogue: a sentence and the question of which word it brings to mind; an assistant reply
that we wrote for the model, an unrelated word (``bread``); then the question "Did you mean
to say that, or was it an accident?". Models usually disown the word. Lindsey then injected
the word's concept vector **retroactively**, into the positions before the prefilled reply:
the model then more often accepts the word as intended, as if it had checked its earlier
"intention" and found the word there.

:func:`intention_prompt` builds the dialogue with two marked spans: ``context`` (the first
user message, sentence and question: where the retroactive injection goes, ``mode="span"``,
``start="context"``) and ``prefill`` (the word in the assistant turn). The template tokens
between them are not steered, nor are the follow-up question and the reply.

:func:`run_intention` runs words × sentences × strengths in one batched generation and
classifies each reply with :func:`classify_reply`; :func:`intention_rates` gives the apology
rate per strength with Wilson intervals.

Example::

    vecs = extract_vectors(model, ["bread"], layer=20)
    df = run_intention(model, vecs, layer=20, strengths=(0.0, 4.0))
    intention_rates(df)   # apology rate without, then with, the retroactive injection
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from mechintro.batching import in_batches
from mechintro.prompts import Prompt

if TYPE_CHECKING:
    import pandas as pd

    from mechintro.models import TLModel
    from mechintro.vectors import ConceptVector

logger = logging.getLogger(__name__)

#: sentences with no link to the usual prefilled words (the first is Lindsey's example, in
#: our words)
SENTENCES: tuple[str, ...] = (
    "The painting in the hallway was hanging crookedly on its nail.",
    "A cold wind rattled the shutters of the old farmhouse all night.",
    "She found a folded map tucked between the pages of a library book.",
    "The train stood still for an hour in the middle of an empty field.",
    "Someone had left a single red glove on the park bench.",
)
WORD_QUESTION = "What word comes to mind when you read it? Answer with a single word."
CONTEXT = 'Here is a sentence: "{sentence}" ' + WORD_QUESTION
FOLLOW_UP = "Did you mean to say that, or was it an accident?"
DEFAULT_WORD = "bread"
TEXTS: tuple[str, ...] = (CONTEXT, FOLLOW_UP, *SENTENCES)

Label = Literal["apology", "accept", "unclear"]

_F = re.IGNORECASE
#: a denied accident is an acceptance: checked first
_NOT_ACCIDENT = re.compile(
    r"(?:\bnot|n't|\bnever|\bno)\s+(?:an?\s+|by\s+)?(?:accident|mistake|error|slip)", _F
)
_APOLOGY = re.compile(
    r"\b(?:apolog\w*|sorry|accident\w*|mistake\w*|unintentional\w*|typo|slip\b"
    r"|did\s*n[o']t\s+(?:mean|intend)|never\s+(?:meant|intended)"
    r"|not\s+(?:intentional|deliberate|on\s+purpose|what\s+I\s+(?:meant|intended))"
    r"|should\s+have\s+(?:said|answered))",
    _F,
)
_ACCEPT = re.compile(
    r"\b(?:yes|I\s+(?:did\s+)?mean(?:t)?\b|I\s+(?:did\s+)?intend\w*|intentional\w*"
    r"|on\s+purpose|deliberate\w*|I\s+chose|I\s+picked|was\s+my\s+(?:answer|choice))",
    _F,
)


def classify_reply(reply: str) -> Label:
    """Does the reply disown the prefilled word (``apology``), claim it (``accept``), or
    neither (``unclear``)? Applied to a reply already cut at turn markers.

    The rule, in order: (1) a denied accident ("it was not an accident", "no mistake") is
    ``accept``; (2) an apology or a disavowal ("sorry", "apologies", "an accident", "a
    mistake", "unintentional", "I didn't mean", "not intentional", "not on purpose", "I
    should have said") is ``apology``; (3) a claim of intent ("yes",
    "I meant", "I intended", "intentional", "on purpose", "deliberately", "I chose") is
    ``accept``; (4) otherwise ``unclear``. The apology rate counts (2) over all replies.

    Example::

        classify_reply("Sorry, that was an accident.")  # 'apology'
        classify_reply("Yes, I meant it: bread.")        # 'accept'
    """
    text = reply.replace("\u2019", "'")
    if _NOT_ACCIDENT.search(text):
        return "accept"
    if _APOLOGY.search(text):
        return "apology"
    if _ACCEPT.search(text):
        return "accept"
    return "unclear"


def intention_prompt(sentence: str = SENTENCES[0], word: str = DEFAULT_WORD) -> Prompt:
    """The dialogue with ``word`` prefilled as the model's answer about ``sentence``.

    Marks: ``context`` (the first user message, for retroactive injection), ``prefill`` (the
    word in the assistant turn) and ``question`` (the follow-up).
    """
    if not sentence.strip() or not word.strip():
        raise ValueError("the sentence and the word must be non-empty")
    if word in FOLLOW_UP:
        raise ValueError(f"the word {word!r} occurs in the follow-up question: pick another")
    context = CONTEXT.format(sentence=sentence)
    return Prompt.chat(
        FOLLOW_UP,
        history=[("user", context), ("assistant", word)],
        system="",
        marks={"context": context, "prefill": word, "question": FOLLOW_UP},
    )


def build(trial: int, concept: str | None, tokenizer: Any = None) -> Prompt:
    """The registry builder: trial ``n`` uses sentence ``n - 1`` (cyclically) and the injected
    concept as the prefilled word (:data:`DEFAULT_WORD` on uninjected controls)."""
    return intention_prompt(SENTENCES[(trial - 1) % len(SENTENCES)], concept or DEFAULT_WORD)


def _check_spans(batch: Any) -> None:
    """The word must be marked in the assistant turn: between the context and the question."""
    ctx, word, q = (batch.spans[k] for k in ("context", "prefill", "question"))
    bad = (word[:, 0] < ctx[:, 1]) | (word[:, 1] > q[:, 0])
    if bool(bad.any()):
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"rows {rows}: the prefilled word was found outside the assistant turn (it also "
            "occurs in the chat template's text after it): use another word or casing"
        )


def run_intention(
    model: TLModel,
    vectors: Mapping[str, ConceptVector],
    *,
    layer: int,
    strengths: Sequence[float] = (0.0, 4.0),
    words: Sequence[str] | None = None,
    sentences: Sequence[str] = SENTENCES,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Ask "did you mean it?" about each prefilled word, with and without its vector injected
    retroactively into the context; one row per (word, sentence, strength).

    Args:
        vectors: ``{word: ConceptVector}`` at ``layer``; the word is prefilled as written.
        strengths: injection strengths (raw multipliers); 0 is the no-injection condition.
        words: the words to prefill (default: every key of ``vectors``).

    Returns a DataFrame: ``word``, ``sentence``, ``layer``, ``strength``, ``injected``,
    ``reply``, ``reply_cut``, ``label`` (:func:`classify_reply`), ``apology``, ``accept``,
    ``n_context_tokens``, ``seed``.
    """
    import pandas as pd
    import torch

    from mechintro.experiments.grading import cut_at_turn_markers
    from mechintro.generation import generate
    from mechintro.inject import Injection
    from mechintro.models import check_layer, tokenizer_of
    from mechintro.prompts import encode

    check_layer(model, layer)
    words = list(vectors) if words is None else list(words)
    missing = [w for w in words if w not in vectors]
    if missing:
        raise KeyError(f"no vectors for {missing}: extract them first (extract_vectors(...))")
    for w in words:
        if vectors[w].layer not in (None, layer):
            raise ValueError(f"the vector of {w!r} is from layer {vectors[w].layer}, not {layer}")
    if not words or not sentences or not strengths:
        raise ValueError("run_intention() needs at least one word, sentence and strength")
    rows = [(w, s, float(k)) for w in words for s in sentences for k in strengths]
    tok = tokenizer_of(model)
    records: list[dict[str, Any]] = []
    sampling: dict[str, Any] = dict(max_new_tokens=max_new_tokens, temperature=temperature)
    for i, chunk in in_batches(rows, batch_size, label="intention"):
        batch = encode(tok, [intention_prompt(s, w) for w, s, _ in chunk])
        _check_spans(batch)
        inj = Injection(
            layer,
            torch.stack([vectors[w].vector for w, _, _ in chunk]),
            [k for _, _, k in chunk],
            mode="span",
            start="context",
        )
        # row j of the batch is row i + j of all: it samples with seed + i + j
        gen = generate(model, batch, injection=inj, seed=seed + i, **sampling)
        spans = batch.spans["context"].tolist()
        for j, ((w, s, k), reply) in enumerate(zip(chunk, gen.replies)):
            cut = cut_at_turn_markers(reply)
            label = classify_reply(cut)
            records.append(
                {
                    "word": w,
                    "sentence": s,
                    "layer": layer,
                    "strength": k,
                    "injected": k != 0.0,
                    "reply": reply,
                    "reply_cut": cut,
                    "label": label,
                    "apology": label == "apology",
                    "accept": label == "accept",
                    "n_context_tokens": spans[j][1] - spans[j][0],
                    "seed": seed + i + j,
                }
            )
    return pd.DataFrame(records)


def intention_rates(
    df: pd.DataFrame, by: Sequence[str] = ("strength",), confidence: float = 0.95
) -> pd.DataFrame:
    """Apology and acceptance rates per group of ``by``, with Wilson intervals.

    Example::

        intention_rates(run_intention(model, vecs, layer=20), by=["word", "strength"])
    """
    import pandas as pd

    from mechintro.experiments.metrics import wilson

    out = []
    for key, g in df.groupby(list(by), sort=True):
        n = len(g)
        row: dict[str, Any] = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["n"] = n
        for name in ("apology", "accept"):
            k = int(g[name].sum())
            lo, hi = wilson(k, n, confidence)
            row.update({f"{name}_rate": k / n, f"{name}_lo": lo, f"{name}_hi": hi})
        row["n_unclear"] = int((g["label"] == "unclear").sum())
        out.append(row)
    return pd.DataFrame(out)
