"""Activation patching, batched, and attribution patching as the fast screen.

**What patching is.** Run the model twice: a *source* run and a *target* run, differing in
one thing (here usually a concept injection, or two prompts of equal token length). Then
re-run the target, replacing one activation (one *site*: a component at a layer and a
position) with its value from the source run, and read a metric on the logits. If the
metric moves from its target value to its source value, that site carries the difference
(Meng et al. 2022; Heimersheim & Nanda 2024, "How to use and interpret activation patching").

**Knock-out and knock-in** (Macar et al. 2026, docs/protocols.md §7). With a steered and an
unsteered run of the same prompt:

* knock-out (:func:`knock_out`): target = steered, source = unsteered. Restoring a site's
  unsteered value and losing the steered behaviour means the steering acts *through* it
  (the site is necessary);
* knock-in (:func:`knock_in`): target = unsteered, source = steered. Writing a site's steered
  value into an unsteered run and getting the steered behaviour means it *suffices*.

The metric is any callable ``logits[batch, pos, vocab] -> [batch]``; the default,
:func:`yes_no_gap`, is the Yes/No logit gap at the last prompt token (logsumexp over the Yes
variants minus the No variants: ``readout(...).b_variants``).

**Sites** (:data:`COMPONENTS`; the name is recorded in the result): ``resid_pre``,
``resid_mid``, ``resid_post`` (the residual stream; ``resid_mid`` on HookedTransformer only:
the bridge's is the pre-MLP norm's input, and writing it leaves the carried residual as it
was), ``attn_out`` and ``mlp_out`` (TL's
``hook_attn_out``/``hook_mlp_out``: what the block adds to the residual stream), ``head``
(one head's ``attn.hook_z``, before ``W_O``), and ``attn_module_out``/``mlp_module_out``.
Gemma 2/3 (and OLMo-2) normalise each module's output before adding it (the
post-attention / post-feedforward norms), so their ``hook_mlp_out`` is *after* that norm.
Macar et al. take Gemma's module outputs *before* the post-norms: that is
``mlp_module_out`` (``blocks.L.mlp.hook_out``), which exists on the bridge only. For a
whole-vector patch the two sites give the same result (the norm acts on each position's
vector alone); they differ for partial writes (feature ablation, transcoder outputs) and
for attribution patching, whose gradient goes through the norm at one site and not at the
other. On models without post-norms the two names are the same hook.

Positions are ``"each"`` (one cell per token), ``"all"`` (one cell patching every position
at once) or a list of indices / named positions of the batch (``"trial"``, ``"last"``).

**Batched.** Every cell of a sweep is one row of a batch: for L layers × P positions the
target prompt is repeated L·P times and each row's hook replaces only its own (layer,
position), through per-row masks, ``batch_size`` rows per forward. The source run is not
cached: its rows ride in every forward, and each hook copies their value, computed a moment
earlier at the same hook, into the patched rows (a layer's source value never depends on a
patch). The numbers are those of ``transformer_lens.patching`` (the reference
in the tests), without its one forward per cell. On a bridge the forwards run on its
plain HF twin (:mod:`mechintro.engine.twin`), with the hooks at the modules the bridge's hook points
wrap, and give the same values (``tests/unit/test_twin.py``); ``fast=False`` keeps the bridge.
Every hook of a sweep reads which of its rows to patch from one mask buffer, written before
each forward, so all forwards run the same kernels: on a GPU the twin's second forward is
captured as a CUDA graph and the rest replay it (a 1B model's forward is bound by launching
its kernels from Python). The capture is kept for the next sweep of the same shape (prompt
length, rows, sites, injection layers), which writes its own prompts, vectors and masks into
the tensors the graph reads (:mod:`mechintro.analysis.patch_forwards`).

**Attribution patching** (Nanda 2023; Syed et al. 2023) estimates every cell at once from
one forward and one backward of the target run: effect ≈ (source − target activation) ·
∂metric/∂activation. It is exact for a linear model and good when the two runs are close
(small injection strengths); it misses saturation and is poor across big jumps (large
strengths, attention patterns that flip). Use it to screen, then confirm the top cells
with :func:`activation_patch`.

Example::

    import torch
    from mechintro import Injection, Prompt, encode, load_model
    from mechintro.analysis.patching import heatmap, knock_out

    model = load_model("builtin:smollm2")  # SmolLM2-135M-Instruct, offline, 30 blocks
    batch = encode(model.tokenizer, [Prompt.chat("Trial 1: Do you detect an injected thought?")])
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    inj = Injection(layer=12, vector=v, strength=4.0)  # from the token before "Trial 1"
    res = knock_out(model, batch, inj, component="mlp_out", positions="all", layers=range(13, 30))
    res.top(5)  # the MLPs whose unsteered output moves the Yes/No gap most
    heatmap(res).show()
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import fields
from typing import Any

import torch
from torch import Tensor

from mechintro.analysis.patch_forwards import (
    Hooks,
    check_metric,
    graph_applies,
    keep_of,
    logits_of,
    sweep,
)
from mechintro.analysis.patch_forwards import (
    Metric as Metric,  # re-exported: mechintro.analysis.patching.Metric
)
from mechintro.analysis.patch_result import PatchResult, Sites
from mechintro.analysis.patch_result import (
    heatmap as heatmap,  # re-exported: mechintro.analysis.patching.heatmap
)
from mechintro.batching import check_batch_size
from mechintro.engine.twin import fast_twin
from mechintro.inject import Injection, injected
from mechintro.models import TLModel, backend_of, check_layer, n_layers, resid_post, tokenizer_of
from mechintro.prompts import PromptBatch, PromptLike, as_prompt_batch
from mechintro.tokens import NO_VARIANTS, YES_VARIANTS, Belief

logger = logging.getLogger(__name__)

COMPONENTS: dict[str, str] = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "attn_module_out": "blocks.{layer}.attn.hook_out",
    "mlp_module_out": "blocks.{layer}.mlp.hook_out",
    "head": "blocks.{layer}.attn.hook_z",
}
"""Patchable sites: component name -> TransformerLens hook-name template."""


def yes_no_gap(
    model: TLModel, yes: Sequence[str] = YES_VARIANTS, no: Sequence[str] = NO_VARIANTS
) -> Metric:
    """The Yes/No gap at the last prompt token: ``logsumexp(Yes variants) − logsumexp(No)``.

    The same quantity as :func:`mechintro.generation.readout`'s ``b_variants`` (first tokens,
    deduplicated). Example: ``metric = yes_no_gap(model); metric(logits)  # [batch]``.
    """
    belief = Belief.of(tokenizer_of(model), yes, no)

    def metric(logits: Tensor) -> Tensor:
        return belief(logits[:, -1, :].float())

    return last_position(metric)


def last_position(metric: Metric) -> Metric:
    """Mark ``metric`` as reading only the last position's logits (``logits[:, -1]``).

    Patching then has the model compute logits at that position only (transformers'
    ``logits_to_keep=1``; a HookedTransformer still computes all): the unembedding of one
    position per row instead of all, which on a large vocabulary is much of a forward. The
    metric then receives logits of shape ``[batch, 1, vocab]``. Returns ``metric`` itself.
    """
    metric.__dict__["last_position_only"] = True
    return metric


def _plan(
    model: TLModel,
    target: PromptLike,
    source: PromptLike | None,
    component: str,
    layers: Sequence[int] | None,
    positions: str | Sequence[int | str],
) -> tuple[Sites, PromptBatch, PromptBatch]:
    """Validate everything up front, before any forward pass; batches moved to the model."""
    backend = backend_of(model)
    tok = getattr(model, "tokenizer", None)
    target = as_prompt_batch(tok, target)
    source = target if source is None else as_prompt_batch(tok, source)
    if component not in COMPONENTS:
        raise ValueError(f"unknown component {component!r}: use one of {', '.join(COMPONENTS)}")
    template = COMPONENTS[component]
    layer_list = tuple(range(n_layers(model))) if layers is None else tuple(layers)
    if not layer_list:
        raise ValueError("layers is empty: give at least one block index (or None for all)")
    for layer in layer_list:
        check_layer(model, layer)
    points = model.hook_dict  # a bridge rebuilds it on every access: read it once
    missing = [n for n in (template.format(layer=ly) for ly in layer_list) if n not in points]
    if missing:
        have = [c for c, t in COMPONENTS.items() if t.format(layer=0) in points]
        hint = (
            " The module-output sites (before Gemma's post-norms) exist on the bridge only: "
            "load_model(..., backend='bridge')."
            if component.endswith("module_out")
            else ""
        )
        raise ValueError(
            f"this {backend} model has no hook {missing[0]!r} for component {component!r}; "
            f"components it has: {', '.join(have)}.{hint}"
        )
    if component == "resid_mid" and backend == "bridge":
        raise ValueError(
            "on a TransformerBridge, hook_resid_mid is the pre-MLP norm's input: writing it "
            "changes what the MLP reads, not the residual carried on (mlp_out's result). "
            "Patch resid_mid on backend='hooked', or resid_pre / resid_post here"
        )
    if len(source) != len(target):
        raise ValueError(
            f"source has {len(source)} rows, target {len(target)}: give one source row per "
            "target row (the same prompts, or counterparts of equal token length)"
        )
    if source.length != target.length or not torch.equal(
        source.attention_mask.cpu(), target.attention_mask.cpu()
    ):
        raise ValueError(
            f"source and target differ in token length or padding ({source.length} vs "
            f"{target.length} tokens): patching aligns positions, so encode prompts of equal "
            "token length (check with model.tokenizer.tokenize)"
        )
    T = target.length
    pos: tuple[int | None, ...]
    if isinstance(positions, str):
        if positions == "each":
            pos = tuple(range(T))
        elif positions == "all":
            pos = (None,)
        else:
            raise ValueError(
                f"positions must be 'each', 'all' or a list of indices/names, got {positions!r}"
            )
    else:
        pos = tuple(_position(target, p) for p in positions)
        if not pos:
            raise ValueError("positions is empty: use 'each', 'all' or a non-empty list")
    heads = tuple(range(int(model.cfg.n_heads))) if component == "head" else None
    tok = tokenizer_of(model)
    ids = target.input_ids[0].tolist()
    labels = tuple("all" if p is None else f"{p} {tok.decode([ids[p]])!r}" for p in pos)
    device = next(model.parameters()).device
    sites = Sites(component, template, layer_list, pos, labels, heads)
    return sites, target.to(device), source.to(device)


def _result(model: TLModel, sites: Sites, rows: Tensor, method: str, runs: Any) -> PatchResult:
    """``runs`` = (source metric, target metric, source injection, target injection)."""
    src, tgt, src_inj, tgt_inj = runs
    return PatchResult(
        **{f.name: getattr(sites, f.name) for f in fields(Sites)},
        values=rows.mean(-1),
        rows=rows,
        method=method,
        source_value=src.cpu(),
        target_value=tgt.cpu(),
        source_injection=None if src_inj is None else repr(src_inj),
        target_injection=None if tgt_inj is None else repr(tgt_inj),
        backend=backend_of(model),
    )


def _position(batch: PromptBatch, p: int | str) -> int:
    T = batch.length
    if isinstance(p, str):
        named = batch.position(p)
        if bool((named != named[0]).any()):
            raise ValueError(
                f"position {p!r} differs between rows ({named.tolist()}): patch one prompt "
                "at a time, or give an index"
            )
        return int(named[0])
    if isinstance(p, bool) or not isinstance(p, int):
        raise TypeError(f"a position is an int index or a named position, got {p!r}")
    if not -T <= p < T:
        raise ValueError(
            f"position {p} is out of range for prompts of {T} tokens: use 0..{T - 1} "
            f"(or -{T}..-1 from the end)"
        )
    return p % T


def _steer(
    model: TLModel, injection: Injection | None, batch: PromptBatch
) -> AbstractContextManager[Any]:
    """``injected(...)`` on ``batch``, or nothing when ``injection`` is None."""
    return nullcontext() if injection is None else injected(model, injection, batch)


@torch.no_grad()
def _run(
    model: TLModel,
    batch: PromptBatch,
    injection: Injection | None,
    names: Sequence[str],
    metric: Metric,
) -> tuple[dict[str, Tensor], Tensor]:
    """Metric of one run, and its activations at ``names`` (only those: sparse caching)."""
    cache: dict[str, Tensor] = {}

    def saver(name: str) -> Callable[..., Tensor]:
        def hook(x: Tensor, hook: Any) -> Tensor:
            cache[name] = x.detach().clone()
            return x

        return hook

    hooks: Hooks = [(n, saver(n)) for n in names]
    with _steer(model, injection, batch), model.hooks(fwd_hooks=hooks):
        logits = logits_of(model, batch.input_ids, batch.attention_mask, keep=keep_of(metric))
    return cache, check_metric(metric(logits), len(batch))


def activation_patch(
    model: TLModel,
    target: PromptLike,
    source: PromptLike | None = None,
    *,
    component: str = "resid_pre",
    layers: Sequence[int] | None = None,
    positions: str | Sequence[int | str] = "each",
    metric: Metric | None = None,
    target_injection: Injection | None = None,
    source_injection: Injection | None = None,
    batch_size: int = 64,
    fast: bool | None = None,
    cuda_graph: bool | None = None,
) -> PatchResult:
    """Patch ``component`` from the source run into the target run, cell by cell, batched.

    Args:
        target, source: the two runs' prompts (``source`` defaults to ``target``: the runs
            then differ only by their injections). Equal token lengths and padding. A
            PromptBatch, a string or a list of strings (raw text), Prompts, or a token
            tensor (:func:`mechintro.prompts.as_prompt_batch`).
        component: a key of :data:`COMPONENTS`; layers: block indices (default all);
        positions: "each", "all" (one cell), or indices / named positions.
        metric: ``logits[batch, pos, vocab] -> [batch]``; default :func:`yes_no_gap`.
        target_injection, source_injection: an :class:`Injection` for either run.
        batch_size: rows per forward: each prompt row × cell is one row, and every forward
            also carries the source run's rows (the first also the unpatched target run's);
            at least one cell per forward.
        fast: on a bridge, run the forwards on its plain HF twin, hooks at the same sites
            (:mod:`mechintro.engine.twin`: the same numbers). ``None``: where every site has a place
            there, unless a hook is on the bridge; ``False``: never.
        cuda_graph: capture the twin's patched forward as a CUDA graph (its second; the
            first runs eagerly) and replay it for every later one: a small model's forward
            is bound by launching its kernels from Python, which a replay skips. The same
            kernels on the same inputs, so the same values (a GPU test checks them bit for
            bit). ``None``: on a CUDA device, on the twin, with eager attention and no
            sliding window shorter than the prompts (:func:`mechintro.engine.twin.full_mask`).

    Example::

        res = activation_patch(model, plain, source_injection=inj, component="attn_out")
    """
    check_batch_size(batch_size)
    sites, target, source = _plan(model, target, source, component, layers, positions)
    metric = metric if metric is not None else yes_no_gap(model)
    injs = [i for i in (source_injection, target_injection) if i is not None]
    twin = fast_twin(model, fast, [*sites.hook_names(), *(resid_post(i.layer) for i in injs)])
    cells, B = sites.cells(), len(target)
    per = max(1, batch_size // B - 1)  # cells per forward, beside the source run's B rows
    n = -(-(len(cells) + 1) // per)  # forwards for the cells and the unpatched target run
    per = -(-(len(cells) + 1) // n)  # as many, evened out (a graph pads the last to `per`)
    first = max(1, per - 1)  # the first forward also carries the unpatched target run
    chunks = [cells[:first], *(cells[i : i + per] for i in range(first, len(cells), per))]
    graph = graph_applies(twin, target, cuda_graph)
    logger.info("patching %d cells of %s, %d per forward", len(cells), component, per)
    injections = (source_injection, target_injection)
    src_val, tgt_val, out = sweep(
        model, sites, source, target, chunks, injections, metric, twin, graph
    )
    rows = out.view(*sites.shape(), B).cpu()
    runs = (src_val, tgt_val, source_injection, target_injection)
    return _result(model, sites, rows, "activation", runs)


def attribution_patch(
    model: TLModel,
    target: PromptLike,
    source: PromptLike | None = None,
    *,
    component: str = "resid_pre",
    layers: Sequence[int] | None = None,
    positions: str | Sequence[int | str] = "each",
    metric: Metric | None = None,
    target_injection: Injection | None = None,
    source_injection: Injection | None = None,
) -> PatchResult:
    """Attribution patching: every cell from one forward + one backward of the target run.

    Same arguments and result as :func:`activation_patch`; ``values`` is the first-order
    estimate ``target + Σ (source − target activation) · ∂metric/∂activation`` (summed over
    the cell's positions and features). Screen with it; confirm with activation patching.

    Example::

        screen = attribution_patch(model, plain, source_injection=inj, component="head")
    """
    sites, target, source = _plan(model, target, source, component, layers, positions)
    metric = metric if metric is not None else yes_no_gap(model)
    names = sites.hook_names()
    cache, src_val = _run(model, source, source_injection, names, metric)
    probes: dict[str, Tensor] = {}
    acts: dict[str, Tensor] = {}

    def prober(name: str) -> Callable[..., Tensor]:
        def hook(x: Tensor, hook: Any) -> Tensor:  # x + 0, whose gradient is ∂metric/∂x
            acts[name] = x.detach()
            probes[name] = torch.zeros_like(x, requires_grad=True)
            return x + probes[name]

        return hook

    hooks: Hooks = [(n, prober(n)) for n in names]
    with torch.enable_grad(), _steer(model, target_injection, target):
        with model.hooks(fwd_hooks=hooks):
            value = metric(logits_of(model, target.input_ids, target.attention_mask))
        tgt_val = check_metric(value, len(target))
        # autograd.grad, not backward(): nothing accumulates in the parameters' .grad
        grads = torch.autograd.grad(value.sum(), [probes[n] for n in names], allow_unused=True)
    rows = torch.zeros(*sites.shape(), len(target))
    for li, (name, grad) in enumerate(zip(names, grads)):
        if grad is None:
            continue
        # (source − target)·grad summed over features: [B, pos] or [B, pos, head]
        prod = ((cache[name].float() - acts[name].float()) * grad.float()).sum(-1).cpu()
        for pi, p in enumerate(sites.positions):
            at = prod.sum(1) if p is None else prod[:, p]  # [B] or [B, head]
            rows[li, pi] = at if sites.heads is None else at.T
    runs = (src_val, tgt_val, source_injection, target_injection)
    return _result(model, sites, rows + tgt_val.cpu(), "attribution", runs)


def knock_out(model: TLModel, batch: PromptLike, injection: Injection, **kw: Any) -> PatchResult:
    """Steered target, unsteered source: which sites does the steering act through?

    Keywords as :func:`activation_patch`, plus ``method="attribution"`` for the fast screen.
    Macar et al.'s setup: ``knock_out(model, batch, inj, component="mlp_module_out",
    positions="all", layers=range(inj.layer + 1, n_layers))``.
    """
    return _patch_fn(kw.pop("method", "activation"))(model, batch, target_injection=injection, **kw)


def knock_in(model: TLModel, batch: PromptLike, injection: Injection, **kw: Any) -> PatchResult:
    """Unsteered target, steered source: which sites carry the steering on their own?

    Keywords as :func:`knock_out`.
    """
    return _patch_fn(kw.pop("method", "activation"))(model, batch, source_injection=injection, **kw)


def _patch_fn(method: str) -> Callable[..., PatchResult]:
    if method not in ("activation", "attribution"):
        raise ValueError(f"method must be 'activation' or 'attribution', got {method!r}")
    return activation_patch if method == "activation" else attribution_patch
