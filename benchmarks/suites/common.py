"""What every phase shares: settings, the row recorder, the inputs, hand-written hooks."""

from __future__ import annotations

import contextlib
import math
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.shapes import Hardware, Shape, concept_words
from benchmarks.table import Row
from benchmarks.timing import free, measure

GROUPS = ("detection", "patching", "vectors", "forward", "transcoders", "steering")
BACKENDS = ("hf", "hooked", "bridge")
ONE_B_SHAPES = ("gemma3-1b", "llama3-1b")  # the roofline target is stated for the 1B shape


@dataclass
class Settings:
    device: str = "cuda"
    dtype: torch.dtype = torch.bfloat16
    batch: int = 64  # trials per batch (mechintro and batched HF alike)
    new_tokens: int = 32
    repeats: int = 3
    warmup: int = 1
    per_trial: int = 3  # trials timed one at a time for the per-trial baselines
    sweep_batches: int = 2  # run_sweep runs this many batches per call
    patch_tokens: int = 32  # prompt length of the patching sweeps (= positions)
    patch_batch: int = 64  # rows per patching forward
    tl_cells: int = 16  # cells timed for transformer_lens.patching
    concepts: int = 500
    per_concept: int = 5  # concepts timed one at a time with run_with_cache
    depth: float = 0.6  # injection layer as a fraction of the depth
    tc_width: int = 16384  # transcoder features (Gemma Scope 2's narrowest width)
    tc_l0: int = 64  # active features per token the random transcoders are calibrated to
    tc_layers: int = 3  # transcoders cached per call (one on the device at a time)
    attn: str = "sdpa"
    norms: str = "eager"  # the bridge twin's RMSNorms (use_norms)
    groups: tuple[str, ...] = GROUPS
    backends: tuple[str, ...] = BACKENDS
    hardware: Hardware = field(default_factory=lambda: Hardware("unknown", 3.35e12, 989e12))
    log: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))
    on_row: Callable[[Row], None] | None = None  # called after every row (partial results)


class Bench:
    """One shape's rows; :meth:`time` runs a measurement and records it, errors included."""

    def __init__(self, shape: Shape, settings: Settings) -> None:
        self.shape, self.s = shape, settings
        self.rows: list[Row] = []

    def row(self, **kw: Any) -> Row:
        r = Row(shape=self.shape.name, **kw)
        self.rows.append(r)
        shown = r.status if r.seconds is None else f"{r.seconds * 1e3:.3f} ms/{r.unit}"
        extra = f" ({r.note})" if r.status != "ok" and r.note else ""
        self.s.log(f"[{r.shape}] {r.group} / {r.name} [{r.backend}]: {shown}{extra}")
        if self.s.on_row is not None:
            self.s.on_row(r)
        return r

    def time(
        self,
        group: str,
        name: str,
        backend: str,
        unit: str,
        fn: Callable[[], Any],
        units: float,
        *,
        tokens_per_unit: float | None = None,
        how: str | None = None,
        repeats: int | None = None,
        warmup: int | None = None,
        after: Callable[[Any], dict[str, Any]] | None = None,
        **kw: Any,
    ) -> Row:
        """Time ``fn`` (``units`` units per call); a failure becomes an ``error`` row."""
        reps = self.s.repeats if repeats is None else repeats
        try:
            with torch.no_grad():
                t = measure(
                    fn,
                    device=self.s.device,
                    warmup=self.s.warmup if warmup is None else warmup,
                    repeats=reps,
                )
        except Exception as e:  # recorded in the table, with the traceback on stderr
            traceback.print_exc()
            free(self.s.device)
            note = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            return self.row(
                group=group,
                name=name,
                backend=backend,
                unit=unit,
                status="error",
                note=note,
                ref=kw.get("ref", False),
                target=kw.get("target"),
            )
        detail = {"times": t.times, "units_per_call": units}
        if after is not None:
            detail.update(after(t.result))
        return self.row(
            group=group,
            name=name,
            backend=backend,
            unit=unit,
            seconds=t.seconds / units,
            tokens_per_unit=tokens_per_unit,
            how=how or f"median of {reps} calls of {units} {unit}s",
            peak_bytes=t.peak_bytes,
            extra_bytes=t.extra_bytes,
            detail=detail,
            **kw,
        )

    def add(self, r: Row) -> Row:
        """Record an already-made row (a copy of another group's)."""
        self.rows.append(r)
        if self.s.on_row is not None:
            self.s.on_row(r)
        return r

    def skip(self, group: str, name: str, backend: str, unit: str, why: str, **kw: Any) -> Row:
        return self.row(
            group=group, name=name, backend=backend, unit=unit, status="skipped", note=why, **kw
        )


# --- inputs shared by the phases -------------------------------------------------------------


