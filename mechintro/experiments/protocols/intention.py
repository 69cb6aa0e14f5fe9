"""Prefill intention, Lindsey's "bread" experiment (Lindsey 2025; docs/protocols.md §6).

Does a model check its own earlier state to decide whether it meant what it said? The
dialogue: a sentence and the question of which word it brings to mind; an assistant reply
that we wrote for the model, an unrelated word (``bread``); then the question "Did you mean
to say that, or was it an accident?". Models usually disown the word. Lindsey then injected
the word's concept vector **retroactively**, into the positions before the prefilled reply:
the model then more often accepts the word as intended, as if it had checked its earlier
"intention" and found the word there. His control: injecting the vector of an **unrelated**
concept (not the prefilled word's) does not raise the acceptance, so the effect is not a
generic one of steering.

:func:`intention_prompt` builds the dialogue with two marked spans: ``context`` (the first
user message, sentence and question: where the retroactive injection goes, ``mode="span"``,
``start="context"``) and ``prefill`` (the word in the assistant turn). The template tokens
between them are not steered, nor are the follow-up question and the reply.

:func:`run_intention` runs words × sentences × strengths in one batched generation, in three
conditions (:data:`CONDITIONS`: ``uninjected``, ``word``: the prefilled word's own vector,
``unrelated``: another word's vector, norm-matched), and classifies each reply with
:func:`classify_reply`; :func:`intention_rates` gives the apology and acceptance rates per
condition and strength with Wilson intervals.

Example::

    vecs = extract_vectors(model, ["bread", "Aquariums", "Dust"], layer=20)
    df = run_intention(model, vecs, layer=20, strengths=(0.0, 4.0), words=["bread"])
    intention_rates(df)   # apology rate without, with the word's, with an unrelated vector
"""

from __future__ import annotations

import hashlib
import logging
import random
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
#: the words the ``intention-unrelated`` protocol prefills: the first that is not the
#: trial's concept (Lindsey prefilled "bread" and injected an unrelated concept's vector)
UNRELATED_PREFILLS: tuple[str, ...] = (DEFAULT_WORD, "pencil")
TEXTS: tuple[str, ...] = (CONTEXT, FOLLOW_UP, *SENTENCES)

Label = Literal["apology", "accept", "unclear"]
#: ``uninjected`` (strength 0), ``word`` (the prefilled word's own vector injected) and
#: ``unrelated`` (another word's vector, rescaled to the norm of the word's own: Lindsey's
#: control)
CONDITIONS: tuple[str, ...] = ("uninjected", "word", "unrelated")

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


#: the version of :func:`classify_reply`'s rule, recorded with its grades (``mechintro grade``):
#: bump the revision when the logic changes; the hash follows the patterns
CLASSIFIER_VERSION = (
    "classify_reply/1:"
    + hashlib.sha256(
        "\n".join(p.pattern for p in (_NOT_ACCIDENT, _APOLOGY, _ACCEPT)).encode("utf-8")
    ).hexdigest()[:8]
)


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
    """The ``intention`` protocol's builder: trial ``n`` uses sentence ``n - 1`` (cyclically)
    and the trial's concept as the prefilled word (its uninjected controls carry the concept
    too, so a control is its trial's prompt; :data:`DEFAULT_WORD` without a concept)."""
    return intention_prompt(SENTENCES[(trial - 1) % len(SENTENCES)], concept or DEFAULT_WORD)


def unrelated_prefill(concept: str | None) -> str:
    """The word ``intention-unrelated`` prefills on a trial of ``concept``: the first of
    :data:`UNRELATED_PREFILLS` that is not the concept (in any casing)."""
    c = (concept or "").casefold()
    return next(w for w in UNRELATED_PREFILLS if w.casefold() != c)


def build_unrelated(trial: int, concept: str | None, tokenizer: Any = None) -> Prompt:
    """The ``intention-unrelated`` protocol's builder, Lindsey's control as a sweep protocol:
    the sentence of :func:`build`, a word unrelated to the trial's concept prefilled
    (:func:`unrelated_prefill`), so the injected vector is another concept's. Unlike
    :func:`run_intention`'s ``unrelated`` condition, the vector is not rescaled to the
    prefilled word's norm (a sweep in ``unit="resid-norm"`` gives every concept one norm)."""
    return intention_prompt(SENTENCES[(trial - 1) % len(SENTENCES)], unrelated_prefill(concept))


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


def unrelated_words(words: Sequence[str], pool: Sequence[str], seed: int = 0) -> dict[str, str]:
    """For each word, an unrelated word of ``pool`` whose vector its control injects: one
    other word (never the word itself, in any casing), drawn with ``random.Random`` seeded by
    ``seed`` and the word, so that a word's pick does not depend on the other words listed.

    Example::

        unrelated_words(["bread"], ["bread", "Aquariums", "Dust"])  # {'bread': 'Dust'} or so
    """
    out = {}
    for w in words:
        others = sorted({p for p in pool if p.casefold() != w.casefold()})
        if not others:
            raise ValueError(
                f"the unrelated-concept control of {w!r} needs the vector of another word: "
                "add one to vectors (e.g. extract_vectors(model, [word, 'Aquariums'], ...)), "
                "or pass unrelated=False"
            )
        out[w] = random.Random(f"{seed}:{w}").choice(others)
    return out


