"""A parity self-check to run on any loaded model before trusting its numbers.

Each check is an identity that holds up to float rounding, measured as the largest absolute
logit difference between its two sides:

* **backend vs HF**: the TransformerLens model against an *independent* plain Hugging Face
  forward of the same weights. For a bridge, :func:`independent_hf` builds a fresh model of
  the wrapped HF class and config holding a copy of the bridge's tensors: the bridge's own
  ``original_model`` will not do, since calling it runs the bridge's wrappers and the check
  would compare the bridge with itself (0 by construction). For a HookedTransformer, pass the
  HF model as ``hf_model=``; without it the check is not run.
* **batch vs single**: a prompt run in a left-padded batch next to a longer prompt (one row
  injected, the other a control) against the same prompt run alone;
* **cache vs no cache**: greedy generation under an injection, KV cache on vs off, the
  logits of every step compared;
* **twin vs bridge**: on a bridge, the logits of the same uncached generation on its fast
  twin and on the bridge itself.

Generation on a bridge runs on one of two paths (``RunRecord.settings["path"]``): its plain HF
twin (:mod:`mechintro.engine.twin`, the default) or the bridge itself (``fast=False``, a hook left
on the bridge); a HookedTransformer runs on itself (``"hooked"``). A
check is only as good as the path it ran on, so batch vs single and cache vs no cache run on
every path generation can take: the report gives the worst value and each path's value
(:attr:`ParityReport.paths`), with the exact library versions that produced them.

A check that could not run is NaN, with the reason in :attr:`ParityReport.not_run`; a path
whose cached generation raised gets ``inf``, with the error in :attr:`ParityReport.errors`.
Neither ever counts as a pass: :meth:`ParityReport.ok` is False unless every check ran and is
within tolerance, or a missing check is accepted by name (``allow_missing=``).

On fp32 CPU the differences are ~1e-5 or exactly 0; in bf16 on a GPU they are ~1e-2. A large
value is a bug (padding, positions, a hook lost on decode steps, a KV cache the attention
never reads) or a misloaded model.

Example::

    report = parity_check(model, "Trial 1: Do you detect an injected thought?")
    assert report.ok(atol=1e-3), report
    hooked = parity_check(tl_model, prompt, hf_model=hf)  # a HookedTransformer needs its HF model
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mechintro.engine.twin import fast_twin, injected_on, twin_logits
from mechintro.generation import generate
from mechintro.inject import Injection, injected
from mechintro.models import TLModel, backend_of, d_model, forward, n_layers, resid_post
from mechintro.prompts import Prompt, PromptBatch, encode, positions
from mechintro.record import library_versions

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: the checks a report holds, in the order it prints them
CHECKS = ("backend_vs_hf", "batch_vs_single", "cache_vs_nocache", "twin_vs_bridge")
#: ``generate``'s ``fast=`` that takes each path
_FAST = {"twin": True, "bridge": False, "hooked": None}
_NEIGHBOUR = "A longer neighbour so that the first row is left-padded. "
_WRAPPED = "._original_component"  # where a bridge keeps the HF module it wraps


@dataclass(frozen=True)
class ParityReport:
    """The checks' values (largest absolute logit differences) and what produced them.

    ``batch_vs_single`` and ``cache_vs_nocache`` are the worst over :attr:`paths`, which
    holds each generation path's own values (``{"twin": {...}, "bridge": {...}}``).
    ``twin_vs_bridge`` is None where generation has one path only (a HookedTransformer, a
    bridge without a twin): nothing to compare. ``not_run``: check -> why it did not run
    (its value is NaN); ``errors``: path -> the error its cached generation raised (its
    ``cache_vs_nocache`` is inf). ``versions``: :func:`mechintro.record.library_versions`.
    """

    backend_vs_hf: float
    batch_vs_single: float
    cache_vs_nocache: float
    twin_vs_bridge: float | None
    paths: dict[str, dict[str, float]]
    backend: str
    dtype: str
    device: str
    not_run: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=library_versions)

    def values(self) -> dict[str, float]:
        """Every check that applies to this model, by name (a NaN one did not run)."""
        out = {name: getattr(self, name) for name in CHECKS}
        return {k: v for k, v in out.items() if v is not None}

    def ok(self, atol: float, *, allow_missing: Iterable[str] = ()) -> bool:
        """Whether every check ran and is at most ``atol``.

        A check that did not run fails, unless named in ``allow_missing`` (e.g.
        ``("backend_vs_hf",)`` for a HookedTransformer checked without its HF model); a NaN
        or an inf value always fails.
        """
        allowed = set(allow_missing)
        unknown = allowed - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown checks {sorted(unknown)}: the checks are {CHECKS}")
        if set(self.not_run) - allowed:
            return False
        return all(v <= atol for k, v in self.values().items() if k not in self.not_run)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ParityReport:
        """The report :meth:`to_dict` gave (read back from JSON, say)."""
        return cls(**d)

    def __str__(self) -> str:
        lines = [
            f"parity of a {self.backend} model ({self.dtype}, {self.device}); generation "
            f"paths checked: {', '.join(self.paths)}"
        ]
        for name, value in self.values().items():
            if name in self.not_run:
                lines.append(f"  {name:<17} not run: {self.not_run[name]}")
                continue
            per_path = [f"{p} {v[name]:.3g}" for p, v in self.paths.items() if name in v]
            detail = f"  ({', '.join(per_path)})" if len(per_path) > 1 else ""
            lines.append(f"  {name:<17} {value:.3g}{detail}")
        lines += [f"  {path} path raised {error}" for path, error in self.errors.items()]
        return "\n".join(lines)


def generation_paths(model: TLModel) -> list[str]:
    """The paths :func:`~mechintro.generation.generate` can take on ``model``: a bridge's
    twin (where the fast path applies with ``fast=True``) and the bridge itself, or a
    HookedTransformer itself (the names its run records give)."""
    if backend_of(model) != "bridge":
        return ["hooked"]
    return (["twin"] if fast_twin(model, True) is not None else []) + ["bridge"]


def independent_hf(model: TLModel) -> PreTrainedModel:
    """A plain HF model that computes what a bridge should, on its own copy of the weights.

    A fresh instance of the wrapped model's class, from a copy of its config (so the same
    attention implementation: eager, as :func:`~mechintro.models.load_model` loads), built
    on the ``meta`` device and given a copy of every parameter and buffer it declares, read
    from the bridge's wrapped modules by their HF path (the bridge nests each original module
    as ``_original_component``). Tensors the bridge added to a wrapped module (a zero bias
    on the unembedding, say) are not declared by the fresh model and are left out; tied
    weights stay tied; eval mode. Nothing of the bridge runs in its forward, and nothing it
    holds is shared: it is an independent reference, at the cost of a second copy of the
    weights while it lives.

    Raises ValueError where no such copy can be made: the model is split over devices by
    accelerate (a copy would lack its hooks), or the wrapped modules lack a tensor the fresh
    model declares (adapters inserted): then pass the HF model to :func:`parity_check`.
    """
    hf: Any = model.original_model
    placed = getattr(hf, "hf_device_map", None) or {}
    if len(set(placed.values())) > 1:
        raise ValueError(
            "the model is split over several devices by accelerate, and a copy would not "
            "be: pass hf_model="
        )
    theirs: dict[str, Tensor] = {}
    named = chain(hf.named_parameters(remove_duplicate=False), hf.named_buffers())
    for name, tensor in named:
        theirs.setdefault(name.replace(_WRAPPED, ""), tensor)
    with torch.device("meta"):
        fresh = type(hf)(copy.deepcopy(hf.config))
    copies: dict[int, Tensor] = {}
    missing = []
    for path, module in fresh.named_modules():
        for slot in (module._parameters, module._buffers):
            for key, declared in slot.items():
                if declared is None:
                    continue
                name = f"{path}.{key}" if path else key
                src = theirs.get(name)
                if src is None:
                    missing.append(name)
                    continue
                if id(src) not in copies:  # one copy per tensor: tied weights stay tied
                    data = src.detach().clone()
                    is_param = slot is module._parameters
                    copies[id(src)] = torch.nn.Parameter(data, False) if is_param else data
                slot[key] = copies[id(src)]
    if missing:
        raise ValueError(
            f"the bridge's HF modules lack {len(missing)} tensors a fresh "
            f"{type(hf).__name__} declares (e.g. {missing[0]!r}; adapters inserted?): pass "
            "hf_model="
        )
    return fresh.eval()


@torch.no_grad()
def parity_check(
    model: TLModel,
    prompt: Prompt | str,
    *,
    hf_model: Any = None,
    layer: int | None = None,
    strength: float = 4.0,
    new_tokens: int = 6,
    seed: int = 0,
) -> ParityReport:
    """Measure the parity identities on ``model`` for ``prompt``, on every generation path.

    Args:
        prompt: a :class:`~mechintro.prompts.Prompt`, or text: a chat turn where the
            tokenizer has a chat template, else raw text. The longer neighbour that pads it
            in the batch check is built the same way (chat or raw).
        hf_model: the reference for backend vs HF (a HF causal LM of the same weights);
            default: :func:`independent_hf` on a bridge, none on a HookedTransformer (the
            check is then not run).
        layer: where a random vector, as long as the mean residual there, is injected
            (default: the middle layer), ``strength`` times.
        new_tokens: greedy steps compared with the KV cache on and off.
    """
    tok = model.tokenizer
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    p, pair = _prompts(tok, prompt, device)
    single = encode(tok, [p], device=device)
    L = layer if layer is not None else n_layers(model) // 2
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d_model(model), generator=g)
    v = v / v.norm() * _resid_scale(model, single, L)
    paths = generation_paths(model)
    not_run: dict[str, str] = {}

    backend_vs_hf = float("nan")
    ref = hf_model
    if ref is None and backend_of(model) == "bridge":
        try:
            ref = independent_hf(model)
        except ValueError as e:
            not_run["backend_vs_hf"] = f"no independent HF copy: {e}"
    elif ref is None:
        not_run["backend_vs_hf"] = "no HF model given (pass hf_model=)"
    if ref is not None:
        backend_vs_hf = _vs_hf(model, ref, pair)
        del ref  # a copy of the weights: free it before generating

    inj_single = Injection(layer=L, vector=v, strength=strength, mode="all")
    inj_pair = Injection(layer=L, vector=v, strength=[strength, 0.0], mode="all")
    real = pair.attention_mask[0].bool()
    per_path: dict[str, dict[str, float]] = {}
    uncached: dict[str, Tensor] = {}
    errors: dict[str, str] = {}
    for path in paths:
        alone = _logits(model, path, single, inj_single)
        both = _logits(model, path, pair, inj_pair)
        uncached[path] = _steps(model, path, single, inj_single, new_tokens, use_cache=False)
        try:
            cached = _steps(model, path, single, inj_single, new_tokens, use_cache=True)
        except RuntimeError as e:  # e.g. a cache the attention never wrote, caught as such
            errors[path] = f"{type(e).__name__}: {e}"
            cache_diff = math.inf
        else:
            cache_diff = _maxdiff(cached, uncached[path])
        per_path[path] = {
            "batch_vs_single": _maxdiff(both[0, real], alone[0]),
            "cache_vs_nocache": cache_diff,
        }
    twin_vs_bridge = None
    if "twin" in uncached:
        twin_vs_bridge = _maxdiff(uncached["twin"], uncached["bridge"])
    return ParityReport(
        backend_vs_hf=backend_vs_hf,
        batch_vs_single=_worst(r["batch_vs_single"] for r in per_path.values()),
        cache_vs_nocache=_worst(r["cache_vs_nocache"] for r in per_path.values()),
        twin_vs_bridge=twin_vs_bridge,
        paths=per_path,
        backend=backend_of(model),
        dtype=str(dtype).removeprefix("torch."),
        device=str(device),
        not_run=not_run,
        errors=errors,
    )


def _prompts(tok: Any, prompt: Prompt | str, device: torch.device) -> tuple[Prompt, PromptBatch]:
    """The prompt, and it left-padded in a batch beside a longer neighbour of its kind (chat
    or raw), made longer until the prompt's row is padded by at least one token."""
    chat = bool(getattr(tok, "chat_template", None))
    if isinstance(prompt, str):
        prompt = Prompt.chat(prompt) if chat else Prompt.text(prompt)
    make = Prompt.chat if prompt.raw is None else Prompt.text
    repeats = 3
    while True:
        pair = encode(tok, [prompt, make(_NEIGHBOUR * repeats)], device=device)
        if int(pair.n_pad[0]) > 0:
            return prompt, pair
        repeats *= 2


