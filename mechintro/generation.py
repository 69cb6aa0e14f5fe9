"""Batched, seeded generation under injection, and one-forward logit readouts.

:func:`generate` runs many trials as one batch (each row its own concept, strength or none,
through a per-row :class:`~mechintro.inject.Injection`), with the KV cache of either backend,
greedy or sampled, stopping each row at its end-of-turn token. On a TransformerBridge it runs
on the bridge's plain HF twin (:mod:`mechintro.engine.twin`: the same weights and logits, without
the hook points that double the cost of a forward); on CUDA with a static KV cache, every
decode step after the first replayed from one captured CUDA graph.

Sampling is reproducible row by row: each row draws its noise from a counter-based hash of
``(seed + row, step, token)``, not from a shared generator, so the same seed gives the same
text alone or in any batch, on CPU or GPU (Gumbel-max sampling: ``argmax(logits / T + G)``
samples exactly from ``softmax(logits / T)``).

:func:`readout` reads the answer position in one forward: Godet's belief
``b = logit(Yes) − logit(No)``, its logsumexp-over-variants form, and first-token
probabilities of any word list.

Example::

    batch = encode(model.tokenizer, prompts)
    out = generate(model, batch, injection=inj, max_new_tokens=60, temperature=1.0, seed=0)
    out.replies
    out.to_frame()  # one row per reply: prompt, reply, n_tokens, finished, seed
    generate(model, "The cat sat on the", max_new_tokens=5).replies  # raw text works too
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechintro.engine.decode import Captured, CaptureKey, addresses, forget, keep, take
from mechintro.engine.norms import norms_of
from mechintro.engine.step import Runner
from mechintro.engine.twin import fast_twin, injected_on
from mechintro.engine.twin import use_attention as use_attention  # public: the twin's attention
from mechintro.engine.twin import use_norms as use_norms  # public: the twin's norms (compiled)
from mechintro.inject import Injection, InjectionLog, steered_from
from mechintro.models import TLModel, backend_of, tokenizer_of
from mechintro.prompts import PromptBatch, PromptLike, as_prompt_batch
from mechintro.record import RunRecord, make_record
from mechintro.tokens import NO_VARIANTS, YES_VARIANTS, Belief, first_token_ids, gumbel_noise

if TYPE_CHECKING:
    import pandas as pd

END_OF_TURN = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>", "<|endoftext|>")


@dataclass
class Generation:
    """Replies of one batched generation, with what produced them."""

    replies: list[str]
    tokens: list[list[int]]  # generated ids per row, stop token excluded
    finished: list[bool]  # the row reached a stop token
    seconds: float
    steps: int
    record: RunRecord
    logits: list[Tensor] | None = None  # [batch, vocab] per step, with keep_logits=True
    prompts: tuple[str, ...] = ()  # the text each row's model saw (template rendered)

    @property
    def tokens_per_second(self) -> float:
        return sum(len(t) for t in self.tokens) / max(self.seconds, 1e-9)

    def to_frame(self) -> pd.DataFrame:
        """One row per reply: ``row``, ``prompt``, ``reply``, ``n_tokens`` (generated, the
        stop token excluded), ``finished`` (reached a stop token) and ``seed``.

        Example: ``generate(model, ["The cat", "A dog"], max_new_tokens=5).to_frame()``.
        """
        import pandas as pd

        n = len(self.replies)
        return pd.DataFrame(
            {
                "row": range(n),
                "prompt": list(self.prompts) if self.prompts else [""] * n,
                "reply": self.replies,
                "n_tokens": [len(t) for t in self.tokens],
                "finished": self.finished,
                "seed": self.record.seeds,
            }
        )


def stop_token_ids(model: TLModel) -> list[int]:
    """EOS ids of the tokenizer and generation config, plus known end-of-turn tokens."""
    tok = tokenizer_of(model)
    ids: set[int] = set()
    if tok.eos_token_id is not None:
        ids.add(int(tok.eos_token_id))
    hf = getattr(model, "original_model", None)
    gen_eos = getattr(getattr(hf, "generation_config", None), "eos_token_id", None)
    if gen_eos is not None:
        ids.update(int(i) for i in ([gen_eos] if isinstance(gen_eos, int) else gen_eos))
    ids.update(i for i in (vocab_id(tok, t) for t in END_OF_TURN) if i is not None)
    return sorted(ids)


def vocab_id(tokenizer: Any, token: str) -> int | None:
    """The id of ``token`` as one vocabulary entry, or None if the vocabulary lacks it.

    A lookup, not ``get_vocab()``: that builds a dict of the whole vocabulary (Gemma-3's has
    262k entries) on every call.
    """
    i = tokenizer.convert_tokens_to_ids(token)
    if i is None or tokenizer.convert_ids_to_tokens(int(i)) != token:
        return None  # absent: no id, or the unknown token's
    return int(i)


#: shorter common prefixes are not worth a separate forward
MIN_SHARED_PREFIX = 8


def shared_prefix(batch: PromptBatch, steered_from: int) -> int:
    """How many leading tokens every row shares, unpadded, before any steered position.

    Those tokens give every row the same keys and values, so :func:`generate` computes them
    once, for one row, and copies the KV cache to the batch (the detection preamble is most
    of each prompt). 0 when the rows differ early, are padded, or when that prefix would be
    shorter than :data:`MIN_SHARED_PREFIX`.
    """
    if len(batch) < 2:
        return 0
    ids, mask = batch.input_ids, batch.attention_mask
    same = (ids == ids[:1]).all(0) & (mask == 1).all(0)
    n = int(same.long().cumprod(0).sum())
    n = min(n, batch.length - 1, steered_from)
    return n if n >= MIN_SHARED_PREFIX else 0


@torch.no_grad()
def generate(
    model: TLModel,
    batch: PromptLike,
    *,
    injection: Injection | Sequence[Injection] | None = None,
    max_new_tokens: int = 100,
    temperature: float = 0.0,
    seed: int | Sequence[int] = 0,
    stop_ids: Sequence[int] | None = None,
    use_cache: bool = True,
    keep_logits: bool = False,
    share_prefix: bool = True,
    fast: bool | None = None,
    static_cache: bool | None = None,
    cuda_graph: bool | None = None,
) -> Generation:
    """Generate a reply for every row of ``batch``, optionally under ``injection``.

    Args:
        batch: the prompts: a PromptBatch, a string or a list of strings (raw text),
            Prompts, or a token tensor (:func:`mechintro.prompts.as_prompt_batch`).
        temperature: 0 for greedy decoding; otherwise Gumbel-max sampling at that temperature.
        seed: one seed for the batch (row ``i`` uses ``seed + i``) or one per row.
        stop_ids: tokens that end a row (default: :func:`stop_token_ids`).
        use_cache: the KV cache (the injection is applied on every decode step either way).
        keep_logits: also return the logits of every step (for parity checks and readouts).
        share_prefix: with the KV cache, compute the leading tokens that every row shares
            and no injection steers once, for one row (:func:`shared_prefix`); the logits are
            those of the full batch (a test checks it). Hooks registered outside this call
            then see that prefix as one row: pass ``False`` if they must see every row.
        fast: on a bridge, run on its plain HF twin (:mod:`mechintro.engine.twin`: the same
            weights without TransformerLens's hook points; the same logits, a test checks
            it). ``None``: unless a hook is registered on the bridge
            (it must fire, so the bridge runs); ``False``: always the bridge.
        static_cache: on the twin with the KV cache, a preallocated ``StaticCache``
            written in place instead of a growing ``DynamicCache``. ``None``: where the CUDA
            graph runs (without it the static cache is the slower: benchmarks/RESULTS.md).
        cuda_graph: capture one decode step of the twin as a CUDA graph and replay it for
            every later token: a small model's decode loop is bound by launching kernels
            from Python, which a replay skips. The same kernels on the same buffers: the
            same tokens and logits as without (a GPU test checks it). ``None``: on a CUDA
            device, with the twin and the KV cache, where every cache layer keeps its state
            in tensors (a sliding window at least as long as prompt + new tokens). The
            captured step, its static cache and buffers are kept for the next call of the
            same shape (:mod:`mechintro.engine.decode`), which then captures nothing.
    """
    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    if temperature < 0 or temperature != temperature:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    device = _device(model)
    batch = as_prompt_batch(getattr(model, "tokenizer", None), batch, device=device)
    B = len(batch)
    seeds = _row_seeds(seed, B)
    stops = torch.tensor(
        list(stop_ids) if stop_ids is not None else stop_token_ids(model), dtype=torch.long
    )
    stops = stops.to(device)
    pad = tokenizer_of(model).pad_token_id
    pad = int(pad if pad is not None else (stops[0] if len(stops) else 0))
    twin = fast_twin(model, fast)
    graphable = twin is not None and use_cache and device.type == "cuda"
    if cuda_graph and (not graphable or static_cache is False):
        raise ValueError(
            "cuda_graph=True needs a CUDA device, the KV cache (use_cache=True), a bridge "
            "running on its twin (fast=None or True, no hook left on the bridge) and the "
            "static cache (static_cache=None or True): pass cuda_graph=None to use it where "
            "it applies"
        )
    graph = graphable and cuda_graph is not False and static_cache is not False
    static = static_cache if static_cache is not None else graph
    cache_len = batch.length + max_new_tokens if static else 0
    key = None
    reuse = None
    if cache_len and twin is not None and use_cache:  # an earlier call's step, if kept
        injs = [injection] if isinstance(injection, Injection) else list(injection or ())
        param, attention = next(twin.parameters()), twin.config._attn_implementation
        layers = tuple(i.layer for i in injs)
        shape = (B, cache_len, param.device, param.dtype, attention, layers, graph)
        key = CaptureKey("decode", shape, addresses(twin))
        reuse = take(twin, key)
    try:  # whatever happens, a kept step taken for this call is given back
        runner = Runner(model, batch, use_cache, twin, cache_len, graph, reuse)
        if cuda_graph and not runner.graph:
            raise ValueError(
                f"cuda_graph=True: a layer of this model's KV cache keeps its length in Python "
                f"(a sliding window shorter than the {cache_len} positions of prompt + new "
                "tokens, or linear attention), which a graph replay would not update, or its "
                "attention is none of eager, sdpa and mechintro_grouped: pass cuda_graph=None, "
                "or fewer new tokens"
            )
        row_seeds = seeds.to(device)
        picked: list[Tensor] = []  # each step's tokens, stacked into [batch, steps] at the end
        done = torch.zeros(B, dtype=torch.bool, device=device)
        history: list[Tensor] = []
        t0 = time.perf_counter()
        prefix = 0
        if use_cache and share_prefix:
            start = steered_from(injection, batch) if injection is not None else batch.length
            prefix = shared_prefix(batch, start)
            if prefix:
                runner.prefill_shared(prefix)
        ctx = (
            injected_on(
                model, twin, injection, batch, first_position=prefix, step=runner.step_position
            )
            if injection is not None
            else nullcontext(None)
        )
        with ctx as log:
            runner.log = log
            logits = runner.step(None)
            for step in range(max_new_tokens):
                if keep_logits:
                    history.append(logits)
                if temperature == 0:
                    nxt = logits.argmax(-1)
                else:
                    noise = gumbel_noise(row_seeds, step, logits.shape[-1]).to(logits.device)
                    nxt = (logits.double() / temperature + noise).argmax(-1)
                nxt = torch.where(done, pad, nxt)
                picked.append(nxt)
                done |= torch.isin(nxt, stops)
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                logits = runner.step(nxt)
    finally:
        if reuse is not None:
            assert key is not None
            keep(twin, key, reuse)
    if reuse is None and key is not None and runner.decode is not None and runner.buf is not None:
        captured = Captured(runner.cache, runner.buf, runner.step_position, runner.decode)
        captured.preamble = runner.preamble
        keep(twin, key, captured)
    seconds = time.perf_counter() - t0
    out = torch.stack(picked, dim=1)
    tokens, finished = _trim(out, stops, done)
    replies = tokenizer_of(model).batch_decode(tokens, skip_special_tokens=True)
    record = make_record(
        model,
        batch,
        injection_log=log if isinstance(log, InjectionLog) else None,
        seeds=seeds.tolist(),
        settings={
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "use_cache": use_cache,
            "shared_prefix": prefix,
            "stop_ids": stops.tolist(),
            "path": runner.path,
            "static_cache": bool(runner.cache_len),
            "cuda_graph": runner.graph,
            # the twin's attention (use_attention); None: the backend computes its own
            "attention": None if twin is None else twin.config._attn_implementation,
            "norms": None if twin is None else norms_of(twin),  # use_norms
        },
        generated=tokens,
    )
    kept = history if keep_logits else None
    return Generation(replies, tokens, finished, seconds, out.shape[1], record, kept, batch.texts)


def release_captures() -> None:
    """Drop every decode step and patching forward kept for later calls (their static caches,
    buffers and CUDA graphs) and the GPU memory they hold."""
    forget()


def generation_path(model: TLModel, fast: bool | None = None) -> str:
    """The path :func:`generate` takes on ``model`` as it is now: ``"twin"`` (a bridge's plain
    HF twin), ``"bridge"`` (a hook on it, ``fast=False``, ...) or ``"hooked"``; every
    generation's record names the one it took (``record.settings["path"]``)."""
    return "twin" if fast_twin(model, fast) is not None else backend_of(model)


