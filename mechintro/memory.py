"""Memory planning: how much a model, its KV cache and a batch's buffers take, before loading.

:class:`ModelShape` reads what decides memory from a Hugging Face config (a config object,
a config dict, a folder or a Hub name: no weights are loaded) or from a loaded model.
:func:`estimate` adds up, for a batch of ``batch_size`` prompts of ``prompt_tokens`` tokens
that generate ``new_tokens`` each:

* **weights**: every parameter (embeddings, attention with grouped KV heads and any biases,
  the MLP gated or not, the norms, an untied unembedding) times the dtype's size;
* **KV cache**: keys and values of every layer for every position, a sliding-window layer
  holding at most its window (HF's cache for Gemma-2/3, OLMo-3; a HookedTransformer keeps
  every position);
* **logits**: the prompt forward's logits at every position where the model returns them all
  (a HookedTransformer: :attr:`ModelShape.prompt_logits`), else at the last position only
  (a bridge and its twin are asked for ``logits_to_keep=1``), plus the last position's in
  fp32 and the sampling noise in fp64;
* **activations**: the largest layer's transient buffers during the prompt forward: the
  residual stream and its norms, the MLP's hidden layer, and eager attention's score matrix
  (its softmax is computed in fp32). A prefix of ``shared_tokens`` that every row shares is
  run once, for one row (:func:`mechintro.generation.shared_prefix`), and each row's
  forward covers only the rest of its prompt (attending to all of it).

Everything but the weights grows linearly with the batch, so :func:`plan_batch` gives the
largest batch that fits a device's memory (less a safety margin) directly, and raises a
:class:`MemoryPlanError` naming the ways out when even one prompt does not fit. The numbers
are estimates (allocator fragmentation and library workspaces are covered by the margin):
the parameter count is exact (tested against Hugging Face's models built on the meta
device), the buffers are upper bounds of what the decode loop keeps alive.

Example::

    shape = ModelShape.from_config("google/gemma-3-27b-it")   # reads config.json only
    plan = plan_batch(shape, prompt_tokens=600, new_tokens=100, dtype="bfloat16",
                      memory=139 * 2**30)
    plan.batch_size, plan.to_dict()["gib"]
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

_log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from mechintro.models import TLModel

GIB = 2**30

# model type -> (d_model-sized norm weights per block, query/key norm: "" none, "head" one
# of d_head each, "full" across the heads; the config's attention_bias and mlp_bias honoured)
_LAYOUT: dict[str, tuple[int, str, bool, bool]] = {
    "llama": (2, "", True, True),
    "smollm3": (2, "", True, True),
    "mistral": (2, "", False, False),
    "qwen2": (2, "", False, False),  # q, k and v always have biases
    "qwen3": (2, "head", True, False),
    "gemma2": (4, "", True, False),
    "gemma3_text": (4, "head", True, False),
    "olmo2": (2, "full", True, False),
    "olmo3": (2, "full", True, False),
}
#: model types whose parameters :func:`count_params` counts by formula; any other is
#: counted by building the model on the meta device (exact, still without weights).
KNOWN_TYPES = tuple(_LAYOUT)

_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


class MemoryPlanError(ValueError):
    """The model and one prompt do not fit the device: the message names the fixes."""


def dtype_bytes(dtype: torch.dtype | str) -> int:
    """Bytes of one element of ``dtype`` (``torch.bfloat16`` or ``"bfloat16"``)."""
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[name]


@dataclass(frozen=True)
class ModelShape:
    """What decides a decoder's memory: widths, depth, heads, vocabulary, windows.

    ``n_params`` is the exact parameter count (from :meth:`count_params`); ``window`` and
    ``sliding_layers``: how many layers keep only the last ``window`` positions in their
    KV cache; ``prompt_logits``: the prompt forward returns the logits of every position
    (True unless known otherwise: a bridge's forwards keep the last one only).
    """

    model_type: str
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    vocab: int
    n_params: int
    window: int = 0
    sliding_layers: int = 0
    prompt_logits: bool = True

    @classmethod
    def from_config(cls, config: Any, revision: str | None = None) -> ModelShape:
        """The shape of a Hugging Face config: an object, a dict (``model_type`` required;
        the architecture's defaults fill the rest), a checkpoint folder or a Hub name."""
        cfg = _config(config, revision)
        text = getattr(cfg, "text_config", None) or cfg  # Gemma-3 multimodal: its text model
        heads = text.num_attention_heads
        d_head = getattr(text, "head_dim", None) or text.hidden_size // heads
        types = list(getattr(text, "layer_types", None) or [])
        window = getattr(text, "sliding_window", None) or 0
        sliding = types.count("sliding_attention") if window else 0
        return cls(
            model_type=text.model_type,
            d_model=text.hidden_size,
            n_layers=text.num_hidden_layers,
            n_heads=heads,
            n_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            d_head=d_head,
            d_mlp=getattr(text, "intermediate_size", None)
            or getattr(text, "n_inner", None)
            or 4 * text.hidden_size,
            vocab=text.vocab_size,
            n_params=count_params(text),
            window=window if sliding else 0,
            sliding_layers=sliding,
        )

    @classmethod
    def from_model(cls, model: TLModel) -> ModelShape:
        """The shape of a loaded TransformerLens model (its exact parameter count).

        A bridge keeps its Hugging Face config (sliding windows included), and generation
        asks it (or its twin) for the last position's logits only; a HookedTransformer's KV
        cache keeps every position, so it gets no window, and returns every position's logits.
        """
        from mechintro.models import backend_of

        n = sum(p.numel() for p in _unique_params(model))
        if backend_of(model) == "bridge":
            hf: Any = model.original_model
            return dataclasses.replace(cls.from_config(hf.config), n_params=n, prompt_logits=False)
        c = model.cfg
        return cls(
            model_type=str(getattr(c, "original_architecture", None) or "hooked"),
            d_model=c.d_model,
            n_layers=c.n_layers,
            n_heads=c.n_heads,
            n_kv_heads=c.n_key_value_heads or c.n_heads,
            d_head=c.d_head,
            d_mlp=c.d_mlp or 4 * c.d_model,
            vocab=c.d_vocab,
            n_params=n,
        )

    def kv_positions(self, positions: int) -> int:
        """Positions held in the KV cache, summed over layers, after ``positions`` tokens."""
        full = self.n_layers - self.sliding_layers
        return full * positions + self.sliding_layers * min(positions, self.window)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _config(config: Any, revision: str | None) -> Any:
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    if isinstance(config, Mapping):
        data = dict(config)
        if "model_type" not in data:
            raise ValueError("a config dict needs its model_type (e.g. 'llama', 'gemma3_text')")
        return AutoConfig.for_model(data.pop("model_type"), **data)
    source = str(config)
    if source.startswith("builtin:"):
        from mechintro.models import builtin_path

        source = str(builtin_path(source.removeprefix("builtin:")))
    path = Path(source)
    if path.suffix == ".gguf":
        return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    if path.is_dir():
        return AutoConfig.from_pretrained(path, local_files_only=True)
    return AutoConfig.from_pretrained(source, revision=revision)


def _unique_params(model: Any) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for p in model.parameters():  # parameters() already skips a tied weight's second name
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def count_params(config: Any) -> int:
    """The parameter count of a causal LM's config, tied weights once; exact, no weights.

    Known model types (:data:`KNOWN_TYPES`) by formula; others by building the model on the
    meta device.
    """
    c = config
    if c.model_type not in KNOWN_TYPES:
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(c)
        return sum(p.numel() for p in _unique_params(model))
    norms, qk_norm, attn_bias, mlp_bias = _LAYOUT[c.model_type]
    d, f, v = c.hidden_size, c.intermediate_size, c.vocab_size
    h = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or h
    dh = getattr(c, "head_dim", None) or d // h
    q_out, kv_out = h * dh, kv * dh
    attn = d * q_out + 2 * d * kv_out + q_out * d
    if c.model_type == "qwen2" or (attn_bias and getattr(c, "attention_bias", False)):
        attn += q_out + 2 * kv_out  # q, k and v biases
    if attn_bias and getattr(c, "attention_bias", False):
        attn += d  # and the output projection's
    mlp = 3 * d * f + (2 * f + d if mlp_bias and getattr(c, "mlp_bias", False) else 0)
    qk = {"head": 2 * dh, "full": q_out + kv_out}.get(qk_norm, 0)
    block = attn + mlp + norms * d + qk
    tied = bool(getattr(c, "tie_word_embeddings", False))
    return v * d * (1 if tied else 2) + c.num_hidden_layers * block + d


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one batch takes on a device (per device for a model split over several).

    ``need`` is what must still fit (the weights excluded when they are already loaded);
    ``budget`` what the device offers less the margin; ``None`` when its memory is unknown.
    """

    batch_size: int
    prompt_tokens: int
    new_tokens: int
    dtype: str
    n_devices: int
    weights: int
    kv_cache: int
    logits: int
    activations: int
    weights_resident: bool = False
    memory: int | None = None
    budget: int | None = None
    shared_tokens: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.logits + self.activations

    @property
    def need(self) -> int:
        return self.total - (self.weights if self.weights_resident else 0)

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.need <= self.budget

    def to_dict(self) -> dict[str, Any]:
        """Every field in bytes, ``total``, ``need`` and ``fits``, and a ``gib`` summary."""
        out = dataclasses.asdict(self)
        out.update(total=self.total, need=self.need, fits=self.fits)
        keys = ("weights", "kv_cache", "logits", "activations", "total", "need", "budget")
        out["gib"] = {k: None if out[k] is None else round(out[k] / GIB, 3) for k in keys}
        return out


def estimate(
    shape: ModelShape,
    *,
    batch_size: int,
    prompt_tokens: int,
    new_tokens: int,
    dtype: torch.dtype | str,
    n_devices: int = 1,
    weights_resident: bool = False,
    memory: int | None = None,
    margin: float = 0.1,
    reserve: int = GIB // 2,
    shared_tokens: int = 0,
) -> MemoryPlan:
    """The memory of one batch on each device (module doc); ``memory``: bytes the device
    offers (free, plus the weights if ``weights_resident``), of which ``margin`` and
    ``reserve`` bytes are kept back for the allocator and library workspaces;
    ``shared_tokens``: the prompts' shared prefix, run once for one row (0: none).

    With ``n_devices`` > 1 the layers, so the weights and the KV cache, are split evenly;
    the logits and a layer's activations stay whole on one device.
    """
    for name, value in (("batch_size", batch_size), ("prompt_tokens", prompt_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 0:
        raise ValueError(f"new_tokens must be an int >= 0, got {new_tokens!r}")
    if not (isinstance(shared_tokens, int) and 0 <= shared_tokens < prompt_tokens):
        raise ValueError(
            f"shared_tokens must be an int from 0 to prompt_tokens - 1, got {shared_tokens!r}"
        )
    elt = dtype_bytes(dtype)
    B, T, S, s = batch_size, prompt_tokens, shared_tokens, shape
    kv = B * s.kv_positions(T + new_tokens) * 2 * s.n_kv_heads * s.d_head * elt
    logits = B * (T if s.prompt_logits else 1) * s.vocab * elt + B * s.vocab * (4 + 8 + 8)
    # the shared prefix once for one row, then each row's rest of the prompt; both counted
    hidden = (B * (T - S) + S) * (6 * s.d_model + 3 * s.d_mlp) * elt
    scores = s.n_heads * (B * (T - S) * T + S * S) * (2 * elt + 4)
    budget = None
    if memory is not None:
        budget = max(0, int(memory * (1 - margin)) - reserve)
    return MemoryPlan(
        batch_size=B,
        prompt_tokens=T,
        new_tokens=new_tokens,
        dtype=str(dtype).removeprefix("torch."),
        n_devices=n_devices,
        weights=math.ceil(s.n_params * elt / n_devices),
        kv_cache=math.ceil(kv / n_devices),
        logits=logits,
        activations=hidden + scores,
        weights_resident=weights_resident,
        memory=memory,
        budget=budget,
        shared_tokens=S,
    )


def plan_batch(
    shape: ModelShape,
    *,
    prompt_tokens: int,
    new_tokens: int,
    dtype: torch.dtype | str,
    memory: int,
    n_devices: int = 1,
    weights_resident: bool = False,
    max_batch: int = 512,
    margin: float = 0.1,
    reserve: int = GIB // 2,
    shared_tokens: int = 0,
) -> MemoryPlan:
    """The plan of the largest batch (at most ``max_batch``) that fits ``memory`` bytes
    (``shared_tokens`` as in :func:`estimate`).

    Raises:
        MemoryPlanError: even a batch of one does not fit; the message names the fixes.
    """
    kw: dict[str, Any] = dict(
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        dtype=dtype,
        n_devices=n_devices,
        weights_resident=weights_resident,
        memory=memory,
        margin=margin,
        reserve=reserve,
        shared_tokens=shared_tokens,
    )
    one = estimate(shape, batch_size=1, **kw)
    assert one.budget is not None
    per_row = estimate(shape, batch_size=2, **kw).need - one.need  # the plan is linear in it
    fixed = one.need - per_row
    batch = min(max_batch, (one.budget - fixed) // per_row) if one.fits else 0
    if batch < 1:
        raise MemoryPlanError(no_fit_message(one))
    return estimate(shape, batch_size=int(batch), **kw)


def no_fit_message(plan: MemoryPlan) -> str:
    """Why ``plan`` does not fit, and what would make it fit."""
    g = plan.to_dict()["gib"]
    where = "each device" if plan.n_devices > 1 else "the device"
    lines = [
        f"the memory plan does not fit: batch {plan.batch_size} of {plan.prompt_tokens} prompt "
        f"+ {plan.new_tokens} new tokens in {plan.dtype} needs {g['need']} GiB on {where} "
        f"(weights {g['weights']}, KV cache {g['kv_cache']}, logits {g['logits']}, "
        f"activations {g['activations']}) but {g['budget']} GiB are usable. Fixes:"
    ]
    if plan.batch_size > 1:
        lines.append("a smaller batch (--batch-size; auto picks the largest that fits)")
    if plan.kv_cache + plan.activations > plan.weights // 4:
        lines.append("shorter replies (max_new_tokens) or shorter prompts")
    if plan.dtype == "float32":
        lines.append("a 2-byte dtype (--dtype bfloat16) halves the weights and buffers")
    lines.append(
        "split the model over GPUs (--n-devices N; load_model(n_devices=N, device_map=...))"
    )
    return " ".join(lines[:1]) + "\n  - " + "\n  - ".join(lines[1:])


def device_memory(device: str | torch.device) -> int | None:
    """Bytes on ``device`` not held by live tensors: CUDA's free memory plus what PyTorch
    holds cached but unused; on the CPU, the kernel's ``MemAvailable``; else ``None``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))
    if dev.type == "cpu" and os.path.exists("/proc/meminfo"):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def model_devices(model: Any) -> list[torch.device]:
    """The devices a model's parameters are on (several for a split model), in order seen."""
    out: list[torch.device] = []
    for p in model.parameters():
        if p.device not in out:
            out.append(p.device)
    return out


def check_before_loading(
    model: str, n_devices: int, device: str, dtype: str, new_tokens: int
) -> None:
    """Before loading: refuse a model whose weights and one prompt cannot fit the device(s).

    The batch size is planned after loading, with the real prompts (run_sweep)."""
    n = n_devices
    free = [device_memory(d) for d in ([f"cuda:{i}" for i in range(n)] if n > 1 else [device])]
    if None in free:
        return
    try:
        shape = ModelShape.from_config(model)
    except (OSError, ValueError, KeyError) as e:  # no config to read: plan after loading
        _log.debug("no memory plan before loading %s: %s", model, e)
        return
    one = estimate(
        shape,
        batch_size=1,
        prompt_tokens=PLAN_PROMPT_TOKENS,
        new_tokens=new_tokens,
        dtype=dtype,
        n_devices=n,
        memory=min(f for f in free if f is not None),
    )
    if not one.fits:
        raise MemoryPlanError(no_fit_message(one))
    _log.info("memory plan for one prompt, GiB: %s", one.to_dict()["gib"])


#: the prompt length of the memory check before loading (the tokenizer is not loaded yet);
#: run_sweep plans again with the real prompts
PLAN_PROMPT_TOKENS = 256
