"""Using transcoders on a model: reconstruction error, sparse feature caches, and splicing.

* :func:`evaluate`: the fraction of variance unexplained (FVU) of each transcoder on real
  activations, ``Σ‖y − ŷ‖² / Σ‖y − ȳ‖²`` over the kept tokens (ȳ: their mean MLP output),
  with the mean number of active features (L0) and the fraction never active. Check it
  before trusting a feature (docs/protocols.md §7): an FVU of 0.3 means 30% of what the MLP writes
  is in the error term, not in any feature.
* :func:`feature_activations`: feature activations over many prompts, stored sparse (CSR:
  a few dozen features per token out of thousands), with one transcoder on the model's
  device at a time. A dense fp32 cache would hold every feature of every layer for every
  token: ``4 · n_tokens · n_layers · d_sae`` bytes, hundreds of GB for a real model.
* :func:`splice`: a context manager that replaces MLP outputs with the transcoders'
  reconstructions, optionally plus the error term (``y − ŷ``, detached) so the model's
  outputs are unchanged while gradients and feature edits flow through the features.

Example::

    from mechintro import load_model
    from mechintro.analysis.transcoders import evaluate, organism_transcoders, splice

    model = load_model("builtin:organism")
    tcs = organism_transcoders()
    evaluate(model, tcs, prompts).to_frame()          # FVU per layer
    with splice(model, tcs, error=True) as state:    # logits unchanged
        logits = model(ids)
    state.acts[4]                                     # the features of block 4's MLP
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechintro.analysis.transcoders.core import (
    Transcoder,
    TranscoderLike,
    as_transcoder,
    is_registry_pair,
)
from mechintro.analysis.transcoders.sites import (
    MLPSites,
    batches,
    check_block,
    mlp_sites,
    run_reading,
    token_mask,
)
from mechintro.inject import Injection
from mechintro.models import TLModel, d_model
from mechintro.prompts import PromptBatch, PromptLike

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

Transcoders = TranscoderLike | Sequence[TranscoderLike] | Mapping[int, TranscoderLike]


def as_layers(model: TLModel, transcoders: Transcoders) -> dict[int, Transcoder]:
    """``{layer: transcoder}``, checked against ``model`` (block range, width).

    ``transcoders``: one or a list of what :func:`~.core.as_transcoder` takes (a
    :class:`Transcoder`, a sae-lens SAE, a ``(release, sae_id)`` tuple, a folder), or a
    ``{layer: ...}`` mapping, whose key is the layer of an item loaded here (``layer=``).
    """
    if isinstance(transcoders, Mapping):
        items = [as_transcoder(tc, layer=k) for k, tc in transcoders.items()]
    elif isinstance(transcoders, (list, tuple)) and not is_registry_pair(transcoders):
        items = [as_transcoder(tc) for tc in transcoders]
    else:
        items = [as_transcoder(transcoders)]
    if not items:
        raise ValueError("no transcoders given")
    out: dict[int, Transcoder] = {}
    width = d_model(model)
    for tc in items:
        check_block(model, tc.layer)
        if tc.layer in out:
            raise ValueError(f"two transcoders for layer {tc.layer}: give one per block")
        if tc.d_in != width or tc.d_out != width:
            raise ValueError(
                f"the layer-{tc.layer} transcoder maps {tc.d_in} -> {tc.d_out} but the model's "
                f"d_model is {width}: it was trained for another model; load the transcoders "
                "made for this one"
            )
        out[tc.layer] = tc
    return dict(sorted(out.items()))


def _on(tc: Transcoder, device: torch.device) -> Transcoder:
    return tc if tc.device == device else tc.to(device=device)


# ---------------------------------------------------------------------------------------------
# reconstruction error


@dataclass(frozen=True, eq=False)
class ReconstructionResult:
    """Per transcoder (``layers[i]``): FVU, mean squared error and variance (per token, summed
    over dimensions), L0 (mean active features per token) and the fraction of features never
    active, over ``n_tokens`` real tokens."""

    layers: tuple[int, ...]
    fvu: Tensor
    mse: Tensor
    variance: Tensor
    l0: Tensor
    dead: Tensor
    n_tokens: int

    def __getitem__(self, layer: int) -> dict[str, float]:
        try:
            i = self.layers.index(layer)
        except ValueError:
            raise KeyError(f"no transcoder of layer {layer}; layers: {self.layers}") from None
        return {k: float(getattr(self, k)[i]) for k in ("fvu", "mse", "variance", "l0", "dead")}

    def to_frame(self) -> pd.DataFrame:
        import pandas as pd

        frame = pd.DataFrame({"layer": list(self.layers)})
        for k in ("fvu", "mse", "variance", "l0", "dead"):
            frame[k] = getattr(self, k).tolist()
        frame["n_tokens"] = self.n_tokens
        return frame


class _Stats:
    """Streaming sums for FVU (float64): Σ‖y−ŷ‖², Σy, Σ‖y‖², n, Σ‖a‖₀, features ever on."""

    def __init__(self, d_out: int, d_sae: int) -> None:
        self.err = 0.0
        self.sq = 0.0
        self.sum = torch.zeros(d_out, dtype=torch.float64)
        self.n = 0
        self.l0 = 0.0
        self.alive = torch.zeros(d_sae, dtype=torch.bool)

    def add(self, y: Tensor, y_hat: Tensor, acts: Tensor) -> None:
        y64 = y.double()
        self.err += float((y64 - y_hat.double()).pow(2).sum())
        self.sq += float(y64.pow(2).sum())
        self.sum += y64.sum(0).cpu()
        self.n += int(y.shape[0])
        on = acts > 0
        self.l0 += float(on.sum())
        self.alive |= on.any(0).cpu()

    def result(self) -> tuple[float, float, float, float, float]:
        if self.n == 0:
            raise ValueError("no tokens to measure: the prompts have no kept tokens")
        var = (self.sq - float(self.sum.pow(2).sum()) / self.n) / self.n
        mse = self.err / self.n
        return mse / var, mse, var, self.l0 / self.n, 1.0 - float(self.alive.double().mean())


def reconstruction(
    transcoder: Transcoder,
    x: Float[Tensor, "n d_in"],
    y: Float[Tensor, "n d_out"],
    batch_size: int = 4096,
) -> ReconstructionResult:
    """FVU, L0 and dead fraction of one transcoder on given MLP inputs ``x`` and outputs ``y``
    (e.g. :func:`~mechintro.analysis.transcoders.sites.mlp_activations`)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
    st = _Stats(transcoder.d_out, transcoder.d_sae)
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(transcoder.device)
            acts = transcoder.encode(xb)
            y_hat = transcoder.decode(acts) + transcoder.skip_term(xb)
            st.add(y[i : i + batch_size].to(transcoder.device), y_hat, acts)
    return _result([transcoder.layer], [st.result()], st.n)


