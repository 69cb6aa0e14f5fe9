"""Top-activating examples of transcoder features: what a graph viewer shows on a click.

For a set of features and a batch of prompts (run with the transcoders spliced in, optionally
steered by an :class:`~mechintro.inject.Injection`), :func:`contexts` keeps, per feature, the
``k`` prompts where it fires most (one context per prompt: the window of tokens around its
strongest position, with the feature's activation on every token of it), and every nonzero
activation it had (for the quantiles and the histogram). :func:`feature_examples` gathers
one or more such runs, as named sections, into a :class:`~circuits.viewer.FeatureExamples`
per feature, with the tokens its decoder direction promotes and suppresses most through the
unembedding (``W_dec[f] · W_U``, as a feature's "top logits" are read in circuit-tracer and
Neuronpedia). Both viewers read the files :func:`circuits.viewer.to_viewer_json` writes from
them.

Example::

    from circuits.examples import contexts, feature_examples

    plain = contexts(model, tcs, encode(tok, prompts), [(4, 689), (5, 82)])
    steered = contexts(model, tcs, batch, [(4, 689), (5, 82)], injection=inj)
    cards = feature_examples(model, tcs, {"plain prompts": plain, "steered": steered}, "organism")
    graph.to_viewer_json("viewer", slug="horse", features=cards)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from circuits.trace import Trace, trace
from circuits.viewer import Example, FeatureExamples
from mechintro.analysis.transcoders.analysis import as_layers
from mechintro.batching import check_batch_size, in_batches
from mechintro.inject import Injection
from mechintro.models import TLModel, tokenizer_of
from mechintro.prompts import PromptBatch

Feature = tuple[int, int]
"""``(layer, feature)``."""


@dataclass(frozen=True)
class Contexts:
    """Where some features fire over one batch of prompts.

    Attributes:
        examples: ``(layer, feature)`` → up to ``k`` examples, strongest first (one per prompt).
        activations: ``(layer, feature)`` → its nonzero activations over the tokens counted.
        n_tokens: Tokens counted (real, unpadded ones, from ``start`` on).
    """

    examples: dict[Feature, tuple[Example, ...]]
    activations: dict[Feature, tuple[float, ...]]
    n_tokens: int


class _Decoder:
    """Token id → decoded text, each id decoded once."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.seen: dict[int, str] = {}

    def __call__(self, ids: Sequence[int]) -> list[str]:
        for i in ids:
            if i not in self.seen:
                self.seen[i] = self.tokenizer.decode([i])
        return [self.seen[i] for i in ids]


def _rows(injection: Injection | None, index: list[int]) -> Injection | None:
    """``injection`` for the rows ``index`` of its batch (one built for any batch as is)."""
    if injection is None or injection.rows is None:
        return injection
    v, s = torch.as_tensor(injection.vector), torch.as_tensor(injection.strength)
    return replace(
        injection,
        vector=v[index] if v.ndim == 2 else v,
        strength=s[index] if s.ndim == 1 else injection.strength,
    )


