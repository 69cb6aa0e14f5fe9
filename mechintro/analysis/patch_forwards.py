"""The batched forwards of an activation-patching sweep (:mod:`mechintro.analysis.patching`).

A sweep's cells are rows of a few forwards: the source run's ``B`` rows first, then one
copy of the target's rows per cell (:func:`sweep`). Each hook of the sweep reads which of
its rows to patch from one mask buffer, written before each forward, and copies into them
the source rows' value at the same hook. So every forward runs the same hooks on tensors
that stay in place, and on a GPU the twin's forward is captured once as a CUDA graph and
replayed (:func:`graph_applies`), the capture kept for the next sweep of the same shape
(:func:`mechintro.engine.decode.keep`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechintro.analysis.patch_result import Cell, Sites
from mechintro.engine.decode import CaptureKey, Replay, addresses, load_slots, take
from mechintro.engine.decode import keep as store
from mechintro.engine.twin import full_mask, full_mask_applies, injected_on, twin_hooks, twin_logits
from mechintro.inject import Injection, StepPosition, injection_hooks
from mechintro.models import TLModel, forward
from mechintro.prompts import PromptBatch, positions

Metric = Callable[[Float[Tensor, "batch pos vocab"]], Float[Tensor, " batch"]]


def keep_of(metric: Metric) -> int:
    """transformers' ``logits_to_keep`` for ``metric``: 1 if marked by :func:`last_position`."""
    return 1 if getattr(metric, "last_position_only", False) else 0


def logits_of(model: TLModel, ids: Tensor, mask: Tensor, twin: Any = None, keep: int = 0) -> Tensor:
    """One forward on either backend or the bridge's twin, left padding handled (as
    ``mechintro.models.forward``); ``keep``: the logits of the last ``keep`` positions only (0: all;
    a HookedTransformer computes all)."""
    if twin is not None:
        return twin_logits(twin, ids, mask, keep)
    return forward(model, ids, mask, keep=keep)


Hooks = list[tuple[str | Callable[..., Any], Callable[..., Any]]]


def _hooks(model: TLModel, hooks: Hooks, twin: Any = None) -> AbstractContextManager[Any]:
    """``hooks`` registered on the model, or (``twin``) on its plain HF twin."""
    if twin is None:
        return model.hooks(fwd_hooks=hooks)
    return twin_hooks(model, twin, hooks)


def _tile(batch: PromptBatch, k: int) -> PromptBatch:
    """``batch`` repeated ``k`` times along rows (row ``i·B + b`` is prompt ``b``)."""
    return batch.rows(list(range(len(batch))) * k)


def check_metric(value: Any, rows: int) -> Tensor:
    if not isinstance(value, Tensor) or tuple(value.shape) != (rows,):
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(
            f"the metric must return one value per row (a tensor of shape ({rows},)), got "
            f"{shape}: reduce over positions and vocab, not over the batch"
        )
    return value.detach().float()