def _result(layers: list[int], rows: Sequence[tuple[float, ...]], n: int) -> ReconstructionResult:
    cols = torch.tensor(rows, dtype=torch.float64).T
    return ReconstructionResult(tuple(layers), *cols, n_tokens=n)  # type: ignore[misc]


@torch.no_grad()
def evaluate(
    model: TLModel,
    transcoders: Transcoders,
    prompts: PromptLike,
    *,
    injection: Injection | Sequence[Injection] | None = None,
    batch_size: int = 64,
    skip_bos: bool = True,
) -> ReconstructionResult:
    """Reconstruction error of each transcoder on the model's real MLP activations for
    ``prompts`` (under ``injection``, if given), streamed: nothing but sums is kept.

    One transcoder is on the model's device at a time; each layer runs its own forwards,
    stopped right after that block's MLP. BOS tokens are left out by default (``skip_bos``):
    their activations are huge, constant outliers that would flatter the FVU.

    Example::

        res = evaluate(model, organism_transcoders(), prompts)
        res[4]["fvu"]
    """
    tcs = as_layers(model, transcoders)
    device = next(model.parameters()).device
    rows = []
    n = 0
    for layer, tc in tcs.items():
        sites = mlp_sites(model, layer)
        tc_dev = _on(tc, device)
        st = _Stats(tc.d_out, tc.d_sae)
        for _, batch, injs in batches(model, prompts, batch_size, injection):
            x, y = _read_layer(model, batch, injs, sites)
            keep = token_mask(model, batch, skip_bos)
            x, y = x[keep], y[keep]
            acts = tc_dev.encode(x)
            st.add(y, tc_dev.decode(acts) + tc_dev.skip_term(x), acts)
        del tc_dev
        rows.append(st.result())
        n = st.n
        logger.info("layer %d: FVU %.4f, L0 %.1f over %d tokens", layer, rows[-1][0],
                    rows[-1][3], st.n)  # fmt: skip
    return _result(list(tcs), rows, n)


