"""One forward with transcoders spliced in: feature activations, the Yes/No readouts, edits.

Every circuit analysis runs the model with its MLPs replaced by transcoders plus their error
terms (:func:`mechintro.analysis.transcoders.splice`), so the logits are the model's own and each
feature is a variable one can read, ablate or set. :func:`trace` does that for a batch of
prompts (optionally steered by an :class:`~mechintro.inject.Injection`, optionally with the
features edited) and returns a :class:`Trace`: activations per layer at every position, the
linear logit difference ``gap`` (mean Yes-variant logit minus mean No-variant logit, the
quantity direct logit attribution decomposes) and Godet's belief ``b`` (logsumexp over the
Yes variants minus over the No variants) at the readout position. A row is *detected* when
``b > 0``: the model's first reply token is more likely a Yes than a No.

Feature sets are ``{layer: [feature, ...]}``; :func:`set_features` builds the edit that
replaces a set's values with those of another run (the unsteered run for an ablation, the
steered run for a patch), position by position, the decoded change landing in the MLP's
output space (docs/protocols.md §7: one anchor added it to the MLP input, a bug).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechintro.analysis.dla import LogitDirection, logit_direction
from mechintro.analysis.transcoders import Transcoder, splice
from mechintro.analysis.transcoders.analysis import as_layers
from mechintro.inject import Injection, injected
from mechintro.models import TLModel, tokenizer_of
from mechintro.models import forward as models_forward
from mechintro.prompts import PromptBatch, PromptLike, as_prompt_batch
from mechintro.tokens import Belief

FeatureSet = Mapping[int, Sequence[int]]
Edit = Callable[[int, Tensor], Tensor]


@dataclass(frozen=True, eq=False)
class Trace:
    """What one spliced forward saw. ``acts[L]``: ``[batch, pos, d_sae]`` feature activations
    (before any edit), ``pre[L]`` their pre-activations; ``gap``, ``b``: ``[batch]`` at the
    readout position ``pos`` (per row)."""

    acts: dict[int, Tensor]
    pre: dict[int, Tensor]
    gap: Tensor
    b: Tensor
    pos: Tensor

    @property
    def detected(self) -> Tensor:
        """``b > 0`` per row: the first reply token leans Yes."""
        return self.b > 0

    def at_readout(self, layer: int) -> Tensor:
        """``[batch, d_sae]`` activations at each row's readout position."""
        a = self.acts[layer]
        return a[torch.arange(a.shape[0]), self.pos.to(a.device)]


def transcoder_layers(
    model: TLModel, transcoders: Any, after: int | None = None
) -> dict[int, Transcoder]:
    """``{layer: Transcoder}``; with ``after``, only blocks whose MLP reads the residual
    stream downstream of an injection at block ``after``'s output (``layer > after``)."""
    tcs = as_layers(model, transcoders)
    if after is not None:
        tcs = {L: tc for L, tc in tcs.items() if after < L}
        if not tcs:
            raise ValueError(
                f"no transcoder after the injection layer {after}: an MLP at or before it does "
                "not see the injected vector; give transcoders for later blocks"
            )
    return tcs


def readouts(
    model: TLModel, logits: Tensor, pos: Tensor, direction: LogitDirection | None = None
) -> tuple[Tensor, Tensor]:
    """``(gap, b)`` per row from ``logits [batch, pos, vocab]`` at ``pos``."""
    direction = direction if direction is not None else logit_direction(model)
    last = logits[torch.arange(logits.shape[0], device=logits.device), pos.to(logits.device)]
    last = last.float()
    gap = last @ direction.weights(last.shape[-1]).to(last.device)
    return gap, Belief.of(tokenizer_of(model))(last)


def forward(model: TLModel, batch: PromptBatch) -> Tensor:
    """Logits of a left-padded batch on either backend (positions counted from each row's
    first real token, as generation does)."""
    return models_forward(model, batch.input_ids, batch.attention_mask)


def trace(
    model: TLModel,
    transcoders: Any,
    batch: PromptLike,
    *,
    injection: Injection | None = None,
    edit: Edit | None = None,
    direction: LogitDirection | None = None,
    position: str = "last",
    grad: bool = False,
) -> Trace:
    """Run ``batch`` with the transcoders spliced in (error terms kept, so the unedited
    logits are the model's), steered by ``injection`` and edited by ``edit``."""
    batch = as_prompt_batch(getattr(model, "tokenizer", None), batch)
    device = next(model.parameters()).device
    batch = batch.to(device)
    ctx = injected(model, injection, batch) if injection is not None else nullcontext()
    with torch.set_grad_enabled(grad), ctx, splice(model, transcoders, edit=edit) as st:
        logits = forward(model, batch)
    pos = batch.position(position)
    gap, b = readouts(model, logits, pos, direction)
    tcs = as_layers(model, transcoders)
    pre = {L: tcs[L].to(device).pre_acts(st.x[L]) for L in st.x}
    return Trace(dict(st.acts), pre, gap, b, pos)


def set_features(features: FeatureSet, values: Mapping[int, Tensor]) -> Edit:
    """An edit that sets the features of ``features`` to ``values[L][..., f]`` (a trace's
    ``acts``: same batch, same positions) and leaves every other feature as computed."""
    index = {L: torch.as_tensor(list(fs), dtype=torch.long) for L, fs in features.items()}

    def edit(layer: int, acts: Tensor) -> Tensor:
        idx = index.get(layer)
        if idx is None or idx.numel() == 0:
            return acts
        src = values[layer].to(device=acts.device, dtype=acts.dtype)
        if src.shape != acts.shape:
            raise ValueError(
                f"layer {layer}: replacement values {tuple(src.shape)} do not match the run's "
                f"{tuple(acts.shape)}: trace the same prompts"
            )
        idx = idx.to(acts.device)
        return acts.index_copy(-1, idx, src.index_select(-1, idx))

    return edit


def zero_features(features: FeatureSet) -> Edit:
    """An edit that zeroes the features of ``features`` at every position."""
    index = {L: torch.as_tensor(list(fs), dtype=torch.long) for L, fs in features.items()}

    def edit(layer: int, acts: Tensor) -> Tensor:
        idx = index.get(layer)
        if idx is None or idx.numel() == 0:
            return acts
        return acts.index_fill(-1, idx.to(acts.device), 0.0)

    return edit


def check_features(features: FeatureSet, transcoders: Mapping[int, Transcoder]) -> None:
    """Refuse a feature set naming a layer without a transcoder or an index out of range."""
    for L, fs in features.items():
        if L not in transcoders:
            raise ValueError(f"no transcoder for layer {L}: layers are {sorted(transcoders)}")
        bad = [f for f in fs if not 0 <= int(f) < transcoders[L].d_sae]
        if bad:
            top = transcoders[L].d_sae - 1
            raise ValueError(f"layer {L}: features {bad[:5]} out of range 0..{top}")
