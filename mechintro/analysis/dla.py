"""Direct logit attribution (DLA) to a logit direction, exact in the model's own numerics.

The final residual stream at a position is the sum of what every part of the model wrote
into it: ``x = embed + Σ_l attn_l + Σ_l mlp_l`` (plus any injected vector). The logits are
``W_Uᵀ·norm(x) + b_U``. The final norm is not linear, but with its scale ``s`` *frozen* at
the value the model computed from the actual ``x`` (the standard linearisation, Elhage et
al. 2021; nostalgebraist's logit lens), it is: ``norm(c) = center(c)/s ⊙ w`` (``center``
only for LayerNorm). So each part ``c`` contributes ``center(c)/s ⊙ w · Δu`` to the logit
difference ``d·logits``, with ``Δu = W_U d``, and the parts sum to ``d·logits`` exactly,
up to the terms recorded in :attr:`DLAResult.terms`: the final norm's bias (``b·Δu``,
LayerNorm) and the unembedding bias (``d·b_U``).

The direction ``d`` is Yes − No by default: ``+1/|Y|`` on the first token of every Yes
variant and ``−1/|N|`` on every No variant, so ``Δu`` is the mean unembedding of the Yes
variants minus that of the No variants (Macar et al. 2026, gate features). This is the mean
of the variants' logits, not the logsumexp of ``readout(...).b_variants``: only the mean is
linear in the residual stream. Any two token lists work (:func:`logit_direction`).

Refinements (``by=``), each summing to the same total:

* ``"component"``: ``embed`` (block 0's input: token embedding, scaled as the model does,
  plus learned position embeddings if any), ``L{l}.attn``, ``L{l}.mlp``;
* ``"head"``: each ``L{l}.attn`` split into heads ``L{l}H{h}`` (``hook_z`` through that
  head's rows of ``W_O``), plus ``L{l}.attn.bias`` when ``b_O`` is nonzero;
* ``"neuron"``: each ``L{l}.mlp`` split into neurons ``L{l}N{n}`` (post-activation × that
  row of ``W_out``), plus ``L{l}.mlp.bias``;
* ``"feature"``: each ``L{l}.mlp`` that a transcoder replaces (``transcoders=``) split into
  its features ``L{l}F{f}`` (activation × ``W_dec[f]``, read in the residual stream, where
  the transcoder writes), ``L{l}.tc_bias`` (``b_dec``), ``L{l}.tc_skip`` (the affine skip
  ``x·A``) and ``L{l}.tc_error`` (the MLP's true output minus the reconstruction), so the
  rows still sum to the MLP's direct effect exactly. Macar et al.'s gate score is a
  feature's row (their ``(ŵ_dec·Δu) × activation``, with the final norm applied).

Models with post-norms (Gemma 2/3, OLMo-2) add ``norm(module output)`` to the stream; the
heads and neurons go through that norm with its scale frozen as well, so they stay exact.
Under an injection the vector added at block ``L`` is its own row, ``L{L}.injection``.

Why not ``ActivationCache.logit_attrs``: in TransformerLens it is exact only in folded mode
(``fold_ln``, centred writing weights), which changes ``mlp.hook_in`` (the site transcoders
read) and does not exist on the bridge. Here the norm's scale and weight are applied
explicitly, so DLA is exact on an unprocessed HookedTransformer and on the bridge alike.
Gemma's ``(1 + w)`` norm weight is handled; every norm is checked by reproducing the
model's own output before it is trusted, and a model whose norm is not reproduced is
refused. Final-logit soft-capping (Gemma 2: ``c·tanh(l/c)``) is not linear: such models are
refused unless ``pre_softcap=True``, which attributes the logit difference before the cap.

Example::

    from mechintro import Prompt, encode, load_model
    from mechintro.analysis.dla import direct_logit_attribution

    model = load_model("builtin:smollm2")
    batch = encode(model.tokenizer, [Prompt.chat("Trial 1: Do you detect an injected thought?")])
    res = direct_logit_attribution(model, batch, by="head")
    res.top(5, by="negative")  # the heads that push hardest towards "No"
    float(res.error.abs().max())  # ~1e-6 in fp32: the rows sum to the logit difference
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechintro.inject import Injection, injected
from mechintro.models import (
    TLModel,
    backend_of,
    check_layer,
    forward,
    hook_name,
    n_layers,
    tokenizer_of,
)
from mechintro.prompts import PromptBatch, PromptLike, as_prompt_batch
from mechintro.tokens import NO_VARIANTS, YES_VARIANTS, first_token_ids

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

BY = ("component", "head", "neuron", "feature")
_POST_NORM_ARCHS = ("Olmo2ForCausalLM", "Olmo3ForCausalLM")  # norm after attn/mlp, as ln1/ln2


@dataclass(frozen=True)
class LogitDirection:
    """A direction in logit space: mean logit of ``pos`` tokens minus mean of ``neg``."""

    pos_ids: tuple[int, ...]
    neg_ids: tuple[int, ...]

    def weights(self, d_vocab: int) -> Float[Tensor, " vocab"]:
        """``d`` with ``d·logits`` = the logit difference."""
        d = torch.zeros(d_vocab)
        d[list(self.pos_ids)] += 1.0 / len(self.pos_ids)
        d[list(self.neg_ids)] -= 1.0 / len(self.neg_ids)
        return d

    def delta_u(self, model: TLModel) -> Float[Tensor, " d_model"]:
        """``Δu = W_U d``: mean unembedding of the ``pos`` tokens minus the ``neg`` ones."""
        W_U = model.W_U.detach().float()
        return W_U @ self.weights(W_U.shape[1]).to(W_U.device)


def logit_direction(
    model: TLModel,
    pos: Sequence[str | int] = YES_VARIANTS,
    neg: Sequence[str | int] = NO_VARIANTS,
) -> LogitDirection:
    """The direction ``mean logit(pos) − mean logit(neg)``: strings by their first token
    (deduplicated, as in ``readout``), ints as token ids. Default: Yes − No variants.

    Example: ``logit_direction(model, [" Paris"], [" Rome"])``.
    """
    vocab = int(model.cfg.d_vocab)

    def ids(words: Sequence[str | int], side: str) -> tuple[int, ...]:
        if not words:
            raise ValueError(f"the {side} token list is empty: give at least one token")
        strs = [w for w in words if isinstance(w, str)]
        out = set(first_token_ids(tokenizer_of(model), strs)) if strs else set()
        for w in words:
            if not isinstance(w, str):
                if not 0 <= int(w) < vocab:
                    raise ValueError(f"token id {w} is out of range: the vocabulary has {vocab}")
                out.add(int(w))
        return tuple(sorted(out))

    p, n = ids(pos, "pos"), ids(neg, "neg")
    if set(p) == set(n):
        raise ValueError(f"pos and neg are the same tokens {p}: the direction would be zero")
    return LogitDirection(p, n)


@dataclass(frozen=True, eq=False)
class DLAResult:
    """Direct effects on the logit difference, one row per label (mean over prompt rows).

    ``values[i]`` belongs to ``labels[i]`` (``kinds[i]``, ``layers[i]``, ``index[i]`` = head
    or neuron); ``per_row`` is ``[n, batch]``. ``target`` is ``d·logits`` at the position
    (before the soft-cap with ``pre_softcap=True``); ``terms`` are the constant parts, so
    ``per_row.sum(0) + Σ terms = target`` up to ``error``.
    """

    values: Tensor
    per_row: Tensor
    labels: tuple[str, ...]
    kinds: tuple[str, ...]
    layers: tuple[int | None, ...]
    index: tuple[int | None, ...]
    target: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)
    by: str = "component"
    direction: LogitDirection | None = None
    backend: str = ""

    @property
    def error(self) -> Tensor:
        """Per prompt row: target minus (all rows + terms); ~1e-6 in fp32."""
        rest = sum(self.terms.values(), torch.zeros_like(self.target))
        return self.target - self.per_row.sum(0) - rest

    def value(self, label: str) -> float:
        try:
            return float(self.values[self.labels.index(label)])
        except ValueError:
            raise KeyError(f"no row {label!r}; rows look like {self.labels[:4]}") from None

    def top(self, k: int = 10, by: str = "abs") -> list[tuple[str, float]]:
        """The ``k`` largest rows: ``by`` = "abs", "positive" or "negative"."""
        key = {"abs": self.values.abs(), "positive": self.values, "negative": -self.values}
        if by not in key:
            raise ValueError(f"by must be 'abs', 'positive' or 'negative', got {by!r}")
        idx = key[by].argsort(descending=True)[:k].tolist()
        return [(self.labels[i], float(self.values[i])) for i in idx]

    def to_frame(self) -> pd.DataFrame:
        """A pandas DataFrame: label, kind, layer, index, value."""
        import pandas as pd

        return pd.DataFrame(
            {
                "label": list(self.labels),
                "kind": list(self.kinds),
                "layer": list(self.layers),
                "index": list(self.index),
                "value": self.values.tolist(),
            }
        )


@dataclass(frozen=True)
class _Norm:
    """A norm with its scale frozen: ``c ↦ center(c)/s ⊙ w (+ b)``."""

    center: bool
    w: Tensor | None
    b: Tensor | None
    s: Tensor  # [batch, 1]

    def apply(self, c: Tensor) -> Tensor:
        y = (c - c.mean(-1, keepdim=True) if self.center else c) / self.s
        y = y if self.w is None else y * self.w
        return y if self.b is None else y + self.b

    def read(self, r: Tensor) -> Tensor:
        """The adjoint: ``apply(c)·r = c·read(r)`` for the linear part (bias left out)."""
        v = r if self.w is None else r * self.w
        v = v - v.mean(-1, keepdim=True) if self.center else v
        return v / self.s


def _affine(norm: Any) -> tuple[Tensor | None, Tensor | None]:
    """Effective weight and bias of a norm module on either backend."""
    hf = getattr(norm, "original_component", None)
    if hf is not None:  # bridge: the Hugging Face module itself
        w, b = getattr(hf, "weight", None), getattr(hf, "bias", None)
        if w is not None and "gemma" in type(hf).__name__.lower():
            w = 1.0 + w.float()  # Gemma's RMSNorm multiplies by (1 + w)
    else:  # HookedTransformer: w already effective (Gemma's +1 added on load)
        w, b = getattr(norm, "w", None), getattr(norm, "b", None)
    return (
        None if w is None else w.detach().float(),
        None if b is None or not bool(b.any()) else b.detach().float(),
    )


def _check(model: TLModel, what: str, recon: Tensor, actual: Tensor) -> None:
    """Refuse when our linearisation does not reproduce the model's own activation."""
    tol = (1e-4 if next(model.parameters()).dtype == torch.float32 else 3e-2) * max(
        1.0, float(actual.abs().max())
    )
    err = float((recon - actual).abs().max())
    if err > tol:
        raise RuntimeError(
            f"DLA could not reproduce {what} (max error {err:.3g} > {tol:.3g}): this model's "
            "normalisation or module layout is not one DLA understands (it supports RMSNorm "
            "and LayerNorm, Gemma's (1+w) weight, pre- and post-norm blocks). Load it "
            "unprocessed with mechintro.load_model, or use by='component'."
        )


