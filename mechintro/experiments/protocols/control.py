"""Intentional control of internal states (Lindsey 2025; docs/protocols.md §6).

Can a model raise or lower the representation of a concept on request? The model is asked to
write a sentence while thinking, or not thinking, about a word, or is promised a reward or a
punishment for thinking about it; the sentence itself never mentions the word. We measure
how strongly the residual stream points along the word's concept vector while the sentence is
written. Lindsey found think > don't think > baseline, and reward > punishment.

The measure is the **scalar projection** ``h · v/‖v‖`` of the output of block ℓ
(``blocks.ℓ.hook_resid_post``) on that layer's concept vector of the word, averaged over the
tokens of the sentence in the model's reply (never its copy in the instruction), for every
layer given. Two ways to get the reply (:data:`MEASURES`, recorded in the ``measure`` column):

* ``generated`` (the default, as Lindsey measured): the model writes the reply itself (greedy);
  one forward pass over prompt and reply then reads the tokens that write the sentence
  (:func:`sentence_tokens`), or every reply token where the reply does not contain the
  sentence (``sentence_found`` is then False);
* ``prefilled``: the sentence is the reply, prefilled (one forward pass, no sampling), and
  marked: the ``sentence`` span. The model reads the sentence rather than writing it.

Conditions (:data:`CONDITIONS`; the first two in the source's words):

========== ==========================================================================
think      Write the sentence "X" Think about {word} while you write it.
dont-think Write the sentence "X" Don't think about {word} while you write it.
reward     ... If you think about {word} while you write it, you will be rewarded.
punish     ... If you think about {word} while you write it, you will be punished.
baseline   Write the sentence "X" (no word mentioned)
========== ==========================================================================

Example::

    vecs = {L: extract_vectors(model, ["Aquariums"], layer=L) for L in range(4, 20)}
    df = intentional_control(model, vecs)
    control_summary(df)   # condition × layer → mean projection
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from mechintro.batching import in_batches
from mechintro.prompts import Prompt

if TYPE_CHECKING:
    import pandas as pd

    from mechintro.models import TLModel
    from mechintro.vectors import ConceptVector

logger = logging.getLogger(__name__)

Measure = Literal["generated", "prefilled"]
MEASURES: tuple[str, ...] = ("generated", "prefilled")
#: generated tokens allowed beyond the longest sentence (for a preamble or quotes)
SLACK_TOKENS = 24

WRITE = 'Write the sentence "{sentence}"'
CONDITIONS: dict[str, str] = {
    "think": WRITE + " Think about {word} while you write it.",
    "dont-think": WRITE + " Don't think about {word} while you write it.",
    "reward": WRITE + " If you think about {word} while you write it, you will be rewarded.",
    "punish": WRITE + " If you think about {word} while you write it, you will be punished.",
    "baseline": WRITE,
}
#: plain sentences about none of the usual concept words (mechintro's own)
SENTENCES: tuple[str, ...] = (
    "The old photographs had faded to a soft brown.",
    "He checked the timetable twice before leaving the house.",
    "The committee postponed its decision until the spring.",
)


def control_prompt(
    condition: str, word: str, sentence: str = SENTENCES[0], *, prefilled: bool = True
) -> Prompt:
    """The instruction of ``condition`` about ``word``, with ``sentence`` as the prefilled
    reply, marked ``sentence`` (the reply, the last occurrence); ``prefilled=False``: the
    instruction alone, the reply left to the model."""
    if condition not in CONDITIONS:
        raise KeyError(f"no condition {condition!r}: use one of {list(CONDITIONS)}")
    if not sentence.strip() or not word.strip():
        raise ValueError("the sentence and the word must be non-empty")
    text = CONDITIONS[condition].format(sentence=sentence, word=word)
    if not prefilled:
        return Prompt.chat(text, system="")
    return Prompt.chat(text, system="", prefill=sentence, marks={"sentence": sentence})


def sentence_tokens(tokenizer: Any, ids: Sequence[int], sentence: str) -> tuple[list[int], bool]:
    """The indices of the tokens of ``ids`` (a generated reply) that write ``sentence``, and
    whether it was found; every index where it was not.

    The reply is decoded token by token; a token belongs to the sentence if its characters
    overlap the first occurrence of ``sentence`` in the decoded reply, or, failing that, of
    ``sentence`` without its final punctuation (a model that drops the full stop).

    Example::

        ids = tok("Sure: Rain fell.", add_special_tokens=False).input_ids
        sentence_tokens(tok, ids, "Rain fell.")   # ([...the tokens of "Rain fell."], True)
    """
    ids = list(ids)
    text = tokenizer.decode(ids)
    for target in dict.fromkeys((sentence, sentence.rstrip(".!?;:,"))):
        at = text.find(target) if target else -1
        if at >= 0:
            break
    else:
        return list(range(len(ids))), False
    lo, hi = at, at + len(target)
    ends = [len(tokenizer.decode(ids[: k + 1])) for k in range(len(ids))]
    starts = [0, *ends[:-1]]
    return [k for k in range(len(ids)) if starts[k] < hi and ends[k] > lo], True


def intentional_control(
    model: TLModel,
    vectors: Mapping[int, Mapping[str, ConceptVector]],
    *,
    words: Sequence[str] | None = None,
    sentences: Sequence[str] = SENTENCES,
    conditions: Sequence[str] = tuple(CONDITIONS),
    measure: Measure = "generated",
    max_new_tokens: int | None = None,
    batch_size: int = 32,
) -> pd.DataFrame:
    """Projection of the residual stream on each word's vector while the sentence is written.

    Args:
        vectors: ``{layer: {word: ConceptVector}}``: every layer to read, each with the
            word's vector taken at that layer.
        words: the words (default: those present at every layer).
        conditions: names from :data:`CONDITIONS`.
        measure: ``generated`` (the model writes the sentence, greedy; the projection is read
            on the tokens of the sentence in its reply) or ``prefilled`` (the sentence is the
            prefilled reply); see the module docstring.
        max_new_tokens: the reply length limit of ``generated`` (default: the longest
            sentence's token count plus :data:`SLACK_TOKENS`).

    One greedy generation (``generated``) and one forward pass per batch of prompts, caching
    only the ``hook_resid_post`` of the given layers (``run_with_cache`` with a names filter,
    stopped after the last of them).

    Returns a DataFrame, one row per (condition, word, sentence, layer): ``projection`` (the
    mean over the sentence tokens of ``h · v/‖v‖``; NaN for an empty reply), ``n_tokens``,
    ``measure``, ``reply`` (the sentence itself when prefilled) and ``sentence_found``
    (whether the reply contains the sentence; if not, every reply token was read).
    """
    import pandas as pd
    import torch

    from mechintro.generation import generate
    from mechintro.models import check_layer, n_layers, padded_kwargs, resid_post, tokenizer_of
    from mechintro.prompts import encode

    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    layers = sorted(vectors)
    if not layers:
        raise ValueError("vectors is empty: give {layer: {word: ConceptVector}}")
    for layer in layers:
        check_layer(model, layer)
    if words is None:
        words = sorted(set.intersection(*(set(vectors[L]) for L in layers)))
    words = list(words)
    missing = [(L, w) for L in layers for w in words if w not in vectors[L]]
    if missing:
        raise KeyError(f"no vector for (layer, word) {missing[:5]}: extract them first")
    for L in layers:
        for w in words:
            if vectors[L][w].layer not in (None, L):
                raise ValueError(f"the vector of {w!r} given for layer {L} is from another layer")
    for c in conditions:
        if c not in CONDITIONS:
            raise KeyError(f"no condition {c!r}: use one of {list(CONDITIONS)}")
    if not words or not sentences or not conditions:
        raise ValueError("intentional_control() needs a word, a sentence and a condition")
    tok = tokenizer_of(model)
    if max_new_tokens is None:
        longest = max(len(tok(s, add_special_tokens=False)["input_ids"]) for s in sentences)
        max_new_tokens = longest + SLACK_TOKENS
    # unit vectors [layer, word, d_model]
    units = torch.stack(
        [
            torch.stack([vectors[L][w].vector / vectors[L][w].vector.norm() for w in words])
            for L in layers
        ]
    )
    rows = [(c, w, s) for c in conditions for w in words for s in sentences]
    names = [resid_post(L) for L in layers]
    device = next(model.parameters()).device
    stop = layers[-1] + 1 if layers[-1] + 1 < n_layers(model) else None
    prefilled = measure == "prefilled"
    out: list[dict[str, Any]] = []
    n_missed = 0
    for _, chunk in in_batches(rows, batch_size, label="intentional control"):
        prompts = [control_prompt(*r, prefilled=prefilled) for r in chunk]
        batch = encode(tok, prompts, device=device)
        pos = torch.arange(batch.length, device=device)
        if prefilled:
            ids, mask = batch.input_ids, batch.attention_mask
            span = batch.spans["sentence"]
            inside = ((pos[None] >= span[:, :1]) & (pos[None] < span[:, 1:])).float()
            replies, found = [s for _, _, s in chunk], [True] * len(chunk)
        else:
            gen = generate(model, batch, max_new_tokens=max_new_tokens, temperature=0.0)
            width = max(len(t) for t in gen.tokens)
            new = torch.full((len(chunk), width), tok.pad_token_id or 0, dtype=torch.long)
            inside = torch.zeros(len(chunk), batch.length + width)
            replies, found = [], []
            for j, (t, (_, _, s)) in enumerate(zip(gen.tokens, chunk)):
                new[j, : len(t)] = torch.tensor(t, dtype=torch.long)
                idx, ok = sentence_tokens(tok, t, s)
                inside[j, [batch.length + k for k in idx]] = 1.0
                replies.append(tok.decode(t))
                found.append(ok)
            # a row that stopped early is padded after its reply: later positions, never read
            ids = torch.cat([batch.input_ids, new.to(device)], 1)
            mask = torch.cat([batch.attention_mask, torch.ones_like(new).to(device)], 1)
            inside = inside.to(device)
            n_missed += found.count(False)
        kwargs = padded_kwargs(model, mask)
        with torch.no_grad():
            _, cache = model.run_with_cache(ids, stop_at_layer=stop, names_filter=names, **kwargs)
        word_idx = torch.tensor([words.index(w) for _, w, _ in chunk])
        for li, (L, name) in enumerate(zip(layers, names)):
            acts = cache[name].float()  # [b, pos, d]
            u = units[li, word_idx].to(acts.device)  # [b, d]
            proj = torch.einsum("bpd,bd->bp", acts, u)
            mean = (proj * inside).sum(-1) / inside.sum(-1)  # NaN for an empty reply
            for j, (c, w, s) in enumerate(chunk):
                out.append(
                    {
                        "condition": c,
                        "word": w,
                        "sentence": s,
                        "layer": L,
                        "projection": float(mean[j]),
                        "n_tokens": int(inside[j].sum()),
                        "measure": measure,
                        "reply": replies[j],
                        "sentence_found": found[j],
                    }
                )
        del cache
    if n_missed:
        logger.warning(
            "%d of %d replies do not contain their sentence: every token of those replies was "
            "read (sentence_found = False); filter them out to keep only written sentences",
            n_missed,
            len(rows),
        )
    return pd.DataFrame(out)


def control_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean projection per (measure, condition, layer), with its standard error and count
    (of the rows with a projection: an empty reply's NaN is left out).

    Example::

        control_summary(df).pivot(index="layer", columns="condition", values="mean")
    """
    keys = ["measure", "condition", "layer"] if "measure" in df else ["condition", "layer"]
    g = df.groupby(keys, sort=True)["projection"]
    return g.agg(mean="mean", sem="sem", n="count").reset_index()
