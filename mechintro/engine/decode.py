"""Decode steps in place: a static KV cache, step buffers, and CUDA graphs kept for reuse.

:func:`mechintro.generation.generate` decodes on a bridge's plain HF twin through a
transformers ``StaticCache`` (:func:`make_static_cache`) whose layers keep their length in
tensors (:func:`in_place`), with the step's token, 4D attention mask and position ids in
buffers written in place: one decode step can then be captured as a CUDA graph and replayed
for every later token (:class:`Replay`). A small model's decode is bound by launching its
kernels from Python; a replay launches them all at once.

Capturing costs about two eager forwards (record, then instantiate), once per call of
``generate``: a sweep's batches of one shape would each pay it. So the step is kept
(:class:`Captured`, :func:`take`, :func:`keep`, under a :class:`CaptureKey`; with or
without a graph), with the static
cache, the buffers and the tensors its injection hooks steer with (``StepPosition.slots``):
a later call of the same shape resets the cache (:func:`reset`), writes its own batch into
the buffers and its own vectors and bounds into the slots, and replays the same graph,
which reads only those tensors (without a graph, its own hooks run as usual). The shared
preamble's one-row KV cache is kept with it (:class:`Preamble`): a call whose preamble has
the same tokens, on weights unchanged since (:func:`weights_version`), copies it to every row
instead of running it. The same kernels on the same inputs: the same logits as a fresh
capture (a GPU test checks them against eager steps). One step is kept per twin, and
dropped when a call of another shape starts: it holds its KV cache (gemma3-1b at batch 64
and 160 positions: 270 MB; a 7B of 32 KV heads: 5.4 GB), which the next call's memory plan
expects to be free.
:func:`forget` drops it (``run_sweep`` does before it plans ``batch_size='auto'``). A
patching sweep's captured forward is kept in the same cache, under its own kind of key. A kept
capture's key includes where every weight lives (:func:`addresses`): its kernels read them
there.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechintro.engine.attention import GROUPED
from mechintro.inject import InjectionLog, StepPosition
from mechintro.models import version


def make_static_cache(config: Any, cache_len: int) -> Any:
    """A transformers ``StaticCache`` of ``cache_len`` positions, as in place as it can be.

    A sliding-window layer whose window is at least ``cache_len`` never slides: it becomes a
    plain ``StaticLayer`` of the same size, which computes the same keys, values and masks
    but reads its length from a tensor rather than a Python int (a CUDA graph replays the
    tensor's updates, not the int's). :func:`in_place` says whether every layer is such.
    """
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer

    cache = StaticCache(config=config, max_cache_len=cache_len)
    layers: list[Any] = cache.layers
    for i, layer in enumerate(layers):
        if isinstance(layer, StaticSlidingWindowLayer) and layer.max_cache_len == cache_len:
            layers[i] = StaticLayer(max_cache_len=cache_len)
    return cache


def in_place(cache: Any) -> bool:
    """Whether every layer of ``cache`` keeps its state in tensors (no Python counter): not
    so for a window shorter than the cache, or linear-attention and indexed layers."""
    from transformers.cache_utils import StaticLayer

    return all(type(layer) is StaticLayer for layer in cache.layers)


#: one capture stream per device
_CAPTURE_STREAMS: dict[torch.device, Any] = {}


class Replay:
    """``fn()`` on each call, or (``capture``) from a CUDA graph: the first call runs
    eagerly, the second is captured and replayed, every later one replays. ``fn`` must read
    and write only tensors that stay where they are (the decode step's buffers and its static
    KV cache); its output is then overwritten by each replay. Both run on one side stream per
    device; the eager first call makes every lazy initialisation happen outside the capture
    (the stream's cuBLAS workspace; a compiled norm's kernel for a new shape,
    :mod:`mechintro.engine.norms`). ``torch.cuda.graph``'s garbage collection and cache
    emptying before each capture are left out (they cost more than a small model's whole
    decode).
    """

    def __init__(self, fn: Callable[[], Tensor], capture: bool, device: torch.device) -> None:
        self.fn, self.capture, self.device = fn, capture, device
        self.graph: Any = None
        self.out: Tensor | None = None
        self.cold = True  # the next call runs eagerly

    def __call__(self) -> Tensor:
        if not self.capture:
            return self.fn()
        if self.graph is None:
            if self.device not in _CAPTURE_STREAMS:
                _CAPTURE_STREAMS[self.device] = torch.cuda.Stream(self.device)
            side = _CAPTURE_STREAMS[self.device]
            here = torch.cuda.current_stream(self.device)
            side.wait_stream(here)
            with torch.cuda.stream(side):
                if self.cold:
                    out = self.fn()
                    self.cold = False
                    here.wait_stream(side)
                    return out
                graph = torch.cuda.CUDAGraph()
                graph.capture_begin()
                try:
                    self.out = self.fn()
                finally:
                    graph.capture_end()
            here.wait_stream(side)
            self.graph = graph
        self.graph.replay()
        assert self.out is not None
        return self.out


#: attention implementations whose 4D mask the decode step builds (grouped: as for sdpa)
MASKS = ("eager", "sdpa", GROUPED)


def repeat_rows(cache: Any, rows: int) -> Any:
    """A one-row KV cache (dynamic or static) repeated to ``rows`` rows."""
    from transformers import StaticCache

    if not isinstance(cache, StaticCache):
        cache.batch_repeat_interleave(rows)
        return cache
    layers: list[Any] = cache.layers
    for layer in layers:
        layer.keys = layer.keys.repeat(rows, 1, 1, 1)
        layer.values = layer.values.repeat(rows, 1, 1, 1)
        layer.batch_size = rows
    return cache


def reset(cache: Any) -> None:
    """Empty a static cache in place (zeros, length 0: as freshly made), keeping its tensors."""
    for layer in cache.layers:
        if getattr(layer, "is_initialized", False):
            layer.keys.zero_()
            layer.values.zero_()
            layer.cumulative_length.zero_()


def weights_version(module: torch.nn.Module) -> tuple[tuple[int, object], ...]:
    """Where each parameter's data lives and how often it was changed in place: any change
    to the weights (an optimiser step, ``.data`` replaced, ``.to()``) changes it (weights
    made under ``torch.inference_mode`` count no changes: then it equals nothing)."""
    return tuple((p.data_ptr(), version(p)) for p in module.parameters())


@dataclass(eq=False)
class Preamble:
    """The one-row KV cache of a shared preamble (per layer: keys, values, length), with
    ``key``: its token ids and the :func:`weights_version` it was computed with."""

    key: tuple[Any, ...]
    layers: list[tuple[Tensor, Tensor, Tensor]]

    @classmethod
    def of(cls, key: tuple[Any, ...], one: Any) -> Preamble:
        layers = one.layers
        return cls(
            key, [(x.keys.clone(), x.values.clone(), x.cumulative_length.clone()) for x in layers]
        )

    def fill(self, cache: Any) -> None:
        """Write it into every row of ``cache`` (a static cache whose layers exist)."""
        for dst, (keys, values, length) in zip(cache.layers, self.layers, strict=True):
            dst.keys.copy_(keys.expand_as(dst.keys))
            dst.values.copy_(values.expand_as(dst.values))
            dst.cumulative_length.copy_(length)


@dataclass(eq=False)
class Captured:
    """A captured decode step with everything its replay reads (see the module's doc), and
    the last shared preamble computed for it (a call with the same preamble tokens and
    unchanged weights copies it instead of running it again)."""

    cache: Any
    buffers: tuple[Tensor, Tensor, Tensor]  # token ids, 4D attention mask, position ids
    step: StepPosition
    replay: Replay
    preamble: Preamble | None = None

    def load(self, log: InjectionLog | None, batch: int) -> None:
        """Write a new call's injection vectors and bounds where the hooks' replay reads."""
        load_slots(self.step.slots, log, batch)


def load_slots(
    slots: dict[int, tuple[Tensor, Tensor, Tensor]], log: InjectionLog | None, batch: int
) -> None:
    """Write the vectors and bounds of ``log``'s injections (for ``batch`` rows) into the
    tensors captured injection hooks read (:attr:`StepPosition.slots`)."""
    if log is None:
        return
    for i, (d, lo, hi) in slots.items():
        d.copy_(log.injections[i].deltas(batch))
        lo.copy_(log.bounds[i][0])
        hi.copy_(log.bounds[i][1])


@dataclass(frozen=True)
class CaptureKey:
    """What a kept capture was made for; only a call with an equal key may replay it.

    ``kind``: ``"decode"`` (a generation step) or ``"forward"`` (a patching forward), one of
    each kept per twin; ``shape``: everything the capture's kernels were recorded for (batch,
    lengths, dtype, attention, injection layers, ...); ``addresses``: where the module's
    weights live (:func:`addresses`), which a graph reads.
    """

    kind: str
    shape: tuple[Any, ...]
    addresses: tuple[int, ...]


#: per twin, per kind: the last capture kept and its key (the one cache of captures)
_CAPTURES: weakref.WeakKeyDictionary[Any, dict[str, tuple[CaptureKey, Any]]] = (
    weakref.WeakKeyDictionary()
)


def take(twin: Any, key: CaptureKey) -> Any:
    """The capture of ``key.kind`` kept for ``twin`` if its key equals ``key``, taken out
    while in use (:func:`keep` gives it back); else None. One of another key is dropped:
    the call about to make its own then has the memory that
    :func:`mechintro.memory.plan_batch` budgeted for it."""
    held = _CAPTURES.get(twin, {}).pop(key.kind, None)
    return held[1] if held is not None and held[0] == key else None


def held(twin: Any, kind: str = "decode") -> Any:
    """The capture of ``kind`` kept for ``twin`` now (None if none), left where it is."""
    got = _CAPTURES.get(twin, {}).get(kind)
    return None if got is None else got[1]


def keep(twin: Any, key: CaptureKey, entry: Any) -> None:
    """Keep ``entry`` for the next call with key ``key`` (one per twin and kind)."""
    _CAPTURES.setdefault(twin, {})[key.kind] = (key, entry)


def addresses(module: torch.nn.Module) -> tuple[int, ...]:
    """Where each parameter and buffer of ``module`` lives, which a captured graph reads:
    part of a kept capture's key (after ``.to()`` and back, they live elsewhere)."""
    return tuple(t.data_ptr() for t in (*module.parameters(), *module.buffers()))


def forget(twin: Any | None = None) -> None:
    """Drop the kept captures (of ``twin``, or all) and the GPU memory they hold."""
    if twin is None:
        _CAPTURES.clear()
    else:
        _CAPTURES.pop(twin, None)