def _softcap(model: TLModel) -> float | None:
    caps = [float(getattr(model.cfg, "output_logits_soft_cap", -1.0) or -1.0)]
    hf_cfg = getattr(getattr(model, "original_model", None), "config", None)
    if hf_cfg is not None:
        text = hf_cfg.get_text_config() if hasattr(hf_cfg, "get_text_config") else hf_cfg
        caps.append(float(getattr(text, "final_logit_softcapping", None) or -1.0))
    return max(caps) if max(caps) > 0 else None


def _post_norms(model: TLModel, layer: int) -> tuple[str | None, str | None]:
    """Names of the norms applied to the attn and mlp outputs before the residual add."""
    block = model.blocks[layer]
    if hasattr(block, "ln1_post") and hasattr(block, "ln2_post"):
        return "ln1_post", "ln2_post"
    arch = getattr(model.cfg, "original_architecture", None) or getattr(
        model.cfg, "architecture", None
    )
    return ("ln1", "ln2") if arch in _POST_NORM_ARCHS else (None, None)


@torch.no_grad()
def direct_logit_attribution(
    model: TLModel,
    batch: PromptLike,
    *,
    by: str = "component",
    direction: LogitDirection | None = None,
    layers: Sequence[int] | None = None,
    position: str | int = "last",
    injection: Injection | Sequence[Injection] | None = None,
    pre_softcap: bool = False,
    transcoders: Any = None,
) -> DLAResult:
    """Direct effect of every part of the model on the logit difference at ``position``.

    Args:
        batch: the prompts: a PromptBatch, a string or a list of strings (raw text),
            Prompts, or a token tensor (:func:`mechintro.prompts.as_prompt_batch`).
        by: "component", "head", "neuron" or "feature" (see the module docstring).
        direction: default ``logit_direction(model)`` (Yes − No variants).
        layers: the layers to split into heads/neurons (default all); the rest stay whole.
        position: a named position of the batch (default "last") or an index.
        injection: injections applied during the forward; each becomes a row.
        pre_softcap: allow soft-capped models, attributing the pre-cap logit difference.
        transcoders: for ``by="feature"``: ``{layer: Transcoder}`` or a list (see
            :mod:`mechintro.analysis.transcoders`); their layers are split into features.

    Example::

        res = direct_logit_attribution(model, batch, by="neuron", layers=[5])
        res.to_frame().sort_values("value").head()
    """
    backend = backend_of(model)
    batch = as_prompt_batch(getattr(model, "tokenizer", None), batch)
    if by not in BY:
        raise ValueError(f"by must be one of {BY}, got {by!r}")
    if by == "component" and layers is not None:
        raise ValueError(
            "layers= picks the layers to split into heads or neurons: with "
            "by='component' leave it out, or use by='head' / by='neuron'"
        )
    cap = _softcap(model)
    if cap is not None and not pre_softcap:
        raise ValueError(
            f"this model soft-caps its logits (c·tanh(l/c), c={cap:g}), so the logit "
            "difference is not a sum of direct effects. Pass pre_softcap=True to attribute the "
            "difference before the cap (result.target is then that pre-cap difference)."
        )
    n = n_layers(model)
    tcs: dict[int, Any] = {}
    if by == "feature":
        from mechintro.analysis.transcoders.analysis import as_layers

        if transcoders is None:
            raise ValueError("by='feature' needs transcoders=<the layers' transcoders>")
        tcs = as_layers(model, transcoders)
        if layers is not None:
            tcs = {L: tc for L, tc in tcs.items() if L in set(layers)}
    elif transcoders is not None:
        raise ValueError("transcoders= is for by='feature'")
    split = (
        set()
        if by == "component"
        else set(tcs)
        if by == "feature"
        else set(range(n) if layers is None else layers)
    )
    for layer in split:
        check_layer(model, layer)
    direction = direction if direction is not None else logit_direction(model)
    injections = (
        ()
        if injection is None
        else (injection,)
        if isinstance(injection, Injection)
        else tuple(injection)
    )
    inj_layers = sorted({inj.layer for inj in injections})

    names = [hook_name(0, "resid_pre"), hook_name(n - 1, "resid_post")]
    names += ["ln_final.hook_scale", "unembed.hook_in", "unembed.hook_out"]
    for layer in range(n):
        names += [hook_name(layer, "attn_out"), hook_name(layer, "mlp_out")]
        post = _post_norms(model, layer)
        if layer in split and by == "feature":
            names.append(_tc_sites(model, layer).read)
        elif layer in split:
            site, norm = ("attn.hook_z", post[0]) if by == "head" else ("mlp.hook_post", post[1])
            names.append(hook_name(layer, site))
            if norm is not None:
                names.append(hook_name(layer, f"{norm}.hook_scale"))
    names += [hook_name(layer, "resid_mid") for layer in inj_layers]
    names += [hook_name(layer, "resid_post") for layer in inj_layers]
    points = model.hook_dict  # a bridge rebuilds it on every access: read it once
    missing = [x for x in names if x not in points]
    if missing:
        raise ValueError(
            f"this {backend} model has no hook {missing[0]!r}, which DLA by={by!r} needs; "
            "try by='component', or load the model with mechintro.load_model"
        )

    device = next(model.parameters()).device
    batch = batch.to(device)
    B = len(batch)
    pos = _positions(batch, position)
    rows_idx = torch.arange(B, device=device)
    acts: dict[str, Tensor] = {}

    def grab(name: str) -> Callable[..., Tensor]:
        def hook(x: Tensor, hook: Any) -> Tensor:  # x on its layer's device (a split model)
            at = x[rows_idx.to(x.device), pos.to(x.device)]
            acts[name] = at.detach().float().to(device)
            return x

        return hook

    ctx = injected(model, injections, batch) if injections else nullcontext()
    with ctx, model.hooks(fwd_hooks=[(x, grab(x)) for x in dict.fromkeys(names)]):
        logits = forward(model, batch.input_ids, batch.attention_mask)

    d = direction.weights(int(model.cfg.d_vocab)).to(device)
    final = acts["unembed.hook_out"] if cap is not None else logits[rows_idx, pos].float()
    target = final @ d
    center = str(model.cfg.normalization_type) in ("LN", "LNPre")
    w, b = _affine(model.ln_final)
    lnf = _Norm(center, w, b, acts["ln_final.hook_scale"])
    _check(
        model,
        "the final norm",
        lnf.apply(acts[hook_name(n - 1, "resid_post")]),
        acts["unembed.hook_in"],
    )
    du = direction.delta_u(model).to(device)
    r = lnf.read(du.expand(B, -1))  # read vector of the residual stream: c·r = direct effect
    terms: dict[str, Tensor] = {}
    if b is not None:
        terms["ln_final.bias"] = (b @ du).expand(B)
    b_U = getattr(model, "b_U", None)
    if b_U is not None and bool(b_U.any()):
        terms["unembed.bias"] = (b_U.detach().float() @ d).expand(B)

    rows: list[tuple[str, str, int | None, int | None, Tensor]] = []
    rows.append(("embed", "embed", None, None, (acts["blocks.0.hook_resid_pre"] * r).sum(-1)))
    for layer in range(n):
        for part in ("attn", "mlp"):
            out = acts[hook_name(layer, f"{part}_out")]
            want = "head" if part == "attn" else "neuron"
            if layer in split and by == "feature" and part == "mlp":
                rows += _feature_rows(model, layer, tcs[layer], acts, r, out)
            elif layer in split and by == want:
                rows += _split(model, layer, part, acts, r, center, out)
            else:
                rows.append((f"L{layer}.{part}", part, layer, None, (out * r).sum(-1)))
        if layer in inj_layers:
            out_, mid_, mlp_ = (hook_name(layer, x) for x in ("resid_post", "resid_mid", "mlp_out"))
            added = acts[out_] - acts[mid_] - acts[mlp_]
            rows.append((f"L{layer}.injection", "injection", layer, None, (added * r).sum(-1)))
    per_row = torch.stack([x[-1] for x in rows]).cpu()
    return DLAResult(
        values=per_row.mean(-1),
        per_row=per_row,
        labels=tuple(x[0] for x in rows),
        kinds=tuple(x[1] for x in rows),
        layers=tuple(x[2] for x in rows),
        index=tuple(x[3] for x in rows),
        target=target.cpu(),
        terms={k: v.cpu() for k, v in terms.items()},
        by=by,
        direction=direction,
        backend=backend,
    )


