"""Concept injection: add ``strength × vector`` to the residual stream at chosen positions.

An :class:`Injection` is a value (frozen, printable, validated up front): a layer, one vector
or one per batch row, one strength or one per row, a position mode and a strength unit. It
does nothing until :func:`injected` turns it into hooks for one :class:`PromptBatch`; the
hooks are always removed when the ``with`` block ends, exception or not.

The site is the output of block ``layer`` (``blocks.{layer}.hook_resid_post``, = HF
``hidden_states[layer + 1]``), as in Lindsey (2025) and Macar et al. (2026). Position modes
(docs/protocols.md §2):

============== =============================================================================
from-trial     from the named ``start`` position (default: the token before ``Trial n``)
               through every generated token (Macar's default)
prompt-only    the same prompt span, no generated token
generation-only only generated tokens
single-token   only the last prompt token (Fonseca Rivera's transient injection)
all            every real (non-padding) token, prompt and generation
span           the marked span named ``start`` (e.g. retroactive injection before a prefill)
before-trial   every real prompt token before the last turn (the one asking the trial
               question: the named position ``last-turn``), no generated token (Macar et al.'s
               trained-bias evaluation, 14_trained_bias_vector.py: "all tokens up until the
               first token of the last user message")
============== =============================================================================

Positions are absolute indices in the left-padded batch (generated tokens start at the padded
prompt length), so a row's padding never shifts where it is steered. The hook works on every
forward: the whole prompt at once, then one position per KV-cached decode step (the hook
counts the positions it has seen, so the injection is never lost on decode steps, the bug of
two public replications), or a full sequence again when no cache is used.

Rows with strength 0 are left bit-identical (``torch.where``, not ``+ 0``): a control row can
sit in the same batch as injected rows.

Example::

    inj = Injection(layer=3, vector=v, strength=4.0, mode="from-trial")
    with injected(model, inj, batch):
        logits = model(batch.input_ids, attention_mask=batch.attention_mask)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechintro.choices import UNITS, PositionMode
from mechintro.models import TLModel, check_layer, d_model, resid_post
from mechintro.prompts import PromptBatch

_NEVER = 2**62  # an "until the end" bound for position ranges


def unit_rows(
    vectors: Float[Tensor, "*rows d_model"], unit: str, resid_norm: float | None = None
) -> Float[Tensor, "*rows d_model"]:
    """What a strength of 1 adds, per row: the one place a strength unit is decided.

    ``"raw"``: the vector as given, so strength ``s`` injects norm ``s·‖v‖`` (Lindsey 2025;
    Macar et al. 2026). ``"resid-norm"``: ``resid_norm × v/‖v‖``, so strengths are multiples
    of the mean residual norm at the layer and compare across layers and models.
    :class:`Injection`, a sweep's frozen rows and the training streams all call this.
    """
    if unit not in UNITS:
        raise ValueError(f"unknown strength unit {unit!r}: use one of {UNITS}")
    if unit == "raw":
        return vectors
    if resid_norm is None or not math.isfinite(resid_norm) or resid_norm <= 0:
        raise ValueError(
            "unit='resid-norm' needs resid_norm=<mean residual norm at the layer> "
            f"(ConceptVector.resid_norm gives it), got {resid_norm}"
        )
    norms = torch.linalg.vector_norm(vectors, dim=-1, keepdim=True)
    if bool((norms == 0).any()):
        raise ValueError("a zero vector cannot be scaled to a residual-norm strength")
    return vectors / norms * resid_norm


@dataclass(frozen=True, eq=False)
class Injection:
    """What to add, where, and how strongly. Validated on construction.

    Args:
        layer: block index; the vector is added to that block's output.
        vector: ``[d_model]`` (same for every row) or ``[batch, d_model]`` (one per row).
        strength: a number, or one per row (``[batch]``); 0 leaves a row untouched.
        mode: a :class:`PositionMode` value.
        start: the named position (from-trial, prompt-only) or span (span) to use.
        unit: ``"raw"``: add ``strength × vector`` (Lindsey/Macar: the injected norm is
            ``s·‖v‖``); ``"resid-norm"``: add ``strength × resid_norm × v/‖v‖``, so that
            strengths compare across layers and models.
        resid_norm: the reference residual norm at ``layer`` (``ConceptVector.resid_norm``);
            required for ``unit="resid-norm"``.
    """

    layer: int
    vector: Float[Tensor, "*rows d_model"]
    strength: float | Sequence[float] | Tensor = 1.0
    mode: PositionMode | str = PositionMode.FROM_TRIAL
    start: str = "trial"
    unit: str = "raw"
    resid_norm: float | None = None
    _delta: Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, int):
            raise TypeError(
                f"layer must be an int block index, got {self.layer!r}; for a depth fraction "
                "use mechintro.models.layer_at_depth(model, fraction)"
            )
        object.__setattr__(self, "mode", PositionMode.parse(self.mode))
        if self.unit not in UNITS:  # before the vector's checks: the first thing to fix
            raise ValueError(f"unknown strength unit {self.unit!r}: use one of {UNITS}")
        v = torch.as_tensor(self.vector)
        if not v.is_floating_point() or v.ndim not in (1, 2) or v.shape[-1] == 0:
            raise ValueError(
                f"vector must be a float tensor [d_model] or [batch, d_model], got "
                f"{tuple(v.shape)} {v.dtype}"
            )
        if not bool(torch.isfinite(v).all()):
            raise ValueError("vector contains NaN or inf: recompute it (check the layer and dtype)")
        s = torch.as_tensor(self.strength, dtype=torch.float32)
        if s.ndim > 1:
            raise ValueError(
                f"strength must be a number or one per row, got shape {tuple(s.shape)}"
            )
        if not bool(torch.isfinite(s).all()):
            raise ValueError("strength contains NaN or inf")
        if v.ndim == 2 and s.ndim == 1 and s.shape[0] != v.shape[0]:
            raise ValueError(f"{v.shape[0]} vectors but {s.shape[0]} strengths: give one per row")
        vf = unit_rows(v.float(), self.unit, self.resid_norm)
        delta = (s[:, None] if s.ndim == 1 else s) * (vf if vf.ndim == 2 else vf[None, :])
        object.__setattr__(self, "_delta", delta)

    @classmethod
    def per_row(
        cls,
        layer: int,
        vectors: Sequence[Tensor | None],
        strengths: Sequence[float],
        **kwargs: Any,
    ) -> Injection:
        """One injection for a batch whose rows add their own vectors.

        A ``None`` row (a control, or a row injected at another layer) gets strength 0, so it
        is left bit-identical (its vector slot holds another row's, multiplied by 0).
        ``kwargs`` are the other fields (``mode``, ``start``, ``unit``, ``resid_norm``).
        """
        if len(vectors) != len(strengths):
            raise ValueError(f"{len(vectors)} vectors but {len(strengths)} strengths")
        filler = next((v for v in vectors if v is not None), None)
        if filler is None:
            raise ValueError("Injection.per_row needs at least one row with a vector")
        return cls(
            layer,
            torch.stack([filler if v is None else v for v in vectors]),
            [0.0 if v is None else s for v, s in zip(vectors, strengths)],
            **kwargs,
        )

    @property
    def rows(self) -> int | None:
        """Batch rows this injection is built for (``None``: any batch)."""
        return None if self._delta.shape[0] == 1 else int(self._delta.shape[0])

    def deltas(self, batch: int) -> Float[Tensor, "batch d_model"]:
        """The vector added to each row (fp32, before casting to the model's dtype)."""
        if self.rows not in (None, batch):
            raise ValueError(
                f"the injection has {self.rows} rows (vectors/strengths) but the batch has "
                f"{batch}: give one vector or strength per prompt, or a single one"
            )
        return self._delta.expand(batch, -1)

    def __repr__(self) -> str:
        s = torch.as_tensor(self.strength)
        strength = f"{float(s):g}" if s.ndim == 0 else f"[{s.shape[0]} values]"
        v = torch.as_tensor(self.vector)
        return (
            f"Injection(layer={self.layer}, vector={tuple(v.shape)}, strength={strength}, "
            f"mode={PositionMode.parse(self.mode).value}, start={self.start!r}, unit={self.unit})"
        )

    def bounds(self, batch: PromptBatch) -> tuple[Tensor, Tensor]:
        """Per-row ``[lo, hi)`` of steered absolute positions (generation continues past T)."""
        T, B = batch.length, len(batch)
        mode = PositionMode.parse(self.mode)
        full = torch.full((B,), _NEVER, dtype=torch.long)
        if mode in (PositionMode.FROM_TRIAL, PositionMode.PROMPT_ONLY):
            lo = batch.position(self.start).cpu()
            return lo, full if mode is PositionMode.FROM_TRIAL else torch.full((B,), T)
        if mode is PositionMode.GENERATION_ONLY:
            return torch.full((B,), T), full
        if mode is PositionMode.SINGLE_TOKEN:
            return torch.full((B,), T - 1), torch.full((B,), T)
        if mode is PositionMode.ALL:
            return batch.position("first").cpu(), full
        if mode is PositionMode.BEFORE_TRIAL:
            return batch.position("first").cpu(), batch.position("last-turn").cpu()
        if self.start not in batch.spans:
            raise KeyError(
                f"span {self.start!r} not in the batch (spans: {sorted(batch.spans)}); mark it "
                "with Prompt(..., marks={name: text})"
            )
        span = batch.spans[self.start].cpu()
        if bool((span[:, 0] < 0).any()):
            raise ValueError(f"span {self.start!r} is missing in some rows")
        return span[:, 0], span[:, 1]


@dataclass
class InjectionLog:
    """What the hooks did: the ``(offset, length)`` of every forward they saw, per injection."""

    injections: tuple[Injection, ...]
    bounds: tuple[tuple[Tensor, Tensor], ...]
    calls: list[list[tuple[int, int]]]

    def add_forward(self, offset: int, n: int) -> None:
        """Log a forward of ``n`` tokens from ``offset`` that the hooks could not log
        themselves (a decode step replayed from a CUDA graph, see :class:`StepPosition`)."""
        for calls in self.calls:
            calls.append((offset, n))

    def steered_positions(self, index: int = 0) -> list[list[int]]:
        """Absolute positions that injection ``index`` steered, per row (deduplicated)."""
        lo, hi = (t.cpu() for t in self.bounds[index])  # one copy each, not one per row
        seen = sorted({p for off, n in self.calls[index] for p in range(off, off + n)})
        steered = torch.tensor(seen, dtype=torch.long)
        keep = (steered[None] >= lo[:, None]) & (steered[None] < hi[:, None])
        return [steered[row].tolist() for row in keep]


@dataclass
class StepPosition:
    """The position of a one-token decode step, as a tensor the hooks read on the device.

    While ``active``, a hook reads the absolute position of the token fed from ``at`` (a
    ``[1]`` long tensor its owner updates in place before each step) instead of counting
    forwards in Python, and leaves logging the step to the owner
    (:meth:`InjectionLog.add_forward`): what a decode step captured once as a CUDA graph and
    replayed needs, since a replay runs no Python. ``slots``: the tensors each hook (by its
    injection's index) steers with on every forward, which a replay reads: a graph kept for
    a later batch is given that batch's vectors and bounds by copying them in (a captured
    forward of a whole batch, :mod:`mechintro.analysis.patch_forwards`, uses only these).
    """

    at: Tensor
    active: bool = False
    slots: dict[int, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)


def _make_hook(
    delta: Tensor,
    lo: Tensor,
    hi: Tensor,
    calls: list[tuple[int, int]],
    first: int = 0,
    step: StepPosition | None = None,
    index: int = 0,
) -> Any:
    cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor, Tensor]] = {}
    state = {"next": first}

    def hook(x: Tensor, hook: Any) -> Tensor:
        n = x.shape[1]
        if x.shape[0] != delta.shape[0]:
            raise ValueError(
                f"injection built for {delta.shape[0]} rows ran on a batch of {x.shape[0]}"
            )
        key = (x.device, x.dtype)
        if key not in cache:  # vectors follow each hook tensor's device and dtype
            cache[key] = (delta.to(x.device, x.dtype), lo.to(x.device), hi.to(x.device))
        d, lo_d, hi_d = cache[key]
        if step is not None:  # the first forward's tensors: those a capture reads (a kept
            step.slots.setdefault(index, (d, lo_d, hi_d))  # one's stay, for load_slots)
        if step is not None and step.active:
            pos = step.at.to(x.device)  # a decode step: its owner logs it
        else:
            # the first forward starts at `first` (0, or after a shared prefix computed
            # without hooks); a later one-token forward continues (KV cache), a longer one
            # re-feeds all
            offset = first if not calls else (state["next"] if n == 1 else 0)
            state["next"] = offset + n
            calls.append((offset, n))
            pos = torch.arange(offset, offset + n, device=x.device)
        mask = (pos[None, :] >= lo_d[:, None]) & (pos[None, :] < hi_d[:, None])
        return torch.where(mask[..., None], x + d[:, None, :], x)

    return hook


