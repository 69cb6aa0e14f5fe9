"""Intentional control of internal states (Lindsey 2025; docs/protocols.md §6).

Can a model raise or lower the representation of a concept on request? The model is asked to
write a sentence while thinking, or not thinking, about a word, or is promised a reward or a
punishment for thinking about it; the sentence itself never mentions the word. We measure
how strongly the residual stream points along the word's concept vector while the sentence is
written. Lindsey found think > don't think > baseline, and reward > punishment.

Here the sentence is the assistant reply, prefilled (so one forward pass reads it, no
sampling), and marked: the measure is the **scalar projection** ``h · v/‖v‖`` of the output of
block ℓ (``blocks.ℓ.hook_resid_post``) on that layer's concept vector of the word, averaged
over the sentence's tokens in the reply (the ``sentence`` span; its copy in the instruction is
not used), for every layer given.

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
from typing import TYPE_CHECKING, Any

from mechintro.batching import in_batches
from mechintro.prompts import Prompt

if TYPE_CHECKING:
    import pandas as pd

    from mechintro.models import TLModel
    from mechintro.vectors import ConceptVector

logger = logging.getLogger(__name__)

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


def control_prompt(condition: str, word: str, sentence: str = SENTENCES[0]) -> Prompt:
    """The instruction of ``condition`` about ``word``, with ``sentence`` as the prefilled
    reply, marked ``sentence`` (the reply, the last occurrence)."""
    if condition not in CONDITIONS:
        raise KeyError(f"no condition {condition!r}: use one of {list(CONDITIONS)}")
    if not sentence.strip() or not word.strip():
        raise ValueError("the sentence and the word must be non-empty")
    text = CONDITIONS[condition].format(sentence=sentence, word=word)
    return Prompt.chat(text, system="", prefill=sentence, marks={"sentence": sentence})


def intentional_control(
    model: TLModel,
    vectors: Mapping[int, Mapping[str, ConceptVector]],
    *,
    words: Sequence[str] | None = None,
    sentences: Sequence[str] = SENTENCES,
    conditions: Sequence[str] = tuple(CONDITIONS),
    batch_size: int = 32,
) -> pd.DataFrame:
    """Projection of the residual stream on each word's vector while the sentence is written.

    Args:
        vectors: ``{layer: {word: ConceptVector}}``: every layer to read, each with the
            word's vector taken at that layer.
        words: the words (default: those present at every layer).
        conditions: names from :data:`CONDITIONS`.

    One forward pass per batch of prompts, caching only the ``hook_resid_post`` of the given
    layers (``run_with_cache`` with a names filter, stopped after the last of them).

    Returns a DataFrame, one row per (condition, word, sentence, layer): ``projection`` (the
    mean over the sentence tokens of ``h · v/‖v‖``) and ``n_tokens``.
    """
    import pandas as pd
    import torch

    from mechintro.models import check_layer, n_layers, padded_kwargs, resid_post, tokenizer_of
    from mechintro.prompts import encode

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
    out: list[dict[str, Any]] = []
    for _, chunk in in_batches(rows, batch_size, label="intentional control"):
        batch = encode(tokenizer_of(model), [control_prompt(*r) for r in chunk], device=device)
        kwargs = padded_kwargs(model, batch.attention_mask)
        with torch.no_grad():
            _, cache = model.run_with_cache(
                batch.input_ids, stop_at_layer=stop, names_filter=names, **kwargs
            )
        span = batch.spans["sentence"]
        pos = torch.arange(batch.length, device=device)
        inside = ((pos[None] >= span[:, :1]) & (pos[None] < span[:, 1:])).float()  # [b, pos]
        word_idx = torch.tensor([words.index(w) for _, w, _ in chunk])
        for li, (L, name) in enumerate(zip(layers, names)):
            acts = cache[name].float()  # [b, pos, d]
            u = units[li, word_idx].to(acts.device)  # [b, d]
            proj = torch.einsum("bpd,bd->bp", acts, u)
            mean = (proj * inside).sum(-1) / inside.sum(-1)
            for j, (c, w, s) in enumerate(chunk):
                out.append(
                    {
                        "condition": c,
                        "word": w,
                        "sentence": s,
                        "layer": L,
                        "projection": float(mean[j]),
                        "n_tokens": int(inside[j].sum()),
                    }
                )
        del cache
    return pd.DataFrame(out)


def control_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean projection per (condition, layer), with its standard error and count.

    Example::

        control_summary(df).pivot(index="layer", columns="condition", values="mean")
    """
    g = df.groupby(["condition", "layer"], sort=True)["projection"]
    return g.agg(mean="mean", sem="sem", n="count").reset_index()
