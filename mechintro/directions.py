"""Directions in the residual stream: refusal and abliteration, and the geometry of detection.

**Refusal direction** (Arditi et al. 2024, "Refusal in Language Models Is Mediated by a Single
Direction", arXiv:2406.11717). Run harmful and harmless instructions (the chat template with
the generation prompt) and average the residual stream at each layer over the last ``k``
template positions (the post-instruction tokens, e.g. ``<end_of_turn>\\n<start_of_turn>model
\\n``); the refusal direction of layer ``l`` is the normalised difference of the means,
harmful − harmless. :func:`refusal_directions` returns all layers at once.

**Abliteration** (Arditi et al. 2024; Macar et al. 2026, §7 of PROTOCOLS.md: TPR 10.8% →
63.8%). Remove the direction's projection from the residual stream at every layer and
position: ``h ← h − w_l·(h·r̂)r̂``. :class:`Abliteration` is the intervention as a value
(directions and per-layer weights, validated); :func:`abliterated` turns it into hooks for
the duration of a ``with`` block. The sites are ``blocks.l.hook_resid_pre`` of every block
``l`` (with ``r̂_l``, ``w_l``) and ``blocks.{n-1}.hook_resid_post`` of the last block (with
``r̂_{n-1}``, ``w_{n-1}``): every block reads, and the unembedding reads, a residual stream
with the direction removed. They are the residual stream itself on both backends (on the
bridge, ``hook_resid_mid`` is the pre-MLP norm's input, not the carried residual, so it is
not used). With ``w = 1`` this equals Arditi's weight orthogonalisation except inside each
block, where the MLP still reads what that block's attention wrote along ``r̂`` (removed
before the next block reads it).

**Geometry of detection** (Macar et al. 2026): split concepts into detected and undetected
and take the mean difference of their vectors (:func:`detection_direction`); predict each
concept's detection rate from its vector by ridge regression with nested cross-validation
(:func:`ridge_cv`, :func:`detection_ridge`); and steer with ``A − B`` and ``B − A``
(:func:`bidirectional`).

Example::

    ref = refusal_directions(model)                       # the shipped prompt lists
    abl = Abliteration.from_refusal(ref, weight=1.0)      # per-layer directions
    with abliterated(model, abl):
        out = generate(model, batch, injection=inj, max_new_tokens=40)
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from mechintro.models import (
    TLModel,
    backend_of,
    d_model,
    fingerprint,
    model_info,
    n_layers,
    tokenizer_of,
)
from mechintro.prompts import Prompt, encode
from mechintro.vectors import ConceptVector

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

SITES = ("resid_pre", "resid_mid", "resid_post")


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

    ``directions[l]`` is the unit vector of ``mean_diff[l]`` = mean over harmful prompts and
    the last ``positions`` tokens minus the same over harmless prompts, at
    ``blocks.l.hook_{site}``; a zero row where the two means agree (block 0's input at the
    template's last tokens is the same embedding for every prompt), which
    :class:`Abliteration` leaves alone. ``harmful_mean``/``harmless_mean`` keep each position
    apart (``[layer, pos, d_model]``, last position last) for choosing one (layer, position)
    as Arditi et al. do.
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
    L, bridge = n_layers(model), backend_of(model) == "bridge"
    device = next(model.parameters()).device
    total = torch.zeros(L, k, d_model(model), dtype=torch.float64)

    def reader(layer: int) -> Any:
        def read(x: Tensor, hook: Any) -> Tensor:
            total[layer] += x[:, -k:].detach().double().sum(0).cpu()
            return x

        return read

    hooks: list[tuple[str | Callable[..., Any], Callable[..., Any]]] = [
        (f"blocks.{layer}.hook_{site}", reader(layer)) for layer in range(L)
    ]
    with model.hooks(fwd_hooks=hooks):
        for i in range(0, len(prompts), batch_size):
            batch = encode(tokenizer_of(model), prompts[i : i + batch_size], device=device)
            short = (batch.attention_mask.sum(-1) < k).nonzero().flatten().tolist()
            if short:
                raise ValueError(
                    f"prompts {[i + j for j in short]} have fewer than positions={k} tokens"
                )
            kwargs: dict[str, Any] = {"attention_mask": batch.attention_mask}
            if bridge:
                kwargs["position_ids"] = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
            model(batch.input_ids, **kwargs)  # left-padded: the last k tokens are real
    return total / len(prompts)


def refusal_directions(
    model: TLModel,
    harmful: Sequence[str] | None = None,
    harmless: Sequence[str] | None = None,
    *,
    positions: int = 1,
    site: str = "resid_pre",
    prompt_format: str = "chat",
    batch_size: int = 32,
) -> RefusalDirections:
    """Arditi et al.'s difference-in-means refusal direction at every layer.

    Args:
        harmful, harmless: instructions (default: :func:`refusal_prompts`).
        positions: how many of the last template tokens to average over (the
            post-instruction tokens; 1 = the last token only).
        site: ``resid_pre`` (Arditi's: the input of block ``l``, what :func:`abliterated`
            edits), ``resid_mid`` or ``resid_post``.
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
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
        raise ValueError(f"positions must be a positive int (last k tokens), got {positions!r}")
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    if prompt_format not in ("chat", "text"):
        raise ValueError(f"prompt_format must be 'chat' or 'text', got {prompt_format!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    pos = [_as_prompt(x, prompt_format) for x in harmful]
    neg = [_as_prompt(x, prompt_format) for x in harmless]
    logger.info("refusal directions: %d harmful, %d harmless prompts", len(pos), len(neg))
    mean_h = _mean_last_positions(model, pos, site, positions, batch_size)
    mean_n = _mean_last_positions(model, neg, site, positions, batch_size)
    diff64 = mean_h.mean(1) - mean_n.mean(1)
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

    A zero row of a per-layer ``direction`` (a layer without a direction) is left unhooked
    like a weight of 0.
    """

    direction: Float[Tensor, "*layer d_model"]
    weight: float | Sequence[float] | Tensor = 1.0
    _unit: Tensor = field(init=False, repr=False)
    _weights: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
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
    ) -> Abliteration:
        """Per-layer refusal directions (``layer=None``) or ``ref``'s direction of one layer
        used at every layer (``layer=l``, Arditi et al.'s single direction)."""
        if layer is None:
            return cls(ref.directions, weight)
        return cls(ref.direction(layer), weight)

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
        return f"Abliteration(direction={shape}, weight={weight})"


def abliteration_sites(layers: int) -> list[tuple[str, int]]:
    """``(hook name, layer whose direction and weight apply)`` for a model of ``layers``."""
    return [(f"blocks.{i}.hook_resid_pre", i) for i in range(layers)] + [
        (f"blocks.{layers - 1}.hook_resid_post", layers - 1)
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

    It composes with :func:`mechintro.inject.injected` (and :func:`~mechintro.generate.
    generate` with ``injection=``): an injection at block ``L < n-1`` is added at ``L``'s
    output and its component along ``r̂`` is removed where block ``L+1`` reads it. At the one
    site both may use (the last block's output), hooks run in the order they were entered.

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
    for name, layer in abliteration_sites(layers):
        w = float(weights[layer])
        if w == 0.0 or not bool(units[layer].any()):
            continue
        if name not in model.hook_dict:
            raise KeyError(f"{type(model).__name__} has no hook point {name!r}")
        hooks.append((name, _ablate_hook(units[layer].clone(), w)))
        names.append(name)
    with model.hooks(fwd_hooks=hooks):
        yield tuple(names)


# ---------------------------------------------------------------------------------------------
# geometry of detection


def _vector_of(v: ConceptVector | Tensor) -> Tensor:
    t = v.vector if isinstance(v, ConceptVector) else torch.as_tensor(v)
    t = t.detach().to("cpu", torch.float32)
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"a concept vector is [d_model], got shape {tuple(t.shape)}")
    return t


def _matrix(
    vectors: Mapping[str, ConceptVector | Tensor], words: Sequence[str]
) -> Float[Tensor, "n d_model"]:
    missing = [w for w in words if w not in vectors]
    if missing:
        raise KeyError(f"no vectors for {missing}: extract them first (extract_vectors(...))")
    rows = [_vector_of(vectors[w]) for w in words]
    if len({r.numel() for r in rows}) > 1:
        raise ValueError("vectors have different widths: were they taken from different models?")
    layers = {
        v.layer for w in words if isinstance(v := vectors[w], ConceptVector) and v.layer is not None
    }
    if len(layers) > 1:
        raise ValueError(f"vectors come from layers {sorted(layers)}: use one layer")
    return torch.stack(rows)


def _check_rates(rates: Mapping[str, float | bool]) -> dict[str, float]:
    if not isinstance(rates, Mapping) or not rates:
        raise ValueError("rates must be a non-empty mapping word -> detection rate (or bool)")
    out = {}
    for w, r in rates.items():
        x = float(r)
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"the detection rate of {w!r} is {r!r}: rates lie in [0, 1]")
        out[w] = x
    return out


def per_concept_rates(df: pd.DataFrame, *, column: str | None = None) -> dict[str, float]:
    """Detection rate per injected word of a trials table (:func:`~mechintro.organism.
    evaluate.detection_trials`, graded or not): the mean of ``column`` (default:
    ``detection == "YES"`` if graded, else ``claim``) over the rows with a word."""
    inj = df[df.word.map(lambda w: isinstance(w, str))]
    if column is None:
        hit = inj.detection == "YES" if "detection" in inj else inj.claim.astype(bool)
    else:
        if column not in inj:
            raise KeyError(f"no column {column!r}; the table has {list(inj.columns)}")
        hit = inj[column].astype(float)
    return {str(w): float(v) for w, v in hit.astype(float).groupby(inj.word).mean().items()}


@dataclass(frozen=True)
class DetectionDirection:
    """Mean vector of detected concepts minus that of undetected ones (Macar et al. 2026).

    ``direction`` is a :class:`~mechintro.vectors.ConceptVector` (method
    ``"mean-difference"``, not normalised: its norm says how far apart the groups are) with
    the provenance of the vectors it came from; ``unit`` is its direction.
    """

    direction: ConceptVector
    detected: tuple[str, ...]
    undetected: tuple[str, ...]
    threshold: float

    @property
    def unit(self) -> Float[Tensor, " d_model"]:
        return self.direction.vector / self.direction.norm


def detection_direction(
    vectors: Mapping[str, ConceptVector | Tensor],
    rates: Mapping[str, float | bool],
    *,
    threshold: float = 0.5,
) -> DetectionDirection:
    """Split concepts by detection (``rate >= threshold``, or a bool) and take the mean
    difference of their vectors, detected − undetected.

    Example::

        rates = per_concept_rates(grade_trials(trials, category))
        d = detection_direction(vectors, rates, threshold=0.5)
    """
    r = _check_rates(rates)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    words = list(r)
    X = _matrix(vectors, words)
    hit = torch.tensor([r[w] >= threshold for w in words])
    if bool(hit.all()) or not bool(hit.any()):
        side = "detected" if bool(hit.all()) else "undetected"
        raise ValueError(
            f"every concept is {side} at threshold {threshold}: the split needs both groups "
            "(choose another threshold, or other concepts)"
        )
    diff = X[hit].mean(0) - X[~hit].mean(0)
    ref = next((v for v in vectors.values() if isinstance(v, ConceptVector)), None)
    detected = tuple(w for w, h in zip(words, hit.tolist()) if h)
    undetected = tuple(w for w, h in zip(words, hit.tolist()) if not h)
    cv = ConceptVector(
        "detected-undetected",
        diff,
        ref.layer if ref is not None else None,
        "mean-difference",
        model=ref.model if ref is not None else None,
        revision=ref.revision if ref is not None else None,
        fingerprint=ref.fingerprint if ref is not None else None,
        template=f"mean(detected) − mean(undetected), rate >= {threshold:g}",
        baseline=undetected,
        resid_norm=ref.resid_norm if ref is not None else None,
    )
    return DetectionDirection(cv, detected, undetected, float(threshold))


#: ridge penalties, in units of the mean squared norm of the centred training rows
ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-4, 3, 15))


