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
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechintro.engine.decode import (
    MASKS,
    Captured,
    CaptureKey,
    Preamble,
    Replay,
    addresses,
    forget,
    in_place,
    keep,
    make_static_cache,
    repeat_rows,
    reset,
    take,
    weights_version,
)
from mechintro.engine.twin import fast_twin, injected_on
from mechintro.inject import Injection, InjectionLog, StepPosition, steered_from
from mechintro.kvcache import alias_bridge_cache, cache_kwarg, check_cache, output_cache
from mechintro.models import TLModel, backend_of, tokenizer_of
from mechintro.prompts import PromptBatch, positions
from mechintro.record import RunRecord, make_record
from mechintro.tokens import NO_VARIANTS, YES_VARIANTS, Belief, first_token_ids, gumbel_noise

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

    @property
    def tokens_per_second(self) -> float:
        return sum(len(t) for t in self.tokens) / max(self.seconds, 1e-9)


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


def _write_mask(mask: Tensor, padding: Tensor) -> None:
    """The 4D decode mask ``[batch, 1, 1, cache_len]`` from the prompt's padding mask: the
    prompt's real tokens open, everything else (padding, positions not yet written) closed;
    boolean for sdpa, additive (0 or the dtype's minimum) for eager attention."""
    T = padding.shape[1]
    real = padding.bool()
    if mask.dtype == torch.bool:
        mask.zero_()
        mask[:, 0, 0, :T] = real
    else:
        mask.fill_(torch.finfo(mask.dtype).min)
        mask[:, 0, 0, :T].masked_fill_(real, 0.0)