def steered_from(injection: Injection | Sequence[Injection], batch: PromptBatch) -> int:
    """The first absolute position any row of ``batch`` is steered at (``_NEVER`` if none)."""
    injections = (injection,) if isinstance(injection, Injection) else tuple(injection)
    first = _NEVER
    for inj in injections:
        lo, _ = inj.bounds(batch)
        active = inj.deltas(len(batch)).abs().sum(-1) != 0
        if bool(active.any()):
            first = min(first, int(lo[active].min()))
    return first


def injection_hooks(
    model: TLModel,
    injection: Injection | Sequence[Injection],
    batch: PromptBatch,
    first_position: int = 0,
    step: StepPosition | None = None,
) -> tuple[list[tuple[str | Callable[..., Any], Callable[..., Any]]], InjectionLog]:
    """The ``(hook name, hook)`` pairs that apply ``injection`` to ``batch``, and their log.

    Validated against ``model`` (layer range, vector width); registered by :func:`injected`
    on either tree (the bridge, or its plain HF twin: :mod:`mechintro.engine.twin`). ``step``: see
    :class:`StepPosition`.
    """
    injections = (injection,) if isinstance(injection, Injection) else tuple(injection)
    width = d_model(model)
    hooks: list[tuple[str | Callable[..., Any], Callable[..., Any]]] = []
    bounds, calls = [], []
    points = model.hook_dict  # a bridge rebuilds it on every access: read it once
    for index, inj in enumerate(injections):
        check_layer(model, inj.layer)
        if inj._delta.shape[-1] != width:
            raise ValueError(
                f"vector width {inj._delta.shape[-1]} does not match the model's d_model "
                f"{width}: was it extracted from another model?"
            )
        delta = inj.deltas(len(batch))
        lo, hi = inj.bounds(batch)
        off = (delta.abs().sum(-1) == 0).to(lo.device)  # strength-0 rows: never steered
        lo = torch.where(off, _NEVER, lo)
        log: list[tuple[int, int]] = []
        name = resid_post(inj.layer)
        if name not in points:
            raise KeyError(f"{type(model).__name__} has no hook point {name!r}")
        hooks.append((name, _make_hook(delta, lo, hi, log, first_position, step, index)))
        bounds.append((lo, hi))
        calls.append(log)
    return hooks, InjectionLog(injections, tuple(bounds), calls)


@contextmanager
def injected(
    model: TLModel,
    injection: Injection | Sequence[Injection],
    batch: PromptBatch,
    *,
    first_position: int = 0,
    step: StepPosition | None = None,
) -> Iterator[InjectionLog]:
    """Apply ``injection`` (one or several) to every forward of ``model`` inside the block.

    Hooks are registered at a fresh TransformerLens hook-context level and removed in
    ``finally``; hooks the caller added before are untouched. ``first_position`` is the
    absolute position of the first forward's first token: 0, or the length of a shared
    prefix that was run (unsteered, see :func:`steered_from`) before the block. Generation
    and the analyses put the same hooks on a bridge's plain HF twin where that runs
    (:func:`mechintro.engine.twin.injected_on`).
    ``step``: one-token forwards take their position from a tensor (:class:`StepPosition`).

    Example::

        with injected(model, Injection(layer=2, vector=v, strength=8.0), batch) as log:
            out = generate(model, batch, max_new_tokens=20)
        log.steered_positions()
    """
    hooks, log = injection_hooks(model, injection, batch, first_position, step)
    with model.hooks(fwd_hooks=hooks):
        yield log