def _split(
    model: TLModel,
    layer: int,
    part: str,
    acts: dict[str, Tensor],
    r: Tensor,
    center: bool,
    out: Tensor,
) -> list[tuple[str, str, int | None, int | None, Tensor]]:
    """Rows of one attn (per head) or mlp (per neuron) output, through its post-norm."""
    block = model.blocks[layer]
    norm_name = _post_norms(model, layer)[0 if part == "attn" else 1]
    if part == "attn":
        a = acts[hook_name(layer, "attn.hook_z")]  # [batch, head, d_head]
        W, bias = block.attn.W_O.detach().float(), getattr(block.attn, "b_O", None)
        module_out = torch.einsum("bhk,hkd->bd", a, W)
    else:
        a = acts[hook_name(layer, "mlp.hook_post")]  # [batch, d_mlp]
        W, bias = block.mlp.W_out.detach().float(), getattr(block.mlp, "b_out", None)
        module_out = a @ W
    bias = None if bias is None or not bool(bias.any()) else bias.detach().float()
    if bias is not None:
        module_out = module_out + bias
    r_mod, post_bias = r, None
    if norm_name is not None:
        w, post_bias = _affine(getattr(block, norm_name))
        norm = _Norm(center, w, post_bias, acts[hook_name(layer, f"{norm_name}.hook_scale")])
        module_out, r_mod = norm.apply(module_out), norm.read(r)
    _check(
        model,
        f"block {layer}'s {part} output from its {'heads' if part == 'attn' else 'neurons'}",
        module_out,
        out,
    )
    rows: list[tuple[str, str, int | None, int | None, Tensor]] = []
    if part == "attn":
        per = (a * torch.einsum("hkd,bd->bhk", W, r_mod)).sum(-1).T  # [head, batch]
        rows += [(f"L{layer}H{h}", "head", layer, h, per[h]) for h in range(per.shape[0])]
    else:
        per = (W @ r_mod.T) * a.T  # [neuron, batch], never [batch, neuron, d_model]
        rows += [(f"L{layer}N{i}", "neuron", layer, i, per[i]) for i in range(per.shape[0])]
    if bias is not None:
        rows.append((f"L{layer}.{part}.bias", "bias", layer, None, (bias * r_mod).sum(-1)))
    if post_bias is not None:
        rows.append((f"L{layer}.{part}.norm_bias", "bias", layer, None, (post_bias * r).sum(-1)))
    return rows