@torch.no_grad()
def _forward(model: TLModel, ids: Tensor, mask: Tensor) -> Tensor:
    """The model's logits at every position of a left-padded batch, in fp32."""
    return forward(model, ids, mask).float()


def _vs_hf(model: TLModel, hf: Any, batch: PromptBatch) -> float:
    """Largest logit difference between the model and ``hf`` on the batch's real tokens."""
    at = next(hf.parameters()).device
    ids, mask = batch.input_ids, batch.attention_mask
    ref = hf(ids.to(at), attention_mask=mask.to(at), position_ids=positions(mask).to(at))
    got = _forward(model, ids, mask)
    real = mask.bool()
    return _maxdiff(got[real], ref.logits.to(got.device)[real])


def _logits(model: TLModel, path: str, batch: PromptBatch, inj: Injection) -> Tensor:
    """One forward of the batch under the injection, on ``path``'s model (all positions)."""
    if path == "twin":
        twin = fast_twin(model, True)
        with injected_on(model, twin, inj, batch):
            return twin_logits(twin, batch.input_ids, batch.attention_mask).float()
    with injected(model, inj, batch):
        return _forward(model, batch.input_ids, batch.attention_mask)


def _steps(
    model: TLModel, path: str, batch: PromptBatch, inj: Injection, n: int, use_cache: bool
) -> Tensor:
    """The logits of ``n`` greedy steps of generation on ``path``, ``[steps, batch, vocab]``."""
    out = generate(
        model,
        batch,
        injection=inj,
        max_new_tokens=n,
        use_cache=use_cache,
        keep_logits=True,
        stop_ids=[],
        fast=_FAST[path],
    )
    taken = out.record.settings["path"]
    if taken != path:  # the report must name the path that ran
        raise AssertionError(f"generation was asked for the {path} path and took the {taken}")
    assert out.logits is not None
    return torch.stack(out.logits)


def _resid_scale(model: TLModel, batch: Any, layer: int) -> float:
    """Mean residual norm at ``layer``: the injection is as strong as the stream itself."""
    _, cache = model.run_with_cache(batch.input_ids, names_filter=lambda n: n == resid_post(layer))
    return float(cache[resid_post(layer)].float().norm(dim=-1).mean())


def _maxdiff(a: Tensor, b: Tensor) -> float:
    """Largest absolute difference (NaN if either side holds one: ``max`` propagates it)."""
    return float((a.float() - b.float()).abs().max())


def _worst(values: Iterable[float]) -> float:
    """The largest value, NaN if any is NaN (``max`` would depend on the order)."""
    vs = list(values)
    return math.nan if any(v != v for v in vs) else max(vs)