@dataclass(frozen=True, eq=False)
class RidgeResult:
    """Nested cross-validated ridge regression: out-of-fold predictions and their fit.

    ``r2`` is the pooled out-of-fold R² (``1 − Σ(y−ŷ)²/Σ(y−ȳ)²``; 0 is the mean's score,
    negative is worse), ``correlation`` the Pearson r of ``predictions`` with ``y``,
    ``fold_r2`` each outer fold's R² (about the fold's own mean) and ``alphas`` the penalty
    chosen in each outer fold by the inner cross-validation (units: :data:`ALPHAS`).
    """

    r2: float
    correlation: float
    fold_r2: tuple[float, ...]
    alphas: tuple[float, ...]
    predictions: np.ndarray
    y: np.ndarray
    folds: np.ndarray  # the outer fold of each sample
    alpha_grid: tuple[float, ...]
    words: tuple[str, ...] | None = None


def _folds(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty(n, dtype=np.int64)
    for f, idx in enumerate(np.array_split(rng.permutation(n), k)):
        out[idx] = f
    return out


def _ridge_predict(
    Xtr: np.ndarray, ytr: np.ndarray, Xte: np.ndarray, alphas: Sequence[float]
) -> np.ndarray:
    """Predictions ``[len(alphas), n_test]`` of ridge fits with an unpenalised intercept.

    One SVD of the centred training matrix serves every penalty; penalties are scaled by the
    mean squared norm of the centred rows, so the grid does not depend on the vectors' scale.
    """
    mx, my = Xtr.mean(0), ytr.mean()
    Xc, yc = Xtr - mx, ytr - my
    U, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    scale = float((s**2).sum()) / max(len(ytr), 1)
    scale = scale if scale > 0 else 1.0
    Uy = U.T @ yc
    proj = (Xte - mx) @ Vt.T  # [n_test, rank]
    out = np.empty((len(alphas), Xte.shape[0]))
    for i, a in enumerate(alphas):
        coef = s / (s**2 + a * scale) * Uy
        out[i] = proj @ coef + my
    return out


def _r2(y: np.ndarray, pred: np.ndarray) -> float:
    ss = float(((y - y.mean()) ** 2).sum())
    return float("nan") if ss == 0 else 1.0 - float(((y - pred) ** 2).sum()) / ss


def ridge_cv(
    X: Float[Tensor, "n d"] | np.ndarray,
    y: Float[Tensor, " n"] | np.ndarray | Sequence[float],
    *,
    alphas: Sequence[float] = ALPHAS,
    outer: int = 5,
    inner: int = 5,
    seed: int = 0,
    words: Sequence[str] | None = None,
) -> RidgeResult:
    """Ridge regression of ``y`` on ``X`` scored out of fold, with its penalty chosen inside.

    The outer ``outer``-fold split scores the model; inside each outer training set, an
    ``inner``-fold split picks the penalty with the lowest pooled squared error (ties: the
    largest penalty), which is then refitted on the whole outer training set. Nothing of a
    test fold is seen when its prediction is made. Seeded (``numpy`` generator).

    Example::

        res = ridge_cv(X, y, outer=5, inner=5, seed=0)
        res.r2, res.correlation, res.alphas
    """
    Xn = np.asarray(X.detach().cpu() if isinstance(X, Tensor) else X, dtype=np.float64)
    yn = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y, dtype=np.float64)
    if Xn.ndim != 2 or yn.ndim != 1 or Xn.shape[0] != yn.shape[0]:
        raise ValueError(
            f"X must be [n, d] and y [n] with the same n, got {Xn.shape} and {yn.shape}"
        )
    if not (np.isfinite(Xn).all() and np.isfinite(yn).all()):
        raise ValueError("X or y contains NaN or inf")
    for name, k in (("outer", outer), ("inner", inner)):
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"{name} must be an int >= 2 (folds), got {k!r}")
    n = Xn.shape[0]
    smallest_train = n - math.ceil(n / outer)
    if smallest_train < inner or n < outer:
        raise ValueError(
            f"{n} samples are too few for {outer} outer × {inner} inner folds: give more "
            "samples or fewer folds"
        )
    grid = [float(a) for a in alphas]
    if not grid or any(not (math.isfinite(a) and a > 0) for a in grid):
        raise ValueError("alphas must be a non-empty list of positive numbers")
    if words is not None and len(words) != n:
        raise ValueError(f"{len(words)} words for {n} samples")
    rng = np.random.default_rng(seed)
    folds = _folds(n, outer, rng)
    pred = np.empty(n)
    chosen, fold_r2 = [], []
    for f in range(outer):
        tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        inner_folds = _folds(len(tr), inner, rng)
        sse = np.zeros(len(grid))
        for g in range(inner):
            itr, ite = tr[inner_folds != g], tr[inner_folds == g]
            p = _ridge_predict(Xn[itr], yn[itr], Xn[ite], grid)
            sse += ((p - yn[ite]) ** 2).sum(1)
        best = max(range(len(grid)), key=lambda i: (-sse[i], grid[i]))
        chosen.append(grid[best])
        pred[te] = _ridge_predict(Xn[tr], yn[tr], Xn[te], [grid[best]])[0]
        fold_r2.append(_r2(yn[te], pred[te]))
    corr = float(np.corrcoef(pred, yn)[0, 1]) if pred.std() > 0 and yn.std() > 0 else float("nan")
    return RidgeResult(
        r2=_r2(yn, pred),
        correlation=corr,
        fold_r2=tuple(fold_r2),
        alphas=tuple(chosen),
        predictions=pred,
        y=yn,
        folds=folds,
        alpha_grid=tuple(grid),
        words=tuple(words) if words is not None else None,
    )