def _read_layer(
    model: TLModel, batch: PromptBatch, injs: tuple[Injection, ...], sites: MLPSites
) -> tuple[Tensor, Tensor]:
    got: dict[str, Tensor] = {}
    reads = {
        sites.read: lambda t: got.__setitem__("x", sites.mlp_input(t)),
        sites.write: lambda t: got.__setitem__("y", t),
    }
    run_reading(model, batch, reads, injs, stop_after=sites.write)
    return got["x"], got["y"]


# ---------------------------------------------------------------------------------------------
# sparse feature caches


@dataclass(frozen=True, eq=False)
class FeatureActivations:
    """Feature activations of many prompts, one sparse CSR matrix ``[n_tokens, d_sae]`` per
    layer (``acts[layer]``, on the CPU); row ``i`` is token ``position[i]`` (counted from the
    prompt's first real token) of prompt ``prompt[i]``, whose id is ``token[i]``."""

    acts: dict[int, Tensor]
    prompt: Int[Tensor, " n_tokens"]
    position: Int[Tensor, " n_tokens"]
    token: Int[Tensor, " n_tokens"]
    layers: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(sorted(self.acts)))

    def __len__(self) -> int:
        return int(self.prompt.shape[0])

    def _get(self, layer: int) -> Tensor:
        if layer not in self.acts:
            raise KeyError(f"no activations of layer {layer}; layers: {self.layers}")
        return self.acts[layer]

    def dense(self, layer: int) -> Float[Tensor, "n_tokens d_sae"]:
        """The dense ``[n_tokens, d_sae]`` matrix of one layer (mind the memory)."""
        return self._get(layer).to_dense()

    def rows_of(self, prompt: int) -> Tensor:
        """Row indices of one prompt's tokens."""
        return (self.prompt == prompt).nonzero().flatten()

    @property
    def nbytes(self) -> int:
        """Bytes stored: CSR row pointers, column indices and values of every layer."""
        total = 0
        for a in self.acts.values():
            total += sum(t.numel() * t.element_size() for t in
                         (a.crow_indices(), a.col_indices(), a.values()))  # fmt: skip
        return total

    @property
    def dense_nbytes(self) -> int:
        """Bytes the same activations would take as dense fp32 matrices."""
        return sum(a.shape[0] * a.shape[1] * 4 for a in self.acts.values())

    def l0(self, layer: int) -> float:
        """Mean number of active features per token."""
        a = self._get(layer)
        return a.values().numel() / max(1, a.shape[0])

    def frequency(self, layer: int) -> Float[Tensor, " d_sae"]:
        """Fraction of tokens on which each feature is active."""
        a = self._get(layer)
        counts = torch.bincount(a.col_indices().long(), minlength=a.shape[1])
        return counts.double() / max(1, a.shape[0])

    def mean(self, layer: int) -> Float[Tensor, " d_sae"]:
        """Mean activation of each feature over all tokens (zeros included)."""
        a = self._get(layer)
        out = torch.zeros(a.shape[1], dtype=torch.float64)
        out.index_add_(0, a.col_indices().long(), a.values().double())
        return out / max(1, a.shape[0])

    def top(self, layer: int, k: int = 10, by: str = "mean") -> list[tuple[int, float]]:
        """The ``k`` features with the largest ``by`` = "mean" activation or "frequency"."""
        key = {"mean": self.mean, "frequency": self.frequency}.get(by)
        if key is None:
            raise ValueError(f"by must be 'mean' or 'frequency', got {by!r}")
        v = key(layer)
        idx = v.argsort(descending=True)[:k].tolist()
        return [(i, float(v[i])) for i in idx]


