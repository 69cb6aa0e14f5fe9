"""Refusal directions by difference in means, and abliteration as hooks on every block.

Two sites, both named and selectable:

* ``resid_post`` at prompt position ``-2`` (the default; Macar et al. 2026,
  ``experiments/03d_refusal_abliteration.py``): the direction of block ``l`` is read at the
  block's output, and :func:`abliterated` edits every block's output with that block's
  direction and weight (Macar's forward hook on each decoder layer).
* ``resid_pre`` averaged over the last ``positions`` template tokens (Arditi et al. 2024):
  read at block ``l``'s input, edited at every block's input and the last block's output.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechintro.batching import check_batch_size, in_batches
from mechintro.models import (
    TLModel,
    d_model,
    fingerprint,
    hook_name,
    model_info,
    n_layers,
    padded_kwargs,
    tokenizer_of,
)
from mechintro.prompts import Prompt, encode

logger = logging.getLogger(__name__)

SITES = ("resid_pre", "resid_mid", "resid_post")
#: where :func:`abliterated` edits: block inputs (Arditi's) or block outputs (Macar's)
ABLATION_SITES = ("resid_pre", "resid_post")


# ---------------------------------------------------------------------------------------------
# refusal direction


@functools.cache
def _prompt_lists() -> dict[str, tuple[str, ...]]:
    text = resources.files("mechintro").joinpath("data/refusal_prompts.json").read_text("utf-8")
    return {k: tuple(v) for k, v in json.loads(text).items() if not k.startswith("_")}


def refusal_prompts(kind: str) -> list[str]:
    """The shipped instructions: ``"harmful"`` or ``"harmless"`` (40 each; see the file's
    ``_sources``)."""
    lists = _prompt_lists()
    if kind not in lists:
        raise ValueError(f"no prompt list {kind!r}: use one of {sorted(lists)}")
    return list(lists[kind])


@dataclass(frozen=True, eq=False)
class RefusalDirections:
    """Per-layer refusal directions and the means they come from.

    ``directions[l]`` is the unit vector of ``mean_diff[l]`` = mean over harmful prompts (at
    prompt ``position``, or averaged over the last ``positions`` tokens where ``position`` is
    None) minus the same over harmless prompts, at ``blocks.l.hook_{site}``; a zero row where
    the two means agree (block 0's input at the template's last tokens is the same embedding
    for every prompt), which :class:`Abliteration` leaves alone. ``harmful_mean`` and
    ``harmless_mean`` keep each position apart (``[layer, pos, d_model]``, last position
    last) for choosing one (layer, position) as Arditi et al. do.
    """

    directions: Float[Tensor, "layer d_model"]
    mean_diff: Float[Tensor, "layer d_model"]
    harmful_mean: Float[Tensor, "layer pos d_model"]
    harmless_mean: Float[Tensor, "layer pos d_model"]
    site: str
    positions: int
    n_harmful: int
    n_harmless: int
    prompt_format: str
    model: str | None = None
    fingerprint: str | None = None
    position: int | None = None

    @property
    def norms(self) -> Float[Tensor, " layer"]:
        """‖mean_diff‖ per layer: how separated the two sets are at each layer."""
        return torch.linalg.vector_norm(self.mean_diff, dim=-1)

    def direction(self, layer: int, position: int | None = None) -> Float[Tensor, " d_model"]:
        """The unit direction of ``layer``; with ``position`` (``-1`` = last token), the one
        of that template position alone."""
        if not -self.directions.shape[0] <= layer < self.directions.shape[0]:
            raise IndexError(f"layer {layer} out of range for {self.directions.shape[0]} layers")
        if position is None:
            return self.directions[layer]
        diff = self.harmful_mean[layer, position] - self.harmless_mean[layer, position]
        return diff / torch.linalg.vector_norm(diff)


def _check_instructions(xs: Sequence[str], what: str) -> list[str]:
    if isinstance(xs, str):
        raise TypeError(f"{what} must be a list of instructions, not one string: pass [{xs!r}]")
    xs = list(xs)
    if not xs:
        raise ValueError(f"{what} is empty: pass instructions, or None for the shipped list")
    bad = [x for x in xs if not isinstance(x, str) or not x.strip()]
    if bad:
        raise ValueError(f"{what} contains empty or non-string entries {bad!r}: remove them")
    return xs


def _as_prompt(text: str, prompt_format: str) -> Prompt:
    if prompt_format == "chat":
        return Prompt.chat(text)
    return Prompt.text(f"Human: {text}\n\nAssistant:")


@torch.no_grad()
def _mean_last_positions(
    model: TLModel, prompts: Sequence[Prompt], site: str, k: int, batch_size: int
) -> Float[Tensor, "layer pos d_model"]:
    """Mean of ``blocks.l.hook_{site}`` over prompts at each of the last ``k`` tokens (fp64)."""
    L = n_layers(model)
    device = next(model.parameters()).device
    total = torch.zeros(L, k, d_model(model), dtype=torch.float64)

    def reader(layer: int) -> Any:
        def read(x: Tensor, hook: Any) -> Tensor:
            total[layer] += x[:, -k:].detach().double().sum(0).cpu()
            return x

        return read

    hooks: list[tuple[str | Callable[..., Any], Callable[..., Any]]] = [
        (hook_name(layer, site), reader(layer)) for layer in range(L)
    ]
    with model.hooks(fwd_hooks=hooks):
        for i, part in in_batches(prompts, batch_size):
            batch = encode(tokenizer_of(model), part, device=device)
            short = (batch.attention_mask.sum(-1) < k).nonzero().flatten().tolist()
            if short:
                raise ValueError(
                    f"prompts {[i + j for j in short]} have fewer than positions={k} tokens"
                )
            # left-padded: the last k tokens are real
            model(batch.input_ids, **padded_kwargs(model, batch.attention_mask))
    return total / len(prompts)


def refusal_directions(
    model: TLModel,
    harmful: Sequence[str] | None = None,
    harmless: Sequence[str] | None = None,
    *,
    site: str = "resid_post",
    position: int | None = -2,
    positions: int | None = None,
    prompt_format: str = "chat",
    batch_size: int = 32,
) -> RefusalDirections:
    """The difference-in-means refusal direction at every layer (Arditi et al. 2024).

    The defaults are Macar et al.'s (block output, prompt position -2); Arditi's is
    ``site="resid_pre", position=None, positions=k``.

    Args:
        harmful, harmless: instructions (default: :func:`refusal_prompts`).
        site: ``resid_post`` (the output of block ``l``), ``resid_pre`` (its input) or
            ``resid_mid``.
        position: the one prompt position the direction is read at (``-1`` = the last
            token); None: the mean over the last ``positions`` tokens.
        positions: how many of the last template tokens are read and kept per position
            (default: ``-position``, or 1 when ``position`` is None).
        prompt_format: ``"chat"`` (the model's template with the generation prompt) or
            ``"text"`` (``Human: {x}\\n\\nAssistant:``, for models without a template).

    Example::

        ref = refusal_directions(model, positions=3)
        ref.norms.argmax()  # the layer where harmful and harmless separate most
    """
    harmful = _check_instructions(
        refusal_prompts("harmful") if harmful is None else harmful, "harmful"
    )
    harmless = _check_instructions(
        refusal_prompts("harmless") if harmless is None else harmless, "harmless"
    )
    if position is not None and (
        isinstance(position, bool) or not isinstance(position, int) or position >= 0
    ):
        raise ValueError(f"position must be a negative int (-1 = last token), got {position!r}")
    if positions is None:
        positions = 1 if position is None else -position
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
        raise ValueError(f"positions must be a positive int (last k tokens), got {positions!r}")
    if position is not None and -position > positions:
        raise ValueError(f"position {position} is not among the last positions={positions}")
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    if prompt_format not in ("chat", "text"):
        raise ValueError(f"prompt_format must be 'chat' or 'text', got {prompt_format!r}")
    check_batch_size(batch_size)
    pos = [_as_prompt(x, prompt_format) for x in harmful]
    neg = [_as_prompt(x, prompt_format) for x in harmless]
    logger.info("refusal directions: %d harmful, %d harmless prompts", len(pos), len(neg))
    mean_h = _mean_last_positions(model, pos, site, positions, batch_size)
    mean_n = _mean_last_positions(model, neg, site, positions, batch_size)
    if position is None:
        diff64 = mean_h.mean(1) - mean_n.mean(1)
    else:
        diff64 = mean_h[:, position] - mean_n[:, position]
    norms = torch.linalg.vector_norm(diff64, dim=-1, keepdim=True)
    # where the means agree (e.g. block 0's input at a template token: the same embedding for
    # every prompt) there is no direction: leave a zero row, which abliteration skips
    none = norms <= 1e-6 * norms.max()
    if bool(none.all()):
        raise ValueError("harmful and harmless means are equal at every layer: use other prompts")
    if bool(none.any()):
        logger.info("no refusal direction at layers %s (equal means)", none.flatten().nonzero())
    diff = torch.where(none, 0.0, diff64).float()
    return RefusalDirections(
        directions=torch.where(none, 0.0, diff64 / norms.clamp(min=1e-300)).float(),
        mean_diff=diff,
        harmful_mean=mean_h.float(),
        harmless_mean=mean_n.float(),
        site=site,
        positions=positions,
        n_harmful=len(pos),
        n_harmless=len(neg),
        prompt_format=prompt_format,
        model=model_info(model).name,
        fingerprint=fingerprint(model),
        position=position,
    )


# ---------------------------------------------------------------------------------------------
# abliteration


@dataclass(frozen=True, eq=False)
class Abliteration:
    """Remove ``w_l·(h·r̂_l)r̂_l`` from the residual stream: a value, validated on construction.

    Args:
        direction: ``[d_model]`` (one direction for every layer, Arditi's choice) or
            ``[n_layers, d_model]`` (row ``l`` for block ``l``); normalised here.
        weight: one weight, or one per layer (``[n_layers]``): 1 removes the projection,
            0 leaves that layer's sites unhooked (bit-identical), values between scale it.
        site: ``resid_pre`` (every block's input and the last block's output, Arditi's) or
            ``resid_post`` (every block's output, Macar's), :data:`ABLATION_SITES`.

    A zero row of a per-layer ``direction`` (a layer without a direction) is left unhooked
    like a weight of 0.
    """

    direction: Float[Tensor, "*layer d_model"]
    weight: float | Sequence[float] | Tensor = 1.0
    site: str = "resid_pre"
    _unit: Tensor = field(init=False, repr=False)
    _weights: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.site not in ABLATION_SITES:
            raise ValueError(f"site must be one of {ABLATION_SITES}, got {self.site!r}")
        r = torch.as_tensor(self.direction)
        if not r.is_floating_point() or r.ndim not in (1, 2) or r.shape[-1] == 0:
            raise ValueError(
                f"direction must be a float tensor [d_model] or [n_layers, d_model], got "
                f"{tuple(r.shape)} {r.dtype}"
            )
        r = r.detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(r).all()):
            raise ValueError("direction contains NaN or inf")
        norms = torch.linalg.vector_norm(r, dim=-1, keepdim=True)
        if r.ndim == 1 and float(norms) == 0:
            raise ValueError("direction is zero: a zero vector has no direction")
        if r.ndim == 2 and bool((norms == 0).all()):
            raise ValueError("every direction row is zero: there is nothing to remove")
        w = torch.as_tensor(self.weight, dtype=torch.float32).detach().cpu()
        if w.ndim > 1:
            raise ValueError(f"weight must be a number or one per layer, got {tuple(w.shape)}")
        if not bool(torch.isfinite(w).all()):
            raise ValueError("weight contains NaN or inf")
        if r.ndim == 2 and w.ndim == 1 and w.shape[0] != r.shape[0]:
            raise ValueError(
                f"{r.shape[0]} directions but {w.shape[0]} weights: give one per layer"
            )
        unit = (r / norms.clamp(min=torch.finfo(torch.float32).tiny)).reshape(-1, r.shape[-1])
        object.__setattr__(self, "_unit", unit)
        object.__setattr__(self, "_weights", w.reshape(-1))

    @classmethod
    def from_refusal(
        cls,
        ref: RefusalDirections,
        *,
        weight: float | Sequence[float] | Tensor = 1.0,
        layer: int | None = None,
        site: str | None = None,
    ) -> Abliteration:
        """Per-layer refusal directions (``layer=None``) or ``ref``'s direction of one layer
        used at every layer (``layer=l``, Arditi et al.'s single direction). ``site``
        defaults to where the directions were read (``resid_post``), else ``resid_pre``."""
        if site is None:
            site = "resid_post" if ref.site == "resid_post" else "resid_pre"
        if layer is None:
            return cls(ref.directions, weight, site)
        return cls(ref.direction(layer), weight, site)

    @property
    def per_layer(self) -> bool:
        return self._unit.shape[0] > 1 or self._weights.shape[0] > 1

    def for_model(self, layers: int) -> tuple[Tensor, Tensor]:
        """``(directions [layers, d_model], weights [layers])`` for a model of ``layers``."""
        for name, t in (("directions", self._unit), ("weights", self._weights)):
            if t.shape[0] not in (1, layers):
                raise ValueError(
                    f"the abliteration has {t.shape[0]} {name} but the model has {layers} "
                    "blocks: give one per block, or a single one"
                )
        return self._unit.expand(layers, -1), self._weights.expand(layers)

    def __repr__(self) -> str:
        w = self._weights
        weight = f"{float(w[0]):g}" if w.numel() == 1 else f"[{w.numel()} values]"
        shape = tuple(torch.as_tensor(self.direction).shape)
        return f"Abliteration(direction={shape}, weight={weight}, site={self.site!r})"


def abliteration_sites(layers: int, site: str = "resid_pre") -> list[tuple[str, int]]:
    """``(hook name, layer whose direction and weight apply)`` for a model of ``layers``."""
    if site == "resid_post":
        return [(hook_name(i, "resid_post"), i) for i in range(layers)]
    if site != "resid_pre":
        raise ValueError(f"site must be one of {ABLATION_SITES}, got {site!r}")
    return [(hook_name(i, "resid_pre"), i) for i in range(layers)] + [
        (hook_name(layers - 1, "resid_post"), layers - 1)
    ]


def _ablate_hook(r: Tensor, w: float) -> Any:
    cache: dict[torch.device, Tensor] = {}

    def hook(x: Tensor, hook: Any) -> Tensor:
        if x.device not in cache:
            cache[x.device] = r.to(x.device)
        rd = cache[x.device]
        xf = x.float()
        out = xf - w * (xf @ rd)[..., None] * rd
        return out.to(x.dtype)

    return hook


@contextmanager
def abliterated(model: TLModel, abliteration: Abliteration) -> Iterator[tuple[str, ...]]:
    """Apply ``abliteration`` to every forward of ``model`` inside the block; yields the hooked
    sites. Hooks live at a fresh hook-context level and are removed when the block ends,
    exception or not; sites with weight 0 are not hooked at all.

    It composes with :func:`mechintro.inject.injected` (and :func:`~mechintro.generation.
    generate` with ``injection=``): at site ``resid_pre`` an injection at block ``L < n-1`` is
    added at ``L``'s output and its component along ``r̂`` is removed where block ``L+1``
    reads it; where both hook one site (``resid_post``: block ``L``'s output), hooks run in
    the order they were entered.

    Example::

        with abliterated(model, Abliteration(r_hat, weight=[0, 0, 1, 1, 1, 0.5])):
            logits = model(batch.input_ids)
    """
    if not isinstance(abliteration, Abliteration):
        raise TypeError(f"expected an Abliteration, got {type(abliteration).__name__}")
    layers = n_layers(model)
    if abliteration._unit.shape[-1] != d_model(model):
        raise ValueError(
            f"direction width {abliteration._unit.shape[-1]} does not match the model's d_model "
            f"{d_model(model)}: was it computed on another model?"
        )
    units, weights = abliteration.for_model(layers)
    hooks: list[tuple[str | Callable[..., Any], Callable[..., Any]]] = []
    names: list[str] = []
    points = model.hook_dict  # a bridge rebuilds it on every access: read it once
    for name, layer in abliteration_sites(layers, abliteration.site):
        w = float(weights[layer])
        if w == 0.0 or not bool(units[layer].any()):
            continue
        if name not in points:
            raise KeyError(f"{type(model).__name__} has no hook point {name!r}")
        hooks.append((name, _ablate_hook(units[layer].clone(), w)))
        names.append(name)
    with model.hooks(fwd_hooks=hooks):
        yield tuple(names)