def detection_ridge(
    vectors: Mapping[str, ConceptVector | Tensor],
    rates: Mapping[str, float | bool],
    **kwargs: Any,
) -> RidgeResult:
    """:func:`ridge_cv` of each concept's detection rate on its vector (``kwargs`` go there).

    Example::

        res = detection_ridge(vectors, per_concept_rates(trials), outer=5, inner=4)
    """
    r = _check_rates(rates)
    words = list(r)
    X = _matrix(vectors, words)
    return ridge_cv(X, [r[w] for w in words], words=words, **kwargs)


@dataclass(frozen=True)
class SteeringPair:
    """``a − b`` and ``b − a``: steer towards one concept and away from the other, both ways."""

    a_minus_b: ConceptVector
    b_minus_a: ConceptVector


def bidirectional(a: ConceptVector, b: ConceptVector) -> SteeringPair:
    """The two difference vectors of concepts ``a`` and ``b`` (Macar et al.'s bidirectional
    steering), with provenance: method ``"difference"``, ``baseline`` = the subtracted word.

    Example::

        pair = bidirectional(vectors["Dust"], vectors["Peace"])
        Injection(layer=20, vector=pair.a_minus_b.vector, strength=4.0)
    """
    for name, v in (("a", a), ("b", b)):
        if not isinstance(v, ConceptVector):
            raise TypeError(f"{name} must be a ConceptVector, got {type(v).__name__}")
    if a.vector.numel() != b.vector.numel():
        raise ValueError("a and b have different widths: were they taken from different models?")
    if a.layer is not None and b.layer is not None and a.layer != b.layer:
        raise ValueError(f"a is from layer {a.layer} and b from layer {b.layer}: use one layer")
    for attr in ("model", "fingerprint"):
        x, y = getattr(a, attr), getattr(b, attr)
        if x is not None and y is not None and x != y:
            raise ValueError(f"a and b come from different models ({attr}: {x!r} vs {y!r})")
    if a.word == b.word and torch.equal(a.vector, b.vector):
        raise ValueError("a and b are the same vector: the differences would be zero")
    norms = [x for x in (a.resid_norm, b.resid_norm) if x is not None]

    def diff(p: ConceptVector, q: ConceptVector) -> ConceptVector:
        return ConceptVector(
            f"{p.word}-{q.word}",
            p.vector - q.vector,
            p.layer if p.layer is not None else q.layer,
            "difference",
            model=p.model or q.model,
            revision=p.revision or q.revision,
            fingerprint=p.fingerprint or q.fingerprint,
            prompt_format=p.prompt_format,
            template=f"{p.method}:{p.word} − {q.method}:{q.word}",
            baseline=q.word,
            resid_norm=sum(norms) / len(norms) if norms else None,
        )

    return SteeringPair(diff(a, b), diff(b, a))