@dataclass
class Inputs:
    """Prompts, vectors and hooks' data of one shape (CPU tensors unless said otherwise)."""

    layer: int
    detection: Any  # PromptBatch of `batch` detection prompts (Trial 1..10)
    single: Any  # PromptBatch of one detection prompt
    vectors: torch.Tensor  # [batch, d_model] fp32 on the CPU, norm sqrt(d_model)
    strengths: torch.Tensor  # [batch]: 4, and 0 for every 8th row (a control)
    deltas: torch.Tensor  # [batch, d_model] on the device, model dtype: strength × vector
    clean: Any  # PromptBatch, one raw prompt of patch_tokens tokens
    corrupt: Any  # the same length, other words
    words: list[str]  # the concepts of the vectors group
    tiled: Any  # `corrupt` repeated patch_batch times (the forward group)


def _raw_prompt_of(tok: Any, words: list[str], n_tokens: int, offset: int) -> Any:
    from mechintro.prompts import Prompt, encode

    for k in range(n_tokens, 0, -1):
        text = " ".join(words[offset : offset + k])
        batch = encode(tok, [Prompt.text(text)])
        if batch.length <= n_tokens:
            if batch.length != n_tokens:
                raise RuntimeError(f"cannot make a prompt of exactly {n_tokens} tokens")
            return batch
    raise RuntimeError("no prompt")


def _repeat(batch: Any, k: int) -> Any:
    return batch.rows(list(range(len(batch))) * k)


def make_inputs(shape: Shape, s: Settings, tok: Any) -> Inputs:
    from tokenizers.pre_tokenizers import Whitespace

    from mechintro.experiments.protocols.detection import PREAMBLE, detection_prompt
    from mechintro.prompts import encode

    dims = shape.dims()
    layer = min(dims.n_layers - 1, round(s.depth * dims.n_layers))
    detection = encode(tok, [detection_prompt(1 + i % 10) for i in range(s.batch)])
    single = encode(tok, [detection_prompt(1)])
    g = torch.Generator().manual_seed(0)
    v = torch.randn(s.batch, dims.d_model, generator=g)
    v = v / v.norm(dim=-1, keepdim=True) * math.sqrt(dims.d_model)  # ~ a residual's norm
    strengths = torch.tensor([0.0 if i % 8 == 7 else 4.0 for i in range(s.batch)])
    deltas = (strengths[:, None] * v).to(s.device, s.dtype)
    words = [w for w, _ in Whitespace().pre_tokenize_str(PREAMBLE)] * 4
    clean = _raw_prompt_of(tok, words, s.patch_tokens, 0)
    corrupt = _raw_prompt_of(tok, words, s.patch_tokens, 1)
    return Inputs(
        layer=layer,
        detection=detection,
        single=single,
        vectors=v,
        strengths=strengths,
        deltas=deltas,
        clean=clean,
        corrupt=corrupt,
        words=concept_words(s.concepts),
        tiled=_repeat(corrupt, s.patch_batch),
    )


# --- hand-written baselines ------------------------------------------------------------------


@contextlib.contextmanager
def hf_hook(hf: Any, layer: int, deltas: torch.Tensor, start: torch.Tensor) -> Iterator[None]:
    """A forward hook on HF decoder layer ``layer`` adding ``deltas[row]`` from ``start[row]``
    on (the prompt forward) and to every decoded token: what one writes by hand."""
    start = start.to(deltas.device)

    def hook(module: Any, args: Any, output: Any) -> Any:
        h = output[0] if isinstance(output, tuple) else output
        if h.shape[1] > 1:
            pos = torch.arange(h.shape[1], device=h.device)
            h = h + deltas[:, None, :] * (pos[None, :] >= start[:, None])[..., None]
        else:
            h = h + deltas[:, None, :]
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = hf.model.layers[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def tl_hook(delta: torch.Tensor, start: int) -> Callable[..., torch.Tensor]:
    """A TransformerLens hook adding ``delta`` from position ``start`` on (batch of one)."""

    def hook(x: torch.Tensor, hook: Any) -> torch.Tensor:
        if x.shape[1] > 1:
            pos = torch.arange(x.shape[1], device=x.device)
            return x + delta * (pos >= start)[None, :, None].to(x.dtype)
        return x + delta

    return hook


def hf_generate(hf: Any, batch: Any, n: int, device: str) -> Any:
    """Greedy HF generation (the zeroed stop-token logits make every row run ``n`` steps)."""
    return hf.generate(
        input_ids=batch.input_ids.to(device),
        attention_mask=batch.attention_mask.to(device),
        max_new_tokens=n,
        do_sample=False,
    )


def new_tokens(prompt: int) -> Callable[[Any], dict[str, Any]]:
    """``after=`` for a call returning ``[batch, prompt + new]`` token ids."""
    return lambda out: {"new_tokens": int(out.shape[1]) - prompt}