def _cat_csr(parts: list[Tensor], width: int, dtype: torch.dtype) -> Tensor:
    crows, cols, vals, offset = [torch.zeros(1, dtype=torch.int64)], [], [], 0
    for p in parts:
        crows.append(p.crow_indices()[1:].long() + offset)
        cols.append(p.col_indices())
        vals.append(p.values())
        offset += int(p.values().numel())
    n = sum(int(p.shape[0]) for p in parts)
    index = torch.int32 if offset < 2**31 and width < 2**31 else torch.int64
    return torch.sparse_csr_tensor(
        torch.cat(crows).to(index),
        torch.cat(cols).to(index) if cols else torch.zeros(0, dtype=index),
        torch.cat(vals).to(dtype) if vals else torch.zeros(0, dtype=dtype),
        size=(n, width),
    )


@torch.no_grad()
def feature_activations(
    model: TLModel,
    transcoders: Transcoders,
    prompts: PromptLike,
    *,
    injection: Injection | Sequence[Injection] | None = None,
    batch_size: int = 64,
    skip_bos: bool = True,
    dtype: torch.dtype = torch.float32,
) -> FeatureActivations:
    """Feature activations of every transcoder on the real tokens of ``prompts``, stored
    sparse on the CPU (values in ``dtype``); one transcoder on the model's device at a time.

    Example::

        fa = feature_activations(model, organism_transcoders(), prompts, injection=inj)
        fa.nbytes / fa.dense_nbytes   # ~0.02 for k=32 of 2048 features
        fa.top(4, k=5)
    """
    tcs = as_layers(model, transcoders)
    device = next(model.parameters()).device
    acts: dict[int, Tensor] = {}
    index: tuple[Tensor, Tensor, Tensor] | None = None
    for layer, tc in tcs.items():
        sites = mlp_sites(model, layer)
        tc_dev = _on(tc, device)
        parts: list[Tensor] = []
        rows: list[Tensor] = []
        pos: list[Tensor] = []
        toks: list[Tensor] = []
        for lo, batch, injs in batches(model, prompts, batch_size, injection):
            x, _ = _read_layer(model, batch, injs, sites)
            keep = token_mask(model, batch, skip_bos)
            a = tc_dev.encode(x[keep]).to(dtype)
            parts.append(a.to_sparse_csr().cpu())
            if index is None:
                r, p = keep.nonzero(as_tuple=True)
                rows.append((r + lo).cpu())
                pos.append((p - batch.n_pad[r]).cpu())
                toks.append(batch.input_ids[keep].cpu())
        del tc_dev
        acts[layer] = _cat_csr(parts, tc.d_sae, dtype)
        if index is None:
            index = (torch.cat(rows), torch.cat(pos), torch.cat(toks))
    assert index is not None
    out = FeatureActivations(acts, *index)
    logger.info(
        "feature activations: %d tokens x %d layers, %.2f MB sparse vs %.2f MB dense",
        len(out), len(acts), out.nbytes / 1e6, out.dense_nbytes / 1e6,
    )  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# splicing