class _Runner:
    """One forward step of either backend, with or without the KV cache.

    With ``twin`` (a bridge's plain HF twin, :mod:`mechintro.engine.twin`) every forward runs on the
    twin instead of the bridge, with the same inputs; ``cache_len > 0`` then makes the KV
    cache a transformers ``StaticCache`` of that many positions (:func:`make_static_cache`:
    written in place, no concatenation per step) instead of a ``DynamicCache``; where it is
    :func:`in_place`, every decode step writes its token, mask column and position into
    buffers that stay in place, as one step captured as a CUDA graph (``graph``) needs: the
    hooks then read the step's position from :attr:`step_position` and the runner logs the
    step in :attr:`log`. ``kept``: a capture of an earlier call of the same shape
    (:mod:`mechintro.engine.decode`), whose cache, buffers and graph this call reuses.
    """

    def __init__(
        self,
        model: TLModel,
        batch: PromptBatch,
        use_cache: bool,
        twin: Any = None,
        cache_len: int = 0,
        graph: bool = False,
        kept: Captured | None = None,
    ) -> None:
        self.model, self.use_cache, self.twin = model, use_cache, twin
        self.backend = backend_of(model)
        self.ids = batch.input_ids
        self.mask = batch.attention_mask
        self.cache: Any = None
        self.cache_len = cache_len if twin is not None and use_cache else 0
        self.kept = kept
        if kept is not None:
            self.cache = kept.cache
            reset(self.cache)
        elif self.cache_len:
            self.cache = make_static_cache(twin.config, self.cache_len)
        # decode in place: a cache without Python state, a mask transformers takes as built
        attention = getattr(getattr(twin, "config", None), "_attn_implementation", None)
        self.buffers = bool(self.cache_len) and in_place(self.cache) and attention in MASKS
        self.graph = graph and self.buffers
        if kept is not None:
            self.step_position = kept.step
            self.step_position.active = False  # until the first decode step
        else:
            at = torch.zeros(1, dtype=torch.long, device=self.ids.device)
            self.step_position = StepPosition(at)
        self.log: InjectionLog | None = None
        self.decode: Replay | None = None
        self.buf: tuple[Tensor, Tensor, Tensor] | None = None  # token, 4D mask, position
        self.preamble: Preamble | None = None  # a shared prefix's one-row KV (static cache)
        self.length = self.ids.shape[1]  # tokens fed so far (static decode)
        self.done = 0  # tokens already in the cache (a shared prefix)
        self.path = "twin" if twin is not None else self.backend
        if self.backend == "hooked" and use_cache:
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

            self.cache = TransformerLensKeyValueCache.init_cache(
                model.cfg, model.cfg.device, len(batch)
            )
        elif self.path == "bridge" and use_cache:
            from transformers import DynamicCache

            alias_bridge_cache(model)  # transformers >= 5.24 hands attention `cache=`
            hf_model: Any = model.original_model
            self.cache = DynamicCache(config=hf_model.config)
        hf = twin if twin is not None else getattr(model, "original_model", None)
        self.cache_kw = cache_kwarg(hf) if hf is not None else ""

    def prefill_shared(self, n: int) -> None:
        """Run the first ``n`` tokens (the same in every row, unpadded) for row 0 only, then
        copy its KV cache to every row; :meth:`step` goes on from position ``n``."""
        B = self.ids.shape[0]
        ids = self.ids[:1, :n]
        ones = torch.ones_like(ids)
        held = self.kept.preamble if self.kept is not None else None
        key = (tuple(ids[0].tolist()), weights_version(self.twin)) if self.cache_len else ()
        if held is not None and held.key == key:  # the kept step's preamble, still valid
            held.fill(self.cache)
            self.preamble = held
        elif self.twin is not None:
            pos = torch.arange(n, device=ids.device)[None]
            one = make_static_cache(self.twin.config, self.cache_len) if self.cache_len else None
            out = self.twin(
                ids,
                attention_mask=ones,
                position_ids=pos,
                use_cache=True,
                logits_to_keep=1,
                **{self.cache_kw: one},
            )
            past = output_cache(out)
            check_cache(past, n, path="twin")
            if self.kept is not None:  # its cache exists: its tensors are the graph's
                self.preamble = self.kept.preamble = Preamble.of(key, past)
                self.preamble.fill(self.cache)
            else:
                if self.cache_len:  # a copy, before past is repeated
                    self.preamble = Preamble.of(key, past)
                self.cache = repeat_rows(past, B)
        elif self.backend == "bridge":
            pos = torch.arange(n, device=ids.device)[None]
            self.model(
                ids,
                attention_mask=ones,
                position_ids=pos,
                use_cache=True,
                **{self.cache_kw: self.cache},
            )
            check_cache(self.cache, n, path="bridge")
            self.cache.batch_repeat_interleave(B)
        else:
            from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

            one = TransformerLensKeyValueCache.init_cache(self.model.cfg, self.model.cfg.device, 1)
            self.model(ids, attention_mask=ones, past_kv_cache=one)
            check_cache(one, n, path="hooked")
            for entry in one.entries:
                entry.past_keys = entry.past_keys.expand(B, -1, -1, -1).contiguous()
                entry.past_values = entry.past_values.expand(B, -1, -1, -1).contiguous()
            one.previous_attention_mask = one.previous_attention_mask.expand(B, -1).contiguous()
            self.cache = one
        self.done = n

    def _static_step(self, new: Tensor) -> Tensor:
        """One decode step through the in-place buffers (first call: make them).

        The attention mask goes in as the 4D mask transformers would build from the padding
        mask (additive for eager attention, boolean for sdpa; the causal part is implied,
        since columns not yet written are masked out), updated one column per step: building
        it inside the step copies a constant from the host, which a graph capture refuses.
        """
        first = self.decode is None
        if first:
            self.decode = self._first_static_step(new)
            self.step_position.active = True
        assert self.buf is not None and self.decode is not None
        ids, mask, pos = self.buf
        ids.copy_(new[:, None])
        mask[..., self.length] = True if mask.dtype == torch.bool else 0.0
        pos += 1
        self.step_position.at.fill_(self.length)
        if self.log is not None:
            self.log.add_forward(self.length, 1)
        self.length += 1
        logits = self.decode()
        if first:  # later steps replay the same kernels on the same buffers
            check_cache(self.cache, self.length, path="twin")
        return logits

    def _first_static_step(self, new: Tensor) -> Replay:
        """The step's buffers and its :class:`Replay`: a kept capture's, loaded with this
        call's batch and injection, or new ones."""
        B = self.mask.shape[0]
        if self.kept is not None:
            self.buf = ids, mask, pos = self.kept.buffers
            _write_mask(mask, self.mask)
            pos.copy_(positions(self.mask)[:, -1:])
            self.kept.load(self.log, B)
            return self.kept.replay
        eager = self.twin.config._attn_implementation == "eager"
        dtype = next(self.twin.parameters()).dtype if eager else torch.bool
        mask = torch.empty(B, 1, 1, self.cache_len, dtype=dtype, device=self.mask.device)
        _write_mask(mask, self.mask)
        self.buf = ids, mask, pos = (
            torch.zeros_like(new)[:, None],
            mask,
            positions(self.mask)[:, -1:].clone(),
        )
        # the twin weakly: a kept step must not keep its model alive (mechintro.engine.decode)
        twin, cache = weakref.ref(self.twin), self.cache
        kw = self.cache_kw
        return Replay(
            lambda: (
                twin()(  # type: ignore[misc]
                    ids,
                    attention_mask=mask,
                    position_ids=pos,
                    use_cache=True,
                    logits_to_keep=1,
                    **{kw: cache},
                ).logits
            ),
            self.graph,
            self.mask.device,
        )

    def step(self, new: Tensor | None) -> Float[Tensor, "batch vocab"]:
        """Feed the prompt (``new=None``) or one new token per row; logits of the last one."""
        if new is not None and self.buffers:
            logits = self._static_step(new)[:, -1, :].float()
            return logits.clone() if self.graph else logits  # a replay overwrites its output
        if new is not None:
            self.ids = torch.cat([self.ids, new[:, None]], dim=1)
            self.mask = torch.cat([self.mask, torch.ones_like(new)[:, None]], dim=1)
        first = new is None
        if not self.use_cache:
            feed = self.ids
        else:
            feed = self.ids[:, self.done :] if first else self.ids[:, -1:]
        if self.twin is not None:
            pos = positions(self.mask)[:, -feed.shape[1] :]
            cache = {self.cache_kw: self.cache} if self.use_cache else {}
            out = self.twin(
                feed,
                attention_mask=self.mask,
                position_ids=pos,
                use_cache=self.use_cache,
                logits_to_keep=1,
                **cache,
            )
            self.cache = output_cache(out) if self.use_cache else None
            logits = out.logits
        elif self.backend == "bridge":
            pos = positions(self.mask)[:, -feed.shape[1] :]
            # the last position's logits only, as on the twin: the same numbers (and less
            # memory than a [batch, prompt, vocab] prefill); the cache is written in place
            kwargs: dict[str, Any] = {
                "attention_mask": self.mask,
                "position_ids": pos,
                "logits_to_keep": 1,
            }
            if self.use_cache:
                kwargs.update({self.cache_kw: self.cache}, use_cache=True)
            logits = self.model(feed, **kwargs)
        else:
            if self.use_cache:
                mask = self.mask[:, -feed.shape[1] :]
                logits = self.model(feed, attention_mask=mask, past_kv_cache=self.cache)
            else:
                logits = self.model(feed, attention_mask=self.mask)
        if self.use_cache:
            check_cache(self.cache, self.ids.shape[1], path=self.path)
        return logits[:, -1, :].float().to(self.ids.device)  # lm_head may sit on another GPU


