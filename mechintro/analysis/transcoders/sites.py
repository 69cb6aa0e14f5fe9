"""Where a transcoder reads and writes, on both TransformerLens backends, and reading them.

A transcoder of block L reads the **MLP input** (the residual stream after the pre-MLP norm,
its weight included: HF's ``post_attention_layernorm`` output on Llama/Qwen, Gemma's
``pre_feedforward_layernorm`` output) and writes **what the MLP adds to the residual
stream**, ``resid_post − resid_mid``: TL's ``blocks.L.hook_mlp_out``. On Gemma 2/3 that is
*after* the post-feedforward norm (Gemma Scope's ``post_feedforward_layernorm.output``), not
the MLP module's own output (``blocks.L.mlp.hook_out`` on the bridge); OLMo-2 likewise
normalises after the MLP, and has no norm before it.

=========================== ============================================= ================
backend / architecture      MLP input                                     MLP output
=========================== ============================================= ================
bridge (every architecture) ``blocks.L.mlp.hook_in``                      ``hook_mlp_out``
HookedTransformer, pre-norm ``blocks.L.ln2.hook_normalized`` × ``ln2.w``  ``hook_mlp_out``
                            (+ ``ln2.b`` for LayerNorm)
HookedTransformer, OLMo-2/3 ``blocks.L.hook_resid_mid``                   ``hook_mlp_out``
=========================== ============================================= ================

TransformerLens's ``ln2.hook_normalized`` is *before* the norm's weight, and sae-lens's
configs name ``hook_mlp_in`` (= ``resid_mid``, before the norm) or ``ln2.hook_normalized``:
both wrong inputs on an unprocessed model. A folded model (``fold_ln=True``: ``RMSNormPre``)
has no activation equal to the MLP input at all and is refused. The tests check every row of
the table against the Hugging Face module's own input and output on every tiny architecture.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from mechintro.batching import check_batch_size, in_batches
from mechintro.inject import Injection, injected
from mechintro.models import TLModel, backend_of, forward, hook_name, n_layers, tokenizer_of
from mechintro.prompts import (
    Prompt,
    PromptBatch,
    PromptLike,
    as_prompt_batch,
    as_prompts,
    encode,
)

logger = logging.getLogger(__name__)

_POST_NORM = ("Olmo2ForCausalLM", "Olmo3ForCausalLM")  # TL: norm after the MLP, none before


@dataclass(frozen=True, eq=False)
class MLPSites:
    """The hooks of block ``layer``'s MLP input and output on one model.

    ``mlp_input(activation at read)`` is the MLP input: the hook's value times ``weight``
    (plus ``bias``) where TransformerLens hooks the norm before its affine part.
    """

    layer: int
    read: str
    write: str
    weight: Tensor | None = None
    bias: Tensor | None = None

    def mlp_input(self, act: Float[Tensor, "*rows d_model"]) -> Float[Tensor, "*rows d_model"]:
        x = act
        if self.weight is not None:
            x = x * self.weight.to(device=x.device, dtype=x.dtype)
        if self.bias is not None:
            x = x + self.bias.to(device=x.device, dtype=x.dtype)
        return x


def check_block(model: TLModel, layer: Any) -> int:
    """A block index for a transcoder, or an error that names the fix."""
    n = n_layers(model)
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise TypeError(f"a transcoder's layer must be an int block index, got {layer!r}")
    if not 0 <= layer < n:
        raise ValueError(
            f"transcoder layer {layer} is out of range for a model with {n} blocks (0..{n - 1}):"
            " was it trained for a deeper model? Load the transcoders made for this model, or "
            "pass load_transcoder(..., layer=L) if its config names the wrong block"
        )
    return layer


def mlp_sites(model: TLModel, layer: int) -> MLPSites:
    """Where block ``layer``'s MLP input and output are on ``model`` (see the module table)."""
    check_block(model, layer)
    write = hook_name(layer, "mlp_out")
    if backend_of(model) == "bridge":
        read = hook_name(layer, "mlp.hook_in")
        sites = MLPSites(layer, read, write)
    else:
        block = model.blocks[layer]
        arch = getattr(model.cfg, "original_architecture", None)
        if getattr(model.cfg, "attn_only", False) or not hasattr(block, "mlp"):
            raise ValueError(f"block {layer} has no MLP (an attention-only model)")
        if arch in _POST_NORM:
            sites = MLPSites(layer, hook_name(layer, "resid_mid"), write)
        else:
            ln2 = block.ln2
            kind = type(ln2).__name__
            if kind in ("RMSNormPre", "LayerNormPre"):
                raise ValueError(
                    f"block {layer}'s pre-MLP norm is folded ({kind}): the MLP input no longer "
                    "exists as an activation. Load the model without fold_ln "
                    "(mechintro.load_model does)"
                )
            if not hasattr(ln2, "w"):
                raise ValueError(
                    f"block {layer}'s pre-MLP norm ({kind}) has no weight 'w': mechintro knows "
                    "RMSNorm and LayerNorm; use the bridge backend for this model"
                )
            w, b = getattr(ln2, "w"), getattr(ln2, "b", None)  # noqa: B009 (typed as Any)
            sites = MLPSites(layer, hook_name(layer, "ln2.hook_normalized"), write, w, b)
    points = model.hook_dict  # a bridge rebuilds it on every access: read it once
    for name in (sites.read, sites.write):
        if name not in points:
            raise ValueError(
                f"this {backend_of(model)} model has no hook {name!r}: transcoders need "
                "TransformerLens's MLP hooks; load the model with mechintro.load_model"
            )
    return sites