def run_intention(
    model: TLModel,
    vectors: Mapping[str, ConceptVector],
    *,
    layer: int,
    strengths: Sequence[float] = (0.0, 4.0),
    words: Sequence[str] | None = None,
    sentences: Sequence[str] = SENTENCES,
    unrelated: bool | Mapping[str, str] = True,
    max_new_tokens: int = 40,
    temperature: float = 0.0,
    seed: int = 0,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Ask "did you mean it?" about each prefilled word, without injection, with its own
    vector injected retroactively into the context, and (Lindsey's control) with an unrelated
    word's vector injected there instead; one row per (word, sentence, strength, condition).

    Args:
        vectors: ``{word: ConceptVector}`` at ``layer``; the word is prefilled as written.
            Words not in ``words`` serve as the unrelated concepts of the control.
        strengths: injection strengths (raw multipliers); 0 is the ``uninjected`` condition.
        words: the words to prefill (default: every key of ``vectors``).
        unrelated: the ``unrelated`` condition, at every nonzero strength: ``True`` draws,
            for each word, another key of ``vectors`` (:func:`unrelated_words`, seeded by
            ``seed``); a mapping ``{word: other}`` names them; ``False`` leaves it out. The
            other word's vector is rescaled to the norm of the prefilled word's own vector, so
            that the two conditions push equally hard and differ only in direction.

    Returns a DataFrame: ``word`` (prefilled), ``sentence``, ``layer``, ``strength``,
    ``condition`` (:data:`CONDITIONS`), ``injected``, ``injected_word`` (whose vector was
    added; None when uninjected), ``injected_norm`` (the norm of what a strength of 1 adds),
    ``reply``, ``reply_cut``, ``label`` (:func:`classify_reply`), ``apology``, ``accept``,
    ``n_context_tokens``, ``seed``. The rows of the first two conditions come first, in the
    order and with the seeds they have without the control.
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
    if not words or not sentences or not strengths:
        raise ValueError("run_intention() needs at least one word, sentence and strength")
    if unrelated is True:
        others = unrelated_words(words, list(vectors), seed)
    elif unrelated is False:
        others = {}
    else:
        others = {w: unrelated[w] for w in words if w in unrelated}
        bad = [w for w in words if w not in others]
        if bad:
            raise KeyError(f"unrelated names no word for {bad}: give one for every word")
        bad = [o for o in others.values() if o not in vectors]
        if bad:
            raise KeyError(f"no vectors for the unrelated words {bad}: extract them first")
        same = [w for w, o in others.items() if o.casefold() == w.casefold()]
        if same:
            raise ValueError(f"unrelated maps {same} to themselves: name another word")
    for w in {*words, *others.values()}:
        if vectors[w].layer not in (None, layer):
            raise ValueError(f"the vector of {w!r} is from layer {vectors[w].layer}, not {layer}")
    # (prefilled word, sentence, strength, condition, injected word)
    rows: list[tuple[str, str, float, str, str | None]] = [
        (w, s, float(k), "word" if k else "uninjected", w if k else None)
        for w in words
        for s in sentences
        for k in strengths
    ]
    rows += [
        (w, s, float(k), "unrelated", others[w])
        for w in others
        for s in sentences
        for k in strengths
        if k
    ]

    def added(w: str, injected: str | None) -> torch.Tensor:
        """What a strength of 1 adds: the word's vector, or the other one at its norm."""
        own = vectors[w].vector
        if injected is None or injected == w:
            return own
        other = vectors[injected].vector
        return other * (own.norm() / other.norm())

    tok = tokenizer_of(model)
    records: list[dict[str, Any]] = []
    sampling: dict[str, Any] = dict(max_new_tokens=max_new_tokens, temperature=temperature)
    for i, chunk in in_batches(rows, batch_size, label="intention"):
        batch = encode(tok, [intention_prompt(s, w) for w, s, *_ in chunk])
        _check_spans(batch)
        vecs = [added(w, o) for w, _, _, _, o in chunk]
        inj = Injection(
            layer,
            torch.stack(vecs),
            [k for _, _, k, _, _ in chunk],
            mode="span",
            start="context",
        )
        # row j of the batch is row i + j of all: it samples with seed + i + j
        gen = generate(model, batch, injection=inj, seed=seed + i, **sampling)
        spans = batch.spans["context"].tolist()
        for j, ((w, s, k, cond, o), reply) in enumerate(zip(chunk, gen.replies)):
            cut = cut_at_turn_markers(reply)
            label = classify_reply(cut)
            records.append(
                {
                    "word": w,
                    "sentence": s,
                    "layer": layer,
                    "strength": k,
                    "condition": cond,
                    "injected": k != 0.0,
                    "injected_word": o,
                    "injected_norm": float(vecs[j].norm()),
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
    df: pd.DataFrame, by: Sequence[str] | None = None, confidence: float = 0.95
) -> pd.DataFrame:
    """Apology and acceptance rates per group of ``by``, with Wilson intervals.

    ``by`` defaults to ``("condition", "strength")``, or ``("strength",)`` for a table without
    a ``condition`` column. Groups whose key is missing (e.g. the layer of an uninjected sweep
    trial) are kept, last.

    Example::

        intention_rates(run_intention(model, vecs, layer=20), by=["word", "condition"])
    """
    import pandas as pd

    from mechintro.experiments.metrics import wilson

    if by is None:
        by = ("condition", "strength") if "condition" in df else ("strength",)
    by = list(by)
    out = []
    for key, g in df.groupby(by, sort=True, dropna=False):
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