@contextmanager
def fast_path(
    model: TLModel,
    injection: Injection | Sequence[Injection] | None = None,
    batch: PromptBatch | None = None,
) -> Iterator[Any]:
    """The plain Hugging Face model that :func:`generate` and :func:`readout` run for a
    bridge: its twin (the bridge's own parameters, no hook points), with ``injection`` of
    ``batch`` on it for the block, where the bridge's hook points wrap its modules.

    For timing or inspecting the fast path itself::

        with fast_path(model, inj, batch) as hf:
            logits = hf(input_ids=batch.input_ids, use_cache=False).logits

    ValueError where the fast path does not apply (:func:`generation_path` is not ``"twin"``).
    """
    twin = fast_twin(model)
    if twin is None:
        raise ValueError(f"no fast path here: generation_path is {generation_path(model)!r}")
    if injection is None:
        yield twin
        return
    if batch is None:
        raise ValueError("an injection needs the batch whose positions it steers (batch=)")
    with injected_on(model, twin, injection, batch):
        yield twin


def _row_seeds(seed: int | Sequence[int], rows: int) -> Tensor:
    if isinstance(seed, int):
        return torch.arange(rows, dtype=torch.long) + seed
    seeds = torch.as_tensor(list(seed), dtype=torch.long)
    if seeds.shape != (rows,):
        raise ValueError(f"{len(seeds)} seeds for {rows} rows: give one seed or one per row")
    return seeds


