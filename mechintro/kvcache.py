"""The KV cache across transformers versions, and the guard that it was written.

transformers 5.24 renamed the cache argument that a model's forward takes and that every
decoder layer hands its attention module: ``past_key_values=`` became ``cache=`` (the old name
still works at the top level, with a FutureWarning, until 5.40), and a model output's
``past_key_values`` field became ``cache``. TransformerBridge 3.9 reconstructs attention in its
own components, which read the cache only as ``past_key_values`` (or ``layer_past``): under
5.24 they never see it, the cache is never written, and every cached decode step attends to
itself alone (generation is word salad; cached and uncached logits differ by up to 25.8 on the
built-in organism).

Three things here keep every path right on every supported version:

* :func:`cache_kwarg` and :func:`output_cache`: the name a model takes and returns its cache
  under, read from its forward's signature (so mechintro calls the current name, with no
  deprecation warning);
* :func:`alias_bridge_cache`: on a bridge, each attention component that computes attention
  itself is also handed the cache under the name it reads (a forward pre-hook, installed once
  per bridge, a no-op where transformers still passes ``past_key_values``);
* :func:`check_cache`: after every cached forward, the cache must hold exactly the tokens fed
  so far; otherwise :class:`CacheNotWritten` names the cause. Generation never goes on
  silently without its cache.

Example::

    alias_bridge_cache(bridge)                       # idempotent
    out = hf(ids, use_cache=True, **{cache_kwarg(hf): cache})
    check_cache(output_cache(out), ids.shape[1], path="twin")
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any

import torch

#: set on a bridge once its attention components read the cache under its new name too
_ALIASED = "_mechintro_cache_alias"


class CacheNotWritten(RuntimeError):
    """A cached forward left the KV cache shorter or longer than the tokens fed."""


@functools.cache
def _takes_cache(forward: Any) -> bool:
    try:
        return "cache" in inspect.signature(forward).parameters
    except (TypeError, ValueError):  # a builtin or a C extension: the old name
        return False


def cache_kwarg(hf_model: Any) -> str:
    """The keyword under which ``hf_model``'s forward takes its KV cache: ``"cache"`` from
    transformers 5.24 on, ``"past_key_values"`` before."""
    return "cache" if _takes_cache(type(hf_model).forward) else "past_key_values"


def output_cache(output: Any) -> Any:
    """The KV cache a model output carries, under whichever name its version gives it."""
    if dataclasses.is_dataclass(output):
        names = {f.name for f in dataclasses.fields(output)}
        return getattr(output, "cache" if "cache" in names else "past_key_values")
    return output.past_key_values


def _also_past_key_values(
    module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    cache = kwargs.get("cache")
    if cache is None or kwargs.get("past_key_values") is not None:
        return None
    return args, {**kwargs, "past_key_values": cache}


def alias_bridge_cache(model: Any) -> None:
    """Let a TransformerBridge's attention read the cache that transformers ≥ 5.24 hands it
    as ``cache=``: a forward pre-hook on each attention component that computes attention
    itself (and so reads ``past_key_values``) passes the same cache under that name too.

    Components that only delegate to the wrapped HF attention are left alone (it reads
    ``cache`` itself; given both names it would warn). Installed once per bridge; a no-op on
    older transformers, where ``cache`` is never passed. Not a hook point: the bridge's hook
    machinery, ``reset_hooks()`` and :func:`mechintro.engine.twin.has_hooks` do not see it.
    """
    if getattr(model, _ALIASED, False):
        return
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    for module in model.modules():
        if isinstance(module, AttentionBridge) and type(module).forward is not (
            AttentionBridge.forward
        ):
            module.register_forward_pre_hook(_also_past_key_values, with_kwargs=True)
    object.__setattr__(model, _ALIASED, True)


def cache_length(cache: Any) -> int:
    """How many positions ``cache`` holds: a transformers ``Cache`` (dynamic or static; the
    largest over its layers, so a sliding-window layer that keeps fewer does not decide) or
    TransformerLens's ``TransformerLensKeyValueCache``."""
    entries = getattr(cache, "entries", None)
    if entries is not None:  # HookedTransformer's cache
        return int(entries[0].past_keys.shape[1]) if entries else 0
    layers = getattr(cache, "layers", None)
    if layers:
        return max(int(cache.get_seq_length(i)) for i in range(len(layers)))
    return int(cache.get_seq_length())


def check_cache(cache: Any, fed: int, *, path: str) -> None:
    """Raise :class:`CacheNotWritten` unless ``cache`` holds exactly ``fed`` positions."""
    held = cache_length(cache) if cache is not None else 0
    if held == fed:
        return
    from importlib.metadata import version

    raise CacheNotWritten(
        f"the KV cache holds {held} positions after {fed} tokens were fed on the {path} path: "
        "the model's attention did not write it (transformers "
        f"{version('transformers')}, transformer-lens {version('transformer-lens')}: "
        "transformers 5.24 renamed the cache argument the attention receives; a model or "
        "library that reads only the old name never sees it). Generating on would ignore the "
        "prompt. Install the versions in constraints.txt, or pass use_cache=False (slower, "
        "correct), and report the versions"
    )