def _stack(source: PromptBatch, target: PromptBatch, k: int) -> PromptBatch:
    """The source rows, then the target's rows ``k`` times (row ``B + i·B + b`` is target
    prompt ``b``): one forward's batch (the two have equal lengths and padding, checked).
    A position or span named in one batch only is -1 (absent) in the other's rows."""
    tiled = _tile(target, k)

    def cat(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for name in sorted(set(a) | set(b)):
            like = a[name] if name in a else b[name]
            sa, sb = (len(source), *like.shape[1:]), (len(tiled), *like.shape[1:])
            out[name] = torch.cat(
                [a.get(name, like.new_full(sa, -1)), b.get(name, like.new_full(sb, -1))]
            )
        return out

    return PromptBatch(
        input_ids=torch.cat([source.input_ids, tiled.input_ids]),
        attention_mask=torch.cat([source.attention_mask, tiled.attention_mask]),
        texts=source.texts + tiled.texts,
        positions=cat(source.positions, tiled.positions),
        spans=cat(source.spans, tiled.spans),
    )


def _row_injections(
    rows: int, source_injection: Injection | None, target_injection: Injection | None, B: int
) -> list[Injection]:
    """Each injection on its own rows of a :func:`_stack` batch of ``rows`` rows (source:
    the first ``B``; target: the rest); the other rows get a zero vector, which leaves them
    unsteered."""
    injs = []
    for inj, part in ((source_injection, slice(0, B)), (target_injection, slice(B, None))):
        if inj is None:
            continue
        deltas = torch.zeros(rows, inj._delta.shape[-1])
        deltas[part] = inj.deltas(B).repeat(len(deltas[part]) // B, 1)
        injs.append(Injection(inj.layer, deltas, 1.0, mode=inj.mode, start=inj.start, unit="raw"))
    return injs


def _patch_hook(masks: Tensor, B: int) -> Callable[..., Tensor]:
    """Replace the masked entries (``masks[row, pos(, head)]``: one hook's part of the
    sweep's mask buffer) with the same forward's source rows (the first ``B``, never
    patched), tiled to every row."""

    def hook(x: Tensor, hook: Any) -> Tensor:
        m = masks.to(x.device).view(*masks.shape, *([1] * (x.ndim - masks.ndim)))
        return torch.where(m, x[:B].repeat(x.shape[0] // B, *[1] * (x.ndim - 1)), x)

    return hook


def graph_applies(twin: Any, target: PromptBatch, cuda_graph: bool | None) -> bool:
    """Whether the sweep's forwards replay a CUDA graph (see :func:`activation_patch`)."""
    able = (
        twin is not None
        and target.input_ids.device.type == "cuda"
        and full_mask_applies(twin, target.length)
    )
    if cuda_graph and not able:
        raise ValueError(
            "cuda_graph=True needs a CUDA device, a bridge running on its twin (fast=None or "
            "True, no hook left on the bridge), eager attention and no sliding window shorter "
            "than the prompts: pass cuda_graph=None to use it where it applies"
        )
    return able and cuda_graph is not False


def _cell_masks(sites: Sites, chunk: Sequence[Cell], B: int, like: Tensor) -> Tensor:
    """Which entries each row of one forward patches, per hook: ``like``'s shape, on the
    CPU (one copy to the device per forward); row ``B + i·B + b`` patches cell ``i``."""
    masks = torch.zeros(like.shape, dtype=torch.bool)
    index = {layer: j for j, layer in enumerate(sites.layers)}
    for i, (layer, p, h) in enumerate(chunk):
        where = (index[layer], slice(B + i * B, B + (i + 1) * B), slice(None) if p is None else p)
        masks[where if h is None else (*where, h)] = True
    return masks


@dataclass(eq=False)
class _Captured:
    """A patched forward of the twin captured as a CUDA graph, and the tensors its replay
    reads: the batch (token ids, 4D mask, positions), the patch masks and the injection
    hooks' vectors and bounds (``slots``). Kept for the next sweep of the same shape
    (:func:`mechintro.engine.decode.keep`), which writes its own into them."""

    ids: Tensor
    mask: Tensor
    pos: Tensor
    masks: Tensor
    slots: dict[int, tuple[Tensor, Tensor, Tensor]]
    replay: Replay

    def load(self, model: TLModel, twin: Any, batch: PromptBatch, injs: list[Injection]) -> None:
        self.ids.copy_(batch.input_ids)
        self.mask.copy_(full_mask(twin, batch.attention_mask))
        self.pos.copy_(positions(batch.attention_mask))
        if injs:
            load_slots(self.slots, injection_hooks(model, injs, batch)[1], len(batch))


@contextmanager
def _forwards(
    model: TLModel,
    sites: Sites,
    batch: PromptBatch,
    B: int,
    injections: tuple[Injection | None, Injection | None],
    twin: Any,
    keep: int,
    graph: bool,
) -> Iterator[tuple[Callable[[], Tensor], Tensor]]:
    """``(forward, masks)`` for the forwards of ``batch`` (a :func:`_stack` of the ``B``
    source rows and the target's): every call of ``forward`` runs it, steered and with the
    patch hooks reading ``masks`` (``[site layer, row, pos(, head)]``); returns its logits.

    On the twin where :func:`~mechintro.engine.twin.full_mask_applies`, every forward takes
    the 4D mask built once (:func:`~mechintro.engine.twin.full_mask`), captured or not: the
    same kernels on both paths. ``graph``: the first call runs eagerly (the hooks make their
    device tensors), the second is captured as a CUDA graph, every later one replays it
    (returning the same tensor, overwritten). A capture kept from an earlier sweep of the
    same shape, on the same tensors, replays from the first call with this batch and these
    vectors written in.
    """
    injs = _row_injections(len(batch), *injections, B)
    heads = () if sites.heads is None else (int(model.cfg.n_heads),)
    shape = (len(sites.layers), len(batch), batch.length, *heads)
    key = None
    if graph:
        roles = tuple(None if i is None else i.layer for i in injections)
        what = (shape, sites.hook, sites.layers, keep, roles, B)
        key = CaptureKey("forward", what, addresses(twin))
        held = take(twin, key)
        if held is not None:
            held.load(model, twin, batch, injs)
            yield held.replay, held.masks
            store(twin, key, held)
            return
    masks = torch.zeros(shape, dtype=torch.bool, device=batch.input_ids.device)
    hooks: Hooks = [(n, _patch_hook(masks[j], B)) for j, n in enumerate(sites.hook_names())]
    step = StepPosition(torch.zeros(1, dtype=torch.long)) if graph else None
    steer = injected_on(model, twin, injs, batch, step=step) if injs else nullcontext()
    with steer, _hooks(model, hooks, twin):
        if twin is None or not full_mask_applies(twin, batch.length):
            yield lambda: logits_of(model, batch.input_ids, batch.attention_mask, twin, keep), masks
            return
        # on the twin, eager or captured, the same 4D mask: the same kernels either way (with
        # grouped attention transformers builds none for an unpadded batch, whose causal
        # kernel rounds otherwise than the masked one)
        ids = batch.input_ids.clone() if graph else batch.input_ids  # a graph's own buffer
        pos = positions(batch.attention_mask)
        mask = full_mask(twin, batch.attention_mask)
        ref = weakref.ref(twin)  # a kept capture must not keep its model alive

        def fn() -> Tensor:
            out = ref()(
                ids,
                attention_mask=mask,
                position_ids=pos,
                use_cache=False,  # type: ignore[misc]
                logits_to_keep=keep,
            )
            return out.logits

        if not graph:
            yield fn, masks
            return
        assert step is not None
        entry = _Captured(ids, mask, pos, masks, step.slots, Replay(fn, True, ids.device))
        yield entry.replay, masks  # its first call runs eagerly, its second is captured
    if entry.replay.graph is not None and key is not None:
        store(twin, key, entry)


@torch.no_grad()
def sweep(
    model: TLModel,
    sites: Sites,
    source: PromptBatch,
    target: PromptBatch,
    chunks: Sequence[Sequence[Cell]],
    injections: tuple[Injection | None, Injection | None],
    metric: Metric,
    twin: Any = None,
    graph: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One forward per chunk of cells: its first ``B`` rows are the source run, row
    ``B + i·B + b`` patches cell ``i`` of target prompt ``b`` from them, and the first
    forward carries the unpatched target run after its cells. A site's source value is
    computed in the same forward, at the same hook, before any patched row reads it: no
    source cache, and no forward of its own. Every hook of the sweep reads its rows' masks
    from one buffer written before each forward, so every forward runs the same hooks
    (``graph``: the same kernels, replayed from one CUDA graph; each forward then has the
    rows of the largest, the last padded with unpatched rows).
    Returns the source metric ``[B]``, the target's ``[B]`` and the cells' ``[cells, B]``.
    """
    B = len(target)
    slots = [len(chunks[0]) + 1, *(len(c) for c in chunks[1:])]  # cells (+ target) per forward
    if graph:
        slots = [max(slots)] * len(slots)
    keep, values = keep_of(metric), []
    for k, group in groupby(zip(slots, chunks, strict=True), key=lambda sc: sc[0]):
        batch = _stack(source, target, k)
        with _forwards(model, sites, batch, B, injections, twin, keep, graph) as (forward, masks):
            for _, chunk in group:
                masks.copy_(_cell_masks(sites, chunk, B, masks))
                value = check_metric(metric(forward()), (k + 1) * B)
                values.append(value.clone().view(k + 1, B))  # a replay overwrites logits
    tgt = values[0][len(chunks[0]) + 1]
    cells = torch.cat([v[1 : len(c) + 1] for v, c in zip(values, chunks, strict=True)])
    return values[0][0], tgt, cells
