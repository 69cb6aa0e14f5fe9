"""What every trainer here shares: prompt + reply tokenisation with a reply-only loss mask,
the HF modules inside a TransformerLens model, short-lived HF injection hooks, and the loop.

Training runs on the Hugging Face modules (for a bridge, ``model.original_model``; the bridge
computes with those very modules, so it sees every update), with injections added by plain
forward hooks on the decoder layers: the same sum as :func:`mechintro.inject.injected` at
``blocks.L.hook_resid_post`` (a test checks it), without TransformerLens on the hot path.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from mechintro.generation import END_OF_TURN, vocab_id
from mechintro.inject import unit_rows
from mechintro.prompts import Prompt, encode
from mechintro.training.configs import OPTIMIZERS, SCHEDULES, TRAIN_MODES
from mechintro.training.configs import check_positive as check_positive
from mechintro.training.configs import check_positive_int as check_positive_int
from mechintro.vectors import ConceptVector

logger = logging.getLogger(__name__)

_END = 2**62


# ---------------------------------------------------------------------------------------------
# tokenised prompt + reply pairs


@dataclass(frozen=True)
class ReplyBatch:
    """Prompts followed by replies, right-padded, with a mask of the reply tokens.

    ``loss_mask[b, t]`` is True where token ``t`` belongs to row ``b``'s reply (its end-of-turn
    token included): the tokens a reply loss is computed on. ``prompt_len[b]`` is where the
    reply starts; ``trial[b]`` the token before ``Trial n`` (``-1`` if the prompt has none).
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    loss_mask: Bool[Tensor, "batch pos"]
    prompt_len: Int[Tensor, " batch"]
    trial: Int[Tensor, " batch"]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device: str | torch.device) -> ReplyBatch:
        return ReplyBatch(*(t.to(device) for t in self._tensors()))

    def select(self, index: Sequence[int]) -> ReplyBatch:
        """Rows ``index``, cut to their longest real length (still right-padded)."""
        idx = torch.as_tensor(list(index), dtype=torch.long)
        T = int(self.attention_mask[idx].sum(-1).max())
        return ReplyBatch(
            self.input_ids[idx, :T],
            self.attention_mask[idx, :T],
            self.loss_mask[idx, :T],
            self.prompt_len[idx],
            self.trial[idx],
        )

    def _tensors(self) -> tuple[Tensor, ...]:
        return (self.input_ids, self.attention_mask, self.loss_mask, self.prompt_len, self.trial)

    def starts(self, mode: str) -> tuple[Int[Tensor, " batch"], Int[Tensor, " batch"]]:
        """Per-row ``[start, end)`` of the injected positions in ``mode``: ``single-token``
        (the last prompt token) or ``from-trial`` (the token before ``Trial n`` through the
        end of the reply, as the evaluation injects every generated token)."""
        if mode == "single-token":
            return self.prompt_len - 1, self.prompt_len
        if mode == "from-trial":
            if bool((self.trial < 0).any()):
                raise ValueError(
                    "mode='from-trial' needs 'Trial n' in every prompt; use "
                    "mode='single-token' or questions with a '{n}' trial number"
                )
            return self.trial, torch.full_like(self.trial, _END)
        raise ValueError(f"mode must be one of {TRAIN_MODES}, got {mode!r}")


def end_of_reply_id(tokenizer: Any, chat: bool = True) -> int:
    """The token that ends a reply: the chat template's end-of-turn token (raw text: EOS)."""
    if not chat and tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    for tok in END_OF_TURN:
        i = vocab_id(tokenizer, tok)
        if i is not None:
            return i
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-turn or EOS token to end replies with")
    return int(tokenizer.eos_token_id)