# ---------------------------------------------------------------------------------------------
# running prompts and reading the sites


class _Stop(Exception):
    """Raised by a hook once every needed activation is read: the rest of the forward is
    skipped (caught in :func:`run_reading`)."""


def _forward(model: TLModel, batch: PromptBatch) -> Tensor:
    return forward(model, batch.input_ids, batch.attention_mask)


def slice_injection(inj: Injection, lo: int, hi: int, total: int) -> Injection:
    """The rows ``lo:hi`` of a per-row injection built for ``total`` rows (else itself)."""
    if inj.rows is None:
        return inj
    if inj.rows != total:
        raise ValueError(
            f"the injection has {inj.rows} rows but there are {total} prompts: give one "
            "vector/strength per prompt, or a single one"
        )
    v, s = torch.as_tensor(inj.vector), torch.as_tensor(inj.strength)
    return replace(inj, vector=v[lo:hi] if v.ndim == 2 else v, strength=s[lo:hi] if s.ndim else s)


def batches(
    model: TLModel,
    prompts: PromptLike,
    batch_size: int,
    injection: Injection | Sequence[Injection] | None = None,
) -> Iterator[tuple[int, PromptBatch, tuple[Injection, ...]]]:
    """``(first row, batch, injections)`` per chunk of ``batch_size`` prompts: any form
    :func:`mechintro.prompts.as_prompt_batch` takes, texts and Prompts encoded chunk by chunk."""
    check_batch_size(batch_size)
    tok = getattr(model, "tokenizer", None)
    given: PromptBatch | list[Prompt] = (
        as_prompt_batch(tok, prompts)
        if isinstance(prompts, (PromptBatch, Tensor))
        else as_prompts(prompts)
    )
    injs = (
        ()
        if injection is None
        else ((injection,) if isinstance(injection, Injection) else tuple(injection))
    )
    total = len(given)
    device = next(model.parameters()).device
    for lo, rows in in_batches(range(total), batch_size):
        hi = lo + len(rows)
        b = (
            given.rows(rows)
            if isinstance(given, PromptBatch)
            else encode(tokenizer_of(model), given[lo:hi])
        )
        yield lo, b.to(device), tuple(slice_injection(i, lo, hi, total) for i in injs)


def run_reading(
    model: TLModel,
    batch: PromptBatch,
    reads: dict[str, Callable[[Tensor], None]],
    injections: tuple[Injection, ...] = (),
    extra_hooks: Sequence[tuple[str | Callable[..., Any], Callable[..., Any]]] = (),
    stop_after: str | None = None,
) -> None:
    """One forward of ``batch`` (under ``injections``), calling ``reads[name](activation)``
    at each hook, the activation on the batch's device (a model split over GPUs computes a
    later layer on another); with ``stop_after``, the forward ends right after that hook."""
    device = batch.input_ids.device

    def make(name: str, fn: Callable[[Tensor], None]) -> Callable[..., Tensor]:
        def hook(x: Tensor, hook: Any) -> Tensor:
            fn(x.to(device))
            if name == stop_after:
                raise _Stop
            return x

        return hook

    hooks: list[tuple[str | Callable[..., Any], Callable[..., Any]]] = [
        *extra_hooks,
        *((n, make(n, f)) for n, f in reads.items()),
    ]
    ctx = injected(model, injections, batch) if injections else nullcontext()
    try:
        with ctx, model.hooks(fwd_hooks=hooks):
            _forward(model, batch)
    except _Stop:
        pass


