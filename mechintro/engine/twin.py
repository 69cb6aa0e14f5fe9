"""The fast path: a plain Hugging Face copy of a TransformerBridge that shares its weights.

A :class:`~transformer_lens.model_bridge.TransformerBridge` replaces the decoder layers of the
HF model it wraps with its own components, whose hook points run on every submodule at every
forward, hooked or not: on a GPU its forward is much slower than the plain HF model's
(``benchmarks/RESULTS.md``), and ``bridge.original_model`` is the wrapped tree, so calling it
fires the wrappers too. :func:`twin_of` builds, once per bridge, a *twin*: a fresh model of
the same HF class and config, built on the ``meta`` device, whose parameters and buffers are
then pointed at the bridge's own tensors (the same ``Parameter`` objects: no copy, and
training or ``.to()`` on the bridge moves the twin along). It has no hook point at all.

Hooks still go where TransformerLens names them: :func:`hf_site` maps a bridge hook name to
the HF module the bridge's hook point wraps (e.g. ``blocks.3.hook_resid_post`` → the output
of ``model.layers.3``; ``blocks.3.hook_mlp_out`` → the output of Gemma's
``post_feedforward_layernorm``, *after* its post-norm, as on the bridge; ``blocks.3.attn.hook_z``
→ the input of ``o_proj``, reshaped per head by the bridge's own conversion), and
:func:`twin_hooks` registers TransformerLens-style hook functions ``fn(x, hook) -> x`` there
as plain PyTorch hooks. Whatever a hook sees and returns is what it would on the bridge, so
the same hook code runs on either tree and gives the same numbers (``tests/unit/test_twin.py``):
bit for bit where the HF config names eager attention (what ``load_model`` loads), to float
rounding with sdpa (the bridge computes attention itself, eagerly; the twin runs the
implementation its config names). On CUDA, a model with grouped K/V heads runs grouped
attention on its twin (:mod:`mechintro.engine.attention`: eager attention's function without
repeating K/V over the cache; the same numbers to rounding); :func:`use_attention` chooses
another. :func:`use_norms` compiles the twin's RMSNorms on CUDA (:mod:`mechintro.engine.norms`).

:func:`fast_twin` says when the fast path applies: a bridge, the fast path not switched off
(``fast=False``: an option of each call, recorded in its run record; no environment
variable changes it), no hook left on any
of the bridge's hook points (a hook a caller added outside our call would not fire on the
twin, so then the bridge path runs), and neither processed weights nor TransformerLens's
compatibility mode. HookedTransformer models have no twin.

Example::

    twin = twin_of(model)                       # built once, cached per bridge
    with twin_hooks(model, twin, [("blocks.2.hook_resid_post", fn)]):
        logits = twin(ids, attention_mask=mask).logits
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechintro.engine.attention import GROUPED, choose
from mechintro.engine.decode import forget
from mechintro.engine.norms import choose as choose_norms
from mechintro.engine.norms import norms_of, set_norms
from mechintro.inject import Injection, InjectionLog, StepPosition, injected, injection_hooks
from mechintro.models import TLModel, backend_of
from mechintro.prompts import PromptBatch, positions

_WRAPPED = "._original_component"  # where the bridge keeps the HF module it wraps

HookFn = Callable[..., Any]
Hooks = Sequence[tuple[str | HookFn, HookFn]]  # as TransformerLens's fwd_hooks; names only here


@dataclass(frozen=True)
class Site:
    """Where a bridge hook point sits in the plain HF tree."""

    path: str  # the HF module, e.g. "model.layers.3.post_feedforward_layernorm"
    side: str  # "in": the module's first input; "out": its output (first element of a tuple)
    point: Any  # the bridge's HookPoint: its name and shape conversion (e.g. per-head z)


Slot = dict[str, Any]  # a module's _parameters or _buffers


class _Twin:
    """A twin, where each of its tensors comes from in the bridge, and the bridge's hook
    points by HF module path."""

    def __init__(self, model: TLModel) -> None:
        from transformer_lens.hook_points import HookPoint

        hf: Any = model.original_model
        self.source = hf  # the wrapped model it mirrors (replaced: a new twin, _entry)
        config = copy.deepcopy(hf.config)
        self.native: str = config._attn_implementation  # the bridge's own attention
        self.wanted = "auto"  # what a caller asked for (use_attention)
        self.norms = "eager"  # what a caller asked for (use_norms)
        with torch.device("meta"):
            self.hf: Any = type(hf)(config)
        self.hf.eval()
        head = self.hf.get_output_embeddings()
        if head is not None:
            head.register_forward_pre_hook(_contiguous)
        ours = dict(self.hf.named_modules())
        # (twin slot, bridge slot, name): also tensors the bridge added to a wrapped HF
        # module, e.g. a zero ``bias`` on the unembedding's Linear, which its forward uses
        self.links: list[tuple[Slot, Slot, str]] = []
        self.sites: dict[int, Site] = {}
        # the bridge's hook points (made with it; walking all its modules per call is slow)
        self.points = [m for m in model.modules() if isinstance(m, HookPoint)]
        self.named: dict[str, Site | None] = {}  # hook name -> site, filled on lookup
        linked: set[tuple[int, str]] = set()
        for name, module in hf.named_modules(remove_duplicate=False):
            path = name.replace(_WRAPPED, "")
            parent, _, leaf = path.rpartition(".")
            hook = leaf in ("hook_in", "hook_out") and isinstance(module, HookPoint)
            if hook and parent in ours:  # not under one of the bridge's alias names
                self.sites[id(module)] = Site(parent, leaf.removeprefix("hook_"), module)
            twin = ours.get(path)
            for slot in ("_parameters", "_buffers") if twin is not None else ():
                dst, src = getattr(twin, slot), getattr(module, slot)
                for key in src.keys() & dst.keys():
                    if (id(dst), key) not in linked:
                        linked.add((id(dst), key))
                        self.links.append((dst, src, key))
        self.checked = -1  # the registration count at the last completeness check
        self.covered = all(
            (id(getattr(m, slot)), key) in linked
            for m in ours.values()
            for slot in ("_parameters", "_buffers")
            for key, t in getattr(m, slot).items()
            if t is not None
        )
        self.bind(model)

    def bind(self, model: TLModel) -> None:
        """Point every parameter and buffer of the twin at the bridge's current tensor.

        ``complete`` says whether the two trees hold exactly the same tensors; they do not
        once something changed the HF modules' structure (unmerged LoRA adapters, say), and
        then the twin is not used. Checking that walks the whole wrapped tree (too slow for
        every call: benchmarks/RESULTS.md), so it is done again only after a module, parameter
        or buffer was registered on one of the tree's modules since the last check
        (:data:`_REGISTRATIONS`; a forward's own registrations, on the ``ModuleList`` that
        slicing ``layers[:n]`` makes each call, change no tree and are not counted).
        """
        for dst, src, key in self.links:
            dst[key] = src[key]
        self.attend()
        if self.checked == _REGISTRATIONS[0]:
            return
        self.checked = _REGISTRATIONS[0]
        ours = {id(dst[key]) for dst, _, key in self.links if dst[key] is not None}
        hf: Any = model.original_model
        modules = list(hf.modules())
        _WATCHED.update([model, *modules])  # the bridge too: its original_model replaced
        theirs = {
            id(t)
            for m in modules
            for slot in (m._parameters, m._buffers)
            for t in slot.values()
            if t is not None
        }
        self.complete = self.covered and ours == theirs

    def attend(self) -> None:
        """Set the attention the twin runs (:func:`mechintro.engine.attention.choose`: grouped
        on CUDA for GQA models, else the bridge's own) and its norms (compiled where asked
        for, on CUDA), for where its weights now are. A change drops its kept captures,
        whose kernels were recorded with the other attention or norms."""
        device = self.hf.get_input_embeddings().weight.device
        attention = choose(self.native, self.hf.config, device, self.wanted)
        norms = choose_norms(self.norms, device)
        if self.hf.config._attn_implementation != attention or norms_of(self.hf) != norms:
            self.hf.config._attn_implementation = attention
            set_norms(self.hf, norms)
            forget(self.hf)


#: how many modules, parameters and buffers were registered in this process on a module of
#: a checked tree (:data:`_WATCHED`) since the first twin was built (``setattr`` of a module or
#: parameter, ``register_*``: how adapters get inserted; a new module joins a tree only by
#: such a registration on one of its modules); the second entry: whether the counting hooks
#: are installed
_REGISTRATIONS = [0, 0]

#: the modules of every wrapped tree a twin's completeness check walked
_WATCHED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def _registered(module: torch.nn.Module, *_: Any) -> None:
    if module in _WATCHED:
        _REGISTRATIONS[0] += 1


def _count_registrations() -> None:
    """Install torch's global registration hooks that count into :data:`_REGISTRATIONS`, once,
    when the first twin is built (never at import: importing mechintro changes nothing)."""
    if _REGISTRATIONS[1]:
        return
    for register in (
        torch.nn.modules.module.register_module_module_registration_hook,
        torch.nn.modules.module.register_module_parameter_registration_hook,
        torch.nn.modules.module.register_module_buffer_registration_hook,
    ):
        register(_registered)
    _REGISTRATIONS[1] = 1


def _contiguous(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The unembedding's input made contiguous. ``logits_to_keep=1`` hands it the last
    position of every row, a strided view ``[batch, 1, d]``, for which cuBLAS can pick a
    kernel that rereads the vocabulary's weights once per 8 rows, where the same product from
    a contiguous copy reads them once (the profile: benchmarks/RESULTS.md)."""
    return (args[0].contiguous(), *args[1:])