def encode_replies(
    tokenizer: Any,
    prompts: Sequence[Prompt],
    replies: Sequence[str],
    *,
    reply_prefix: str | None = None,
) -> ReplyBatch:
    """Tokenise each prompt (as :func:`mechintro.prompts.encode` renders it) followed by its
    reply and the end-of-reply token, right-padded.

    ``reply_prefix`` goes before each reply: default ``" "`` after raw text (``Assistant: ``)
    and ``""`` after a chat template's generation prompt.

    Example::

        b = encode_replies(tok, [Prompt.chat("Hi")], ["Hello."])
        tok.decode(b.input_ids[0][b.loss_mask[0]])  # "Hello.<|im_end|>"
    """
    if len(prompts) != len(replies) or not prompts:
        raise ValueError(f"need one reply per prompt, got {len(prompts)} and {len(replies)}")
    batch = encode(tokenizer, list(prompts))
    rows, masks, plen, trial = [], [], [], []
    for b, (p, reply) in enumerate(zip(prompts, replies)):
        if not isinstance(reply, str) or not reply:
            raise ValueError(f"reply {b} is empty: every example needs a target reply")
        chat = p.raw is None
        prefix = reply_prefix if reply_prefix is not None else ("" if chat else " ")
        pad = int(batch.n_pad[b])
        prompt = batch.input_ids[b, pad:].tolist()
        ids = tokenizer(prefix + reply, add_special_tokens=False)["input_ids"]
        ids = [*ids, end_of_reply_id(tokenizer, chat)]
        rows.append(prompt + ids)
        masks.append([False] * len(prompt) + [True] * len(ids))
        plen.append(len(prompt))
        t = batch.positions.get("trial")
        trial.append(int(t[b]) - pad if t is not None and int(t[b]) >= 0 else -1)
    T = max(len(r) for r in rows)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([r + [pad_id] * (T - len(r)) for r in rows], dtype=torch.long)
    att = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows], dtype=torch.long)
    loss = torch.tensor([m + [False] * (T - len(m)) for m in masks], dtype=torch.bool)
    return ReplyBatch(input_ids, att, loss, torch.tensor(plen), torch.tensor(trial))


def reply_loss(logits: Float[Tensor, "batch pos vocab"], batch: ReplyBatch) -> Tensor:
    """Mean cross-entropy of the reply tokens (each predicted from the position before it)."""
    mask = batch.loss_mask[:, 1:]
    target = batch.input_ids[:, 1:]
    return nn.functional.cross_entropy(logits[:, :-1][mask].float(), target[mask])


def sequence_logprobs(logits: Float[Tensor, "batch pos vocab"], batch: ReplyBatch) -> Tensor:
    """``log p(reply | prompt)`` per row: the sum of the reply tokens' log-probabilities."""
    logp = logits[:, :-1].float().log_softmax(-1)
    tok = logp.gather(-1, batch.input_ids[:, 1:, None])[..., 0]
    return (tok * batch.loss_mask[:, 1:]).sum(-1)


# ---------------------------------------------------------------------------------------------
# the HF modules inside a TransformerLens model


def hf_model_of(model: Any) -> nn.Module:
    """The Hugging Face module to train: a bridge's ``original_model``, or the HF model."""
    import sys

    from transformers import PreTrainedModel

    tl = sys.modules.get("transformer_lens")  # a HookedTransformer means it is imported
    if tl is not None and isinstance(model, tl.HookedTransformer):
        raise TypeError(
            "training runs on the Hugging Face modules, which a HookedTransformer does not keep: "
            "load the model with load_model(..., backend='bridge') or pass the HF model"
        )
    hf = getattr(model, "original_model", model)
    if not isinstance(hf, PreTrainedModel):
        raise TypeError(
            f"expected a TransformerBridge or a transformers model, got {type(model).__name__}"
        )
    return hf


def training_modules(
    model: Any, tokenizer: Any = None, layers: Sequence[int] = ()
) -> tuple[nn.Module, Any]:
    """The HF modules to train (:func:`hf_model_of`) and the tokenizer (``tokenizer``, or
    the model's own); a missing tokenizer or a block index in ``layers`` out of range is an
    error that says so."""
    hf = hf_model_of(model)
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("pass tokenizer=... (an HF model carries no tokenizer)")
    n = len(decoder_layers(hf))
    for layer in layers:
        if not 0 <= layer < n:
            raise ValueError(f"layer {layer} is out of range for a model with {n} blocks")
    return hf, tok