def contexts(
    model: TLModel,
    transcoders: Any,
    batch: PromptBatch,
    features: Iterable[Feature],
    *,
    injection: Injection | None = None,
    run: Trace | None = None,
    start: str | None = None,
    k: int = 10,
    before: int = 24,
    after: int = 8,
    batch_size: int = 16,
) -> Contexts:
    """The top-``k`` contexts of each of ``features`` over ``batch`` (module docstring): a
    context is the ``before`` tokens before the strongest position of a prompt, that position
    and up to ``after`` tokens after it; a context that several prompts share (the same
    tokens and activations) is kept once. Prompts where the feature never fires give none.
    ``start``: a named position of ``batch`` (e.g. ``"trial"``, where a from-trial injection
    begins); only the tokens from there on count (the peaks, the activations, ``n_tokens``),
    though a context may show tokens before it.
    ``run``: the :func:`~circuits.trace.trace` of ``batch`` (with ``injection``) when the
    caller has it already; else the batch runs here, ``batch_size`` prompts at a time.

    Raises:
        ValueError: A feature of a layer without a transcoder, or an index past its width;
            ``k``, ``before`` or ``after`` negative.
    """
    if min(k, before, after) < 0:
        raise ValueError(f"k, before and after must be >= 0, got {k}, {before}, {after}")
    check_batch_size(batch_size)
    tcs = as_layers(model, transcoders)
    wanted = sorted(set(features))
    for L, f in wanted:
        if L not in tcs:
            raise ValueError(f"feature {f} of layer {L}: no transcoder there (have {sorted(tcs)})")
        if not 0 <= f < tcs[L].W_dec.shape[0]:
            raise ValueError(
                f"feature {f} of layer {L}: the transcoder has {tcs[L].W_dec.shape[0]}"
            )
    decode = _Decoder(tokenizer_of(model))
    layers = sorted({L for L, _ in wanted})
    per_prompt: dict[Feature, list[tuple[float, Example]]] = {x: [] for x in wanted}
    active: dict[Feature, list[float]] = {x: [] for x in wanted}
    n_tokens = 0
    parts = [(batch, run)] if run is not None else []
    if run is None:
        for _, index in in_batches(range(len(batch)), batch_size):
            rows = batch.rows(list(index))
            inj = _rows(injection, list(index))
            parts.append((rows, trace(model, {L: tcs[L] for L in layers}, rows, injection=inj)))
    for rows, tr in parts:
        mask = rows.attention_mask.bool().cpu()
        firsts = (rows.position(start) if start is not None else rows.n_pad).cpu()
        for b in range(len(rows)):
            real = mask[b].nonzero().flatten()
            ids = rows.input_ids[b, real].tolist()
            first = int(firsts[b]) - int(real[0])  # in the row's own (unpadded) indices
            n_tokens += len(ids) - first
            for L in layers:
                acts_L = tr.acts[L][b].detach().float().cpu()[real]
                for f in (f for M, f in wanted if M == L):
                    a = acts_L[:, f]
                    counted = a[first:]
                    nz = counted[counted > 0]
                    if not len(nz):
                        continue
                    active[(L, f)].extend(nz.tolist())
                    peak = first + int(counted.argmax())
                    lo, hi = max(0, peak - before), min(len(ids), peak + after + 1)
                    ex = Example(decode(ids[lo:hi]), a[lo:hi].tolist(), peak - lo)
                    per_prompt[(L, f)].append((float(a[peak]), ex))
    examples = {}
    for x, found in per_prompt.items():
        kept: dict[tuple[tuple[str, ...], tuple[float, ...]], Example] = {}
        for _, ex in sorted(found, key=lambda p: -p[0]):
            key = (tuple(ex.tokens), tuple(round(a, 5) for a in ex.acts))
            if key not in kept and len(kept) < k:  # prompts that share the context: once
                kept[key] = ex
        examples[x] = tuple(kept.values())
    return Contexts(examples, {x: tuple(v) for x, v in active.items()}, n_tokens)


def feature_examples(
    model: TLModel,
    transcoders: Any,
    sections: Mapping[str, Contexts],
    name: str,
    *,
    n_logits: int = 8,
) -> list[FeatureExamples]:
    """One :class:`~circuits.viewer.FeatureExamples` per feature of ``sections`` (named runs
    of :func:`contexts` over the same features), with the statistics over all of them and the
    ``n_logits`` tokens its decoder direction promotes and suppresses most; ``name`` names the
    transcoder set (``"{name}/L{layer}"``)."""
    if not sections:
        raise ValueError("give at least one section of contexts")
    tcs = as_layers(model, transcoders)
    features = sorted({x for s in sections.values() for x in s.examples})
    decode = _Decoder(tokenizer_of(model))
    W_U = model.W_U.detach().float().cpu()
    cards = []
    for L, f in features:
        direction = tcs[L].W_dec[f].detach().float().cpu() @ W_U
        top = torch.topk(direction, n_logits).indices.tolist()
        bottom = torch.topk(-direction, n_logits).indices.tolist()
        cards.append(
            FeatureExamples(
                layer=L,
                feature=f,
                transcoder=f"{name}/L{L}",
                sections={s: c.examples.get((L, f), ()) for s, c in sections.items()},
                top_logits=tuple(decode(top)),
                bottom_logits=tuple(decode(bottom)),
                activations=tuple(a for c in sections.values() for a in c.activations[(L, f)]),
                n_tokens=sum(c.n_tokens for c in sections.values()),
            )
        )
    return cards