def token_mask(model: TLModel, batch: PromptBatch, skip_bos: bool = True) -> Tensor:
    """``[batch, pos]`` True at real tokens (padding out; the BOS token out if ``skip_bos``)."""
    keep = batch.attention_mask.bool()
    bos = getattr(tokenizer_of(model), "bos_token_id", None)
    if skip_bos and bos is not None:
        keep = keep & (batch.input_ids != bos)
    return keep


@dataclass(frozen=True, eq=False)
class MLPActivations:
    """Real MLP inputs ``x[layer]`` and outputs ``y[layer]`` (``[n_tokens, d_model]``), one row
    per kept token; ``prompt``, ``position`` (from the prompt's first real token) and
    ``token`` say which."""

    x: dict[int, Tensor]
    y: dict[int, Tensor]
    prompt: Int[Tensor, " n_tokens"]
    position: Int[Tensor, " n_tokens"]
    token: Int[Tensor, " n_tokens"]

    def __len__(self) -> int:
        return int(self.prompt.shape[0])

    @staticmethod
    def cat(parts: Sequence[MLPActivations]) -> MLPActivations:
        """The rows of ``parts`` (each with the same layers), one after another."""
        layers = list(parts[0].x)
        return MLPActivations(
            x={L: torch.cat([p.x[L] for p in parts]) for L in layers},
            y={L: torch.cat([p.y[L] for p in parts]) for L in layers},
            prompt=torch.cat([p.prompt for p in parts]),
            position=torch.cat([p.position for p in parts]),
            token=torch.cat([p.token for p in parts]),
        )


def _saver(store: dict[str, Tensor], name: str) -> Callable[[Tensor], None]:
    return lambda t: store.__setitem__(name, t)


@torch.no_grad()
def mlp_activations(
    model: TLModel,
    prompts: PromptLike,
    layers: Sequence[int],
    *,
    injection: Injection | Sequence[Injection] | None = None,
    batch_size: int = 64,
    skip_bos: bool = True,
    dtype: torch.dtype = torch.float32,
) -> MLPActivations:
    """Read every listed block's MLP input and output at the real tokens of ``prompts``
    (kept on the CPU in ``dtype``), one forward per chunk, stopped after the last block needed.

    Example::

        acts = mlp_activations(model, [Prompt.chat("Tell me about cats")], layers=[4, 5])
        acts.x[4].shape  # [n_tokens, d_model]
    """
    layers = sorted({check_block(model, x) for x in layers})
    if not layers:
        raise ValueError("give at least one layer")
    sites = {x: mlp_sites(model, x) for x in layers}
    xs: dict[int, list[Tensor]] = {x: [] for x in layers}
    ys: dict[int, list[Tensor]] = {x: [] for x in layers}
    rows: list[Tensor] = []
    pos: list[Tensor] = []
    toks: list[Tensor] = []
    for lo, batch, injs in batches(model, prompts, batch_size, injection):
        keep = token_mask(model, batch, skip_bos)
        got: dict[str, Tensor] = {}

        reads = {n: _saver(got, n) for s in sites.values() for n in (s.read, s.write)}
        run_reading(model, batch, reads, injs, stop_after=sites[layers[-1]].write)
        for x, s in sites.items():
            xs[x].append(s.mlp_input(got[s.read])[keep].to("cpu", dtype))
            ys[x].append(got[s.write][keep].to("cpu", dtype))
        r, p = keep.nonzero(as_tuple=True)
        rows.append((r + lo).cpu())
        pos.append((p - batch.n_pad[r]).cpu())
        toks.append(batch.input_ids[keep].cpu())
    return MLPActivations(
        x={k: torch.cat(v) for k, v in xs.items()},
        y={k: torch.cat(v) for k, v in ys.items()},
        prompt=torch.cat(rows),
        position=torch.cat(pos),
        token=torch.cat(toks),
    )