def decoder_layers(hf: nn.Module) -> nn.ModuleList:
    """The decoder blocks of ``hf`` (``model.layers`` for Llama, Qwen, Gemma, OLMo)."""
    n = getattr(getattr(hf, "config", None), "num_hidden_layers", None)
    for _, mod in hf.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) == n:
            return mod
    raise ValueError(
        f"found no list of {n} decoder layers in {type(hf).__name__}: this architecture is not "
        "supported by the trainers"
    )


def device_of(hf: nn.Module) -> torch.device:
    return next(hf.parameters()).device


def unit_vectors(
    vectors: Mapping[str, ConceptVector | Tensor], words: Sequence[str]
) -> dict[str, Tensor]:
    """L2-normalised fp32 copies of ``vectors[w]`` (a clear error for a missing or zero one)."""
    out = {}
    for w, t in _as_tensors(vectors, words).items():
        n = float(torch.linalg.vector_norm(t))
        if t.ndim != 1 or not math.isfinite(n) or n == 0:
            raise ValueError(f"the vector of {w!r} is not a finite nonzero [d_model] tensor")
        out[w] = t / n
    return out


def strength_rows(
    vectors: Mapping[str, ConceptVector | Tensor],
    words: Sequence[str],
    unit: str,
    resid_norm: float | None = None,
    *,
    normalise: bool,
) -> tuple[dict[str, Tensor], float]:
    """What a strength of 1 adds for each of ``words`` (fp32, CPU), and the unit's scale.

    The rows come from :func:`mechintro.inject.unit_rows`, the one place a strength unit is
    decided. ``normalise=True`` starts from the unit vectors (a recipe whose raw strengths
    are multiples of the unit vector, as Fonseca Rivera's LoRA), ``False`` from the vectors
    as given. ``resid_norm`` is the ``resid-norm`` unit (default: the mean of the vectors'
    own ``resid_norm``); the scale returned is it, or 1 for ``raw``.
    """
    base = unit_vectors(vectors, words) if normalise else _as_tensors(vectors, words)
    scale = 1.0
    if unit == "resid-norm":
        if resid_norm is None:
            norms = [v.resid_norm for v in vectors.values() if isinstance(v, ConceptVector)]
            if not norms or any(x is None for x in norms):
                raise ValueError(
                    "unit='resid-norm' needs resid_norm=<mean residual norm at the layer> "
                    "(ConceptVector.resid_norm gives it)"
                )
            resid_norm = float(sum(norms)) / len(norms)  # type: ignore[arg-type]
        scale = float(resid_norm)
    return {w: unit_rows(t, unit, scale) for w, t in base.items()}, scale


def _as_tensors(
    vectors: Mapping[str, ConceptVector | Tensor], words: Sequence[str]
) -> dict[str, Tensor]:
    missing = [w for w in words if w not in vectors]
    if missing:
        raise KeyError(f"no vectors for {missing}: extract them first (extract_vectors(...))")
    out = {}
    for w in words:
        v = vectors[w]
        t = v.vector if isinstance(v, ConceptVector) else torch.as_tensor(v)
        out[w] = t.detach().float().cpu()
    return out