@torch.no_grad()
def generate(
    model: TLModel,
    batch: PromptBatch,
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
    B = len(batch)
    seeds = _row_seeds(seed, B)
    device = _device(model)
    batch = batch.to(device)
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
        runner = _Runner(model, batch, use_cache, twin, cache_len, graph, reuse)
        if cuda_graph and not runner.graph:
            raise ValueError(
                f"cuda_graph=True: a layer of this model's KV cache keeps its length in Python "
                f"(a sliding window shorter than the {cache_len} positions of prompt + new "
                "tokens, or linear attention), which a graph replay would not update, or its "
                "attention is neither eager nor sdpa: pass cuda_graph=None, or fewer new tokens"
            )
        row_seeds = seeds.to(device)
        out = torch.empty(B, 0, dtype=torch.long, device=device)
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
                out = torch.cat([out, nxt[:, None]], dim=1)
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
        },
        generated=tokens,
    )
    return Generation(
        replies, tokens, finished, seconds, out.shape[1], record, history if keep_logits else None
    )


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
    batch: PromptBatch,
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
    ``fast`` as in :func:`generate`.
    """
    twin = fast_twin(model, fast)
    runner = _Runner(model, batch.to(_device(model)), use_cache=False, twin=twin)
    ctx = injected_on(model, twin, injection, batch) if injection is not None else nullcontext()
    with ctx:
        logits = runner.step(None)
    tok = tokenizer_of(model)
    y1, n1 = first_token_ids(tok, [yes[0], no[0]])
    b = logits[:, y1] - logits[:, n1]
    bv = Belief.of(tok, yes, no)(logits)
    probs = logits.softmax(-1)
    wp = probs[:, first_token_ids(tok, words)] if words else probs[:, :0]
    return Readout(b=b, b_variants=bv, word_probs=wp, words=tuple(words), logits=logits)