_TWINS: weakref.WeakKeyDictionary[Any, _Twin] = weakref.WeakKeyDictionary()


def _entry(model: TLModel, bind: bool = True) -> _Twin:
    """The model's twin, built on first use; ``bind``: re-point it at the bridge's tensors
    (cheap, once per call of generate or a sweep: follows a ``.to()`` that replaced one)."""
    if backend_of(model) != "bridge":
        raise TypeError("only a TransformerBridge has a twin (HookedTransformer runs as is)")
    entry = _TWINS.get(model)
    if entry is not None and entry.source is not model.original_model:  # replaced by a setter
        old, entry = entry, _Twin(model)  # (which registers nothing: no recheck would see it)
        entry.wanted, entry.norms = old.wanted, old.norms
        entry.attend()
        _TWINS[model] = entry
    elif entry is None:
        _count_registrations()
        entry = _TWINS[model] = _Twin(model)
    elif bind:
        entry.bind(model)
    return entry


def twin_of(model: TLModel) -> Any:
    """The plain HF model sharing ``model``'s weights (a bridge); built on first use."""
    entry = _entry(model)
    if not entry.complete:
        raise RuntimeError(
            "the bridge's HF modules no longer match a fresh model of their class (adapters "
            "inserted?): its twin would not compute what it computes; use the bridge"
        )
    return entry.hf