def _tc_sites(model: TLModel, layer: int) -> Any:
    from mechintro.analysis.transcoders.sites import mlp_sites

    return mlp_sites(model, layer)


def _feature_rows(
    model: TLModel, layer: int, tc: Any, acts: dict[str, Tensor], r: Tensor, out: Tensor
) -> list[tuple[str, str, int | None, int | None, Tensor]]:
    """Rows of one MLP replaced by a transcoder: every feature, ``b_dec``, the skip, the
    error; they sum to ``out·r`` (the MLP's direct effect) by construction of the error."""
    sites = _tc_sites(model, layer)
    tc = tc.to(device=r.device, dtype=torch.float32)
    x = sites.mlp_input(acts[sites.read])
    a = tc.encode(x)  # [batch, d_sae]
    per = (tc.W_dec @ r.T) * a.T  # [feature, batch]
    skip = tc.skip_term(x)
    err = out - (tc.decode(a) + skip)
    rows: list[tuple[str, str, int | None, int | None, Tensor]] = [
        (f"L{layer}F{f}", "feature", layer, f, per[f]) for f in range(per.shape[0])
    ]
    rows.append((f"L{layer}.tc_bias", "tc_bias", layer, None, (tc.b_dec * r).sum(-1)))
    rows.append((f"L{layer}.tc_skip", "tc_skip", layer, None, (skip * r).sum(-1)))
    rows.append((f"L{layer}.tc_error", "tc_error", layer, None, (err * r).sum(-1)))
    return rows


def _positions(batch: PromptBatch, position: str | int) -> Tensor:
    T = batch.length
    if isinstance(position, str):
        return batch.position(position)
    if isinstance(position, bool) or not isinstance(position, int) or not -T <= position < T:
        raise ValueError(
            f"position must be a named position ({sorted(batch.positions)}) or an index in "
            f"-{T}..{T - 1}, got {position!r}"
        )
    return torch.full((len(batch),), position % T, dtype=torch.long, device=batch.input_ids.device)