@dataclass
class SpliceState:
    """What the spliced transcoders saw on the latest forward: per layer, the MLP input
    ``x``, the feature activations ``acts`` (before any edit), the reconstruction ``y_hat``
    (from the edited features) and the error term ``error`` (true output − unedited
    reconstruction; ``None`` without ``error=True``)."""

    x: dict[int, Tensor] = field(default_factory=dict)
    acts: dict[int, Tensor] = field(default_factory=dict)
    y_hat: dict[int, Tensor] = field(default_factory=dict)
    error: dict[int, Tensor | None] = field(default_factory=dict)


Edit = Callable[[int, Tensor], Tensor]


@contextmanager
def splice(
    model: TLModel,
    transcoders: Transcoders,
    *,
    error: bool = True,
    detach_error: bool = True,
    edit: Edit | None = None,
) -> Iterator[SpliceState]:
    """Inside the block, block L's MLP output (``hook_mlp_out``) is the transcoder's output.

    ``decode(edit(L, acts)) + x·A`` replaces it, plus, with ``error=True``, the error term
    ``y − (decode(acts) + x·A)`` computed on the same forward (detached by default), so an
    unedited splice leaves the model's outputs unchanged and an edit changes the MLP output
    by exactly the decoded change of the features: ablate a feature with
    ``edit=lambda layer, a: a.index_fill(-1, torch.tensor([f]), 0.0)``. Without ``error``,
    the model runs on the reconstruction alone (its outputs show the transcoders' fidelity).
    Transcoders are copied to the model's device if needed; hooks are removed on exit, error
    or not.

    Example::

        with splice(model, tcs, error=True) as state:
            logits = model(ids)
        state.acts[4].shape   # [batch, pos, d_sae]
    """
    tcs = as_layers(model, transcoders)
    device = next(model.parameters()).device
    state = SpliceState()
    pending: dict[int, Tensor] = {}  # MLP inputs read on the current forward
    hooks: list[tuple[str | Callable[..., Any], Callable[..., Any]]] = []
    for layer, tc in tcs.items():
        sites = mlp_sites(model, layer)
        tc_dev = _on(tc, device)
        hooks.append((sites.read, _read_hook(layer, sites, pending)))
        hooks.append((sites.write, _write_hook(layer, tc_dev, state, pending, error,
                                               detach_error, edit)))  # fmt: skip
    with model.hooks(fwd_hooks=hooks):
        yield state


def _read_hook(layer: int, sites: MLPSites, pending: dict[int, Tensor]) -> Callable[..., Tensor]:
    def hook(act: Tensor, hook: Any) -> Tensor:
        pending[layer] = sites.mlp_input(act)
        return act

    return hook


def _write_hook(
    layer: int,
    tc: Transcoder,
    state: SpliceState,
    pending: dict[int, Tensor],
    error: bool,
    detach_error: bool,
    edit: Edit | None,
) -> Callable[..., Tensor]:
    def hook(y: Tensor, hook: Any) -> Tensor:
        x = pending.pop(layer, None)
        if x is None or x.shape[:-1] != y.shape[:-1]:
            raise RuntimeError(
                f"splice: block {layer}'s MLP input was not read on this forward; is another "
                "hook replacing activations between the norm and the MLP?"
            )
        acts = tc.encode(x)
        skip = tc.skip_term(x)
        new = acts if edit is None else edit(layer, acts)
        if new.shape != acts.shape:
            raise ValueError(f"edit returned shape {tuple(new.shape)}, expected {acts.shape}")
        y_hat = tc.decode(new) + skip
        out, err = y_hat, None
        if error:
            err = y.to(tc.dtype) - (y_hat if edit is None else tc.decode(acts) + skip)
            err = err.detach() if detach_error else err
            out = y_hat + err
        state.x[layer], state.acts[layer], state.y_hat[layer] = x, acts, y_hat
        state.error[layer] = err
        return out.to(y.dtype)

    return hook