def use_attention(model: TLModel, attention: str = "auto") -> str:
    """Which attention ``model``'s twin runs from now on; the one it runs now.

    ``"auto"`` (the default): :data:`~mechintro.engine.attention.GROUPED` (grouped K/V heads
    read without repeating them) on CUDA for a GQA model whose config names eager or sdpa
    attention, the config's own elsewhere (on the CPU: the eager reference, bit for bit);
    ``GROUPED``, ``"eager"`` or ``"sdpa"``: that one wherever the weights are. The bridge
    itself is unchanged. Each generation records the one it ran (``settings["attention"]``).
    """
    entry = _entry(model, bind=False)
    previous, entry.wanted = entry.wanted, attention
    try:
        entry.attend()
    except ValueError:
        entry.wanted = previous
        raise
    return str(entry.hf.config._attn_implementation)


def use_norms(model: TLModel, norms: str = "eager") -> str:
    """Which RMSNorms ``model``'s twin runs from now on; the ones it runs now.

    ``"compiled"``: each norm module's forward compiled into one fused kernel
    (:mod:`mechintro.engine.norms`; the same numbers to float rounding), where the weights are
    on CUDA, eager elsewhere; ``"eager"`` (the default): Hugging Face's own. The first call
    of each new kind of shape compiles (seconds). Each generation records the ones it ran
    (``settings["norms"]``).
    """
    entry = _entry(model, bind=False)
    previous, entry.norms = entry.norms, norms
    try:
        entry.attend()
    except ValueError:
        entry.norms = previous
        raise
    return norms_of(entry.hf)


def has_hooks(model: TLModel) -> bool:
    """Whether a hook is registered on any of ``model``'s hook points (a caller's, active).

    The bridge's own plumbing (capture hooks on its norm wrappers) is not counted: it only
    serves hook points, which the twin does not need.
    """
    points = _entry(model, bind=False).points
    return any(bool(m._forward_hooks or m._forward_pre_hooks) for m in points)


def fast_twin(model: TLModel, fast: bool | None = None, names: Sequence[str] = ()) -> Any:
    """The twin when the fast path applies to ``model`` and every hook in ``names``; else None.

    It does not apply to a HookedTransformer, with the fast path off, with a hook registered
    on the bridge, or once the bridge's weights were processed or its compatibility mode
    enabled (its forward is then no longer the HF model's), or when the HF modules hold
    tensors a fresh model of their class does not (e.g. unmerged LoRA adapters), or when
    accelerate dispatched the model (its hooks move tensors between devices, or offload; the
    twin has none).
    """
    if fast is False or backend_of(model) != "bridge":
        return None
    if model.compatibility_mode or getattr(model, "_weights_processed", False):
        return None
    hf: Any = model.original_model
    placed = getattr(hf, "hf_device_map", None) or {}
    if len(set(placed.values())) > 1 or (placed and _dispatched(hf)):
        return None
    entry = _entry(model)  # built once, re-pointed at the bridge's tensors on every call
    if has_hooks(model) or not entry.complete or any(hf_site(model, n) is None for n in names):
        return None
    return entry.hf


def _dispatched(hf: Any) -> bool:
    """Whether accelerate put its hooks on any module of ``hf`` (``dispatch_model``)."""
    return any(hasattr(m, "_hf_hook") for m in hf.modules())