def _trim(out: Tensor, stops: Tensor, done: Tensor) -> tuple[list[list[int]], list[bool]]:
    tokens, stop = [], set(stops.tolist())
    for row in out.tolist():
        cut = next((i for i, t in enumerate(row) if t in stop), len(row))
        tokens.append(row[:cut])
    return tokens, done.tolist()


def _device(model: TLModel) -> torch.device:
    return next(model.parameters()).device


@dataclass
class Readout:
    """Answer-position readouts of one forward pass, one value per row."""

    b: Float[Tensor, " batch"]  # logit(Yes) - logit(No), single tokens
    b_variants: Float[Tensor, " batch"]  # logsumexp(Yes variants) - logsumexp(No variants)
    word_probs: Float[Tensor, "batch words"]  # first-token probabilities of `words`
    words: tuple[str, ...]
    logits: Float[Tensor, "batch vocab"]  # at the answer position


@torch.no_grad()
def readout(
    model: TLModel,
    batch: PromptLike,
    *,
    injection: Injection | Sequence[Injection] | None = None,
    yes: Sequence[str] = YES_VARIANTS,
    no: Sequence[str] = NO_VARIANTS,
    words: Sequence[str] = (),
    fast: bool | None = None,
) -> Readout:
    """Yes/No belief and word probabilities at the last prompt token, in one forward.

    ``b`` uses the first variant of each list (``Yes`` vs ``No``); ``b_variants`` is the
    logsumexp over the variants' first tokens, deduplicated (Godet, 2025; for the usual
    tokenizers every variant is one token): defined even when neither answer is top-1.
    ``batch`` and ``fast`` as in :func:`generate`.
    """
    batch = as_prompt_batch(getattr(model, "tokenizer", None), batch, device=_device(model))
    twin = fast_twin(model, fast)
    runner = Runner(model, batch, use_cache=False, twin=twin)
    ctx = injected_on(model, twin, injection, batch) if injection is not None else nullcontext()
    with ctx:
        logits = runner.step(None)
    tok = tokenizer_of(model)
    y1, n1 = first_token_ids(tok, [yes[0], no[0]])
    b = logits[:, y1] - logits[:, n1]
    bv = Belief.of(tok, yes, no)(logits)
    # without words, no softmax over the vocabulary: an empty [batch, 0] of the same dtype
    wp = logits.softmax(-1)[:, first_token_ids(tok, words)] if words else logits[:, :0]
    return Readout(b=b, b_variants=bv, word_probs=wp, words=tuple(words), logits=logits)
