"""One forward step of generation on any path: the bridge, a HookedTransformer, or the
bridge's plain HF twin, with or without the KV cache (:class:`Runner`).

:func:`mechintro.generation.generate` feeds the prompt, then one token per row per step;
:func:`mechintro.generation.readout` feeds the prompt alone. On the twin with a static KV
cache the decode step runs on buffers that stay in place
(:func:`~mechintro.engine.decode.in_place`), so that it can be captured once as a CUDA graph
and replayed, and kept for the next call of the same shape (:mod:`mechintro.engine.decode`).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from mechintro.engine.decode import (
    MASKS,
    Captured,
    Preamble,
    Replay,
    in_place,
    make_static_cache,
    repeat_rows,
    reset,
    weights_version,
)
from mechintro.inject import InjectionLog, StepPosition
from mechintro.kvcache import alias_bridge_cache, cache_kwarg, check_cache, output_cache
from mechintro.models import TLModel, backend_of
from mechintro.prompts import PromptBatch, positions


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


class Runner:
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