def hf_site(model: TLModel, name: str) -> Site | None:
    """Where the bridge's hook ``name`` sits in the twin (None: not on a wrapped module)."""
    entry = _entry(model, bind=False)
    if name not in entry.named:
        point = model.hook_dict.get(name)
        entry.named[name] = None if point is None else entry.sites.get(id(point))
    return entry.named[name]


def _apply(site: Site, fn: HookFn, x: Tensor) -> Tensor | None:
    """Run ``fn`` as the bridge's hook point would: converted in, reverted out."""
    conv = site.point.hook_conversion
    y = fn(x if conv is None else conv.convert(x), hook=site.point)
    return y if y is None or conv is None else conv.revert(y)


def _register(module: torch.nn.Module, site: Site, fn: HookFn) -> Any:
    if site.side == "out":

        def out_hook(mod: Any, args: Any, output: Any) -> Any:
            x = output[0] if isinstance(output, tuple) else output
            y = _apply(site, fn, x)
            if y is None:
                return None
            return (y, *output[1:]) if isinstance(output, tuple) else y

        return module.register_forward_hook(out_hook)

    def in_hook(mod: Any, args: Any, kwargs: Any) -> Any:
        if args:
            y = _apply(site, fn, args[0])
            return None if y is None else ((y, *args[1:]), kwargs)
        y = _apply(site, fn, kwargs["hidden_states"])
        return None if y is None else (args, {**kwargs, "hidden_states": y})

    return module.register_forward_pre_hook(in_hook, with_kwargs=True)


@contextmanager
def twin_hooks(model: TLModel, twin: Any, hooks: Hooks) -> Iterator[None]:
    """Register TransformerLens-style ``(hook name, fn)`` pairs on the twin for the block.

    Hooks on one module run in the order given, as ``model.hooks(fwd_hooks=hooks)`` would run
    them on the bridge; all are removed on exit, exception or not.
    """
    handles = []
    try:
        for name, fn in hooks:
            site = hf_site(model, name) if isinstance(name, str) else None
            if site is None:
                raise KeyError(f"the bridge hook {name!r} has no place in the plain HF model")
            handles.append(_register(twin.get_submodule(site.path), site, fn))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def injected_on(
    model: TLModel,
    twin: Any,
    injection: Injection | Sequence[Injection],
    batch: PromptBatch,
    *,
    first_position: int = 0,
    step: StepPosition | None = None,
) -> Iterator[InjectionLog]:
    """:func:`mechintro.inject.injected` on the tree that runs: the bridge (``twin=None``) or
    its twin, where the same hooks sit at the HF modules the bridge's hook points wrap."""
    if twin is None:
        with injected(model, injection, batch, first_position=first_position, step=step) as log:
            yield log
        return
    hooks, log = injection_hooks(model, injection, batch, first_position, step)
    with twin_hooks(model, twin, hooks):
        yield log


def twin_logits(twin: Any, ids: Tensor, mask: Tensor, keep: int = 0) -> Tensor:
    """Logits at every position (``keep``: at the last ``keep`` only), from one forward of
    the twin without a KV cache (positions as on the bridge path)."""
    return twin(
        ids, attention_mask=mask, position_ids=positions(mask), use_cache=False,
        logits_to_keep=keep,
    ).logits  # fmt: skip


def full_mask_applies(twin: Any, length: int) -> bool:
    """Whether :func:`full_mask` is the mask every layer of ``twin`` would apply to prompts
    of ``length`` tokens: eager attention (or grouped, which takes the same additive mask;
    for an unpadded batch transformers builds it none and sdpa runs its causal kernel, the
    same function rounded otherwise), no sliding window shorter than them, and only full or
    sliding attention layers."""
    config = twin.config
    window = getattr(config, "sliding_window", None)
    kinds = set(getattr(config, "layer_types", None) or ("full_attention",))
    return (
        config._attn_implementation in ("eager", GROUPED)
        and (window is None or window >= length)
        and kinds <= {"full_attention", "sliding_attention"}
    )


def full_mask(twin: Any, mask: Tensor) -> Tensor:
    """The 4D attention mask ``[batch, 1, T, T]`` that transformers builds with eager
    attention for a forward of the whole of a left-padded batch (padding mask ``mask``):
    0 where causal and not padding, the dtype's minimum elsewhere. Given as the
    ``attention_mask``, it is used as is (a forward captured as a CUDA graph must not build
    it: that copies constants from the host). Only where :func:`full_mask_applies`.
    """
    T = mask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=mask.device).tril()
    open_ = causal[None, None] & mask.bool()[:, None, None, :]
    dtype = next(twin.parameters()).dtype
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(open_, zero, torch.finfo(dtype).min)