def _output_hook(fn: Callable[[Tensor], Tensor]) -> Callable[..., Any]:
    def hook(module: Any, args: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    return hook


@contextmanager
def hf_injection(
    hf: nn.Module, injections: Mapping[int, tuple[Tensor, Tensor, Tensor]]
) -> Iterator[None]:
    """Add ``delta[b]`` to the output of decoder layer ``l`` at positions ``[start[b],
    end[b])``, for each ``l: (delta, start, end)``, inside the block only.

    Rows whose delta is zero are left bit-identical; positions count from 0 (right-padded
    batches, one full forward per step).
    """
    layers = decoder_layers(hf)
    handles = []

    def make(delta: Tensor, start: Tensor, end: Tensor) -> Callable[[Tensor], Tensor]:
        active = delta.abs().sum(-1) != 0

        def add(h: Tensor) -> Tensor:
            pos = torch.arange(h.shape[1], device=h.device)
            mask = (pos[None] >= start[:, None]) & (pos[None] < end[:, None]) & active[:, None]
            return torch.where(mask[..., None], h + delta[:, None, :].to(h.dtype), h)

        return add

    try:
        for layer, (delta, start, end) in injections.items():
            dev = device_of(hf)
            fn = make(delta.to(dev), start.to(dev), end.to(dev))
            handles.append(layers[layer].register_forward_hook(_output_hook(fn)))
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def hf_mlp_bias(hf: nn.Module, layer: int, bias: Tensor) -> Iterator[None]:
    """Add ``bias`` to the output of decoder layer ``layer``'s MLP module, every position."""
    mlp = getattr(decoder_layers(hf)[layer], "mlp", None)
    if mlp is None:
        raise ValueError(f"decoder layer {layer} has no .mlp module")
    handle = mlp.register_forward_hook(_output_hook(lambda h: h + bias.to(h.dtype)))
    try:
        yield
    finally:
        handle.remove()


def forward_logits(hf: nn.Module, batch: ReplyBatch) -> Float[Tensor, "batch pos vocab"]:
    out = hf(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits if hasattr(out, "logits") else out[0]


# ---------------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainResult:
    """What a training run did: per-step losses, steps, wall time, and its settings."""

    losses: list[float]
    steps: int
    seconds: float
    config: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def mean_loss(self, last: int = 20) -> float:
        tail = self.losses[-last:]
        return sum(tail) / len(tail) if tail else float("nan")


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning-rate multiplier at ``step``: linear warm-up, then the schedule."""
    if step < warmup:
        return (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return max(0.0, 1.0 - frac)
    return 0.5 * (1 + math.cos(math.pi * frac))


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's generators inside the block and restore the caller's state after."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@contextmanager
def trainable_only(hf: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Only ``params`` require grad inside the block, in train mode; flags and mode restored."""
    flags = {id(p): p.requires_grad for p in hf.parameters()}
    was_training = hf.training
    keep = {id(p) for p in params}
    try:
        for p in hf.parameters():
            p.requires_grad_(id(p) in keep)
        for p in params:
            p.requires_grad_(True)
        hf.train()
        yield
    finally:
        for p in hf.parameters():
            p.requires_grad_(flags.get(id(p), False))
        hf.train(was_training)


def optimise(
    params: Sequence[nn.Parameter],
    step_loss: Callable[[int], Tensor],
    *,
    steps: int,
    lr: float,
    schedule: str = "linear",
    warmup: int = 0,
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    optimizer: str = "adamw",
    label: str = "train",
) -> TrainResult:
    """AdamW (or ``optimizer="adamw8bit"``, bitsandbytes' 8-bit AdamW) on ``params`` for
    ``steps`` steps of ``step_loss(step)`` (which builds the batch)."""
    from mechintro.progress import progress_bar

    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    params = list(params)
    if not params:
        raise ValueError("nothing to train: no parameters were given")
    opt = make_optimizer(optimizer, params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, steps, warmup, schedule))
    losses: list[Tensor] = []
    t0 = time.perf_counter()
    bar = progress_bar(range(steps), desc=label, mininterval=5, disable=None)
    for step in bar:
        loss = step_loss(step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{label}: loss became {float(loss)} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        sched.step()
        losses.append(loss.detach())
        if step % 25 == 0:
            recent = float(torch.stack(losses[-25:]).mean())
            bar.set_postfix(loss=f"{recent:.4f}")
            logger.info("%s step %d/%d loss %.4f", label, step, steps, recent)
    seconds = time.perf_counter() - t0
    out = [float(x) for x in torch.stack(losses).cpu()] if losses else []
    return TrainResult(out, steps, seconds)


def make_optimizer(
    name: str, params: Sequence[nn.Parameter], *, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """The optimiser :data:`OPTIMIZERS` names, with a clear error where it cannot run."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ValueError(
            "optimizer='adamw8bit' needs bitsandbytes (pip install bitsandbytes) and a CUDA "
            "device; optimizer='adamw' runs anywhere"
        ) from None
    opt: torch.optim.Optimizer = bnb.optim.AdamW8bit(params, lr=lr, weight_decay=weight_decay)
    return opt
