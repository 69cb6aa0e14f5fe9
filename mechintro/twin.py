"""The fast path: a plain Hugging Face copy of a TransformerBridge that shares its weights.

A :class:`~transformer_lens.model_bridge.TransformerBridge` replaces the decoder layers of the
HF model it wraps with its own components, whose hook points run on every submodule at every
forward, hooked or not: on a GPU its forward takes about twice as long as the plain HF model's
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
the same hook code runs on either tree and gives the same numbers (``tests/test_twin.py``).

:func:`fast_twin` says when the fast path applies: a bridge, the fast path not switched off
(``fast=False`` per call, or ``MECHINTRO_FAST=0`` in the environment), no hook left on any
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
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mechintro.models import TLModel, backend_of

#: the environment switch: ``MECHINTRO_FAST=0`` sends every call down the bridge path
FAST_ENV = "MECHINTRO_FAST"
_WRAPPED = "._original_component"  # where the bridge keeps the HF module it wraps

HookFn = Callable[..., Any]
Hooks = Sequence[tuple[str | HookFn, HookFn]]  # as TransformerLens's fwd_hooks; names only here


@dataclass(frozen=True)
class Site:
    """Where a bridge hook point sits in the plain HF tree."""

    path: str  # the HF module, e.g. "model.layers.3.post_feedforward_layernorm"
    side: str  # "in": the module's first input; "out": its output (first element of a tuple)
    point: Any  # the bridge's HookPoint: its name and shape conversion (e.g. per-head z)


class _Twin:
    """A twin and the map from the bridge's hook points to HF module paths."""

    def __init__(self, model: TLModel) -> None:
        from transformer_lens.hook_points import HookPoint

        hf: Any = model.original_model
        config = copy.deepcopy(hf.config)
        with torch.device("meta"):
            self.hf: Any = type(hf)(config)
        self.hf.eval()
        self.modules = dict(self.hf.named_modules())
        self.sites: dict[int, Site] = {}
        for name, module in hf.named_modules():
            parent, _, leaf = name.rpartition(".")
            if leaf in ("hook_in", "hook_out") and isinstance(module, HookPoint):
                side = "in" if leaf == "hook_in" else "out"
                self.sites[id(module)] = Site(parent.replace(_WRAPPED, ""), side, module)
        self.bind(model)

    def bind(self, model: TLModel) -> None:
        """Point every parameter and buffer of the twin at the bridge's current tensor.

        Also those the bridge added to a wrapped HF module (e.g. a zero ``bias`` on the
        unembedding's ``Linear``, which its forward then uses).
        """
        hf: Any = model.original_model
        for slot in ("_parameters", "_buffers"):
            named = getattr(hf, f"named{slot}")(remove_duplicate=False)
            for name, tensor in named:
                owner, _, leaf = name.replace(_WRAPPED, "").rpartition(".")
                module = self.modules.get(owner)
                if module is not None and leaf in getattr(module, slot):
                    getattr(module, slot)[leaf] = tensor
        for name, tensor in [*self.hf.named_parameters(), *self.hf.named_buffers()]:
            if tensor.is_meta:
                raise RuntimeError(f"the bridge has no tensor for the twin's {name!r}")


_TWINS: weakref.WeakKeyDictionary[Any, _Twin] = weakref.WeakKeyDictionary()


def _entry(model: TLModel) -> _Twin:
    if backend_of(model) != "bridge":
        raise TypeError("only a TransformerBridge has a twin (HookedTransformer runs as is)")
    entry = _TWINS.get(model)
    if entry is None:
        entry = _TWINS[model] = _Twin(model)
    else:
        entry.bind(model)  # cheap: follows a .to() that replaced a buffer
    return entry


def twin_of(model: TLModel) -> Any:
    """The plain HF model sharing ``model``'s weights (a bridge); built on first use."""
    return _entry(model).hf


def fast_enabled(fast: bool | None = None) -> bool:
    """``fast`` if given, else the environment: only ``MECHINTRO_FAST=0`` switches it off."""
    if fast is not None:
        return fast
    return os.environ.get(FAST_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def has_hooks(model: TLModel) -> bool:
    """Whether a hook is registered on any of ``model``'s hook points (a caller's, active).

    The bridge's own plumbing (capture hooks on its norm wrappers) is not counted: it only
    serves hook points, which the twin does not need.
    """
    from transformer_lens.hook_points import HookPoint

    return any(
        isinstance(m, HookPoint) and bool(m._forward_hooks or m._forward_pre_hooks)
        for m in model.modules()
    )


def fast_twin(model: TLModel, fast: bool | None = None, names: Sequence[str] = ()) -> Any:
    """The twin when the fast path applies to ``model`` and every hook in ``names``; else None.

    It does not apply to a HookedTransformer, with the fast path off, with a hook registered
    on the bridge, or once the bridge's weights were processed or its compatibility mode
    enabled (its forward is then no longer the HF model's).
    """
    if not fast_enabled(fast) or backend_of(model) != "bridge" or has_hooks(model):
        return None
    if model.compatibility_mode or getattr(model, "_weights_processed", False):
        return None
    if any(hf_site(model, n) is None for n in names):
        return None
    return twin_of(model)


def hf_site(model: TLModel, name: str) -> Site | None:
    """Where the bridge's hook ``name`` sits in the twin (None: not on a wrapped module)."""
    point = model.hook_dict.get(name)
    return None if point is None else _entry(model).sites.get(id(point))


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


def positions(mask: Tensor) -> Tensor:
    """Position ids of a left-padded batch: real tokens count from 0, padding sits at 0."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def twin_logits(twin: Any, ids: Tensor, mask: Tensor, *, last_only: bool = False) -> Tensor:
    """One forward of the twin without a KV cache, positions as on the bridge path."""
    out = twin(
        ids,
        attention_mask=mask,
        position_ids=positions(mask),
        use_cache=False,
        logits_to_keep=1 if last_only else 0,
    )
    return out.logits
