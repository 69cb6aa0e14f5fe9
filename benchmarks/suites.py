"""The measurements of one shape, side by side in one process: plain HF, HookedTransformer,
TransformerBridge, and mechintro on both backends.

:func:`run_shape` builds the tokenizer and the random HF model on the device, then runs the
groups in three phases, so that every backend sees the same weights:

1. **plain HF** (before anything wraps the model): per-trial and batched ``generate`` with a
   forward hook, plain forwards;
2. **HookedTransformer** (converted from the HF weights; freed afterwards): TL's per-trial
   ``generate`` with a hook, ``transformer_lens.patching``, ``run_with_cache``, and mechintro;
3. **TransformerBridge** (it wraps the HF modules in place, hence last): the same, plus the
   reference rows (mechintro on the bridge).

Groups (the unit of each in brackets): ``detection`` [trial], ``patch resid_pre`` [cell],
``patch heads`` [cell], ``vectors`` [concept], ``forward`` [row of ``patch_tokens`` tokens],
``transcoders`` and ``steering`` (not implemented yet: :func:`transcoder_rows`,
:func:`steering_rows` are where they go). Per-trial and per-cell baselines are timed on a
few units and reported per unit (a sweep of N units takes N times as long: they run one at
a time, so the time is linear in N).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import math
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmarks.shapes import (
    Hardware,
    Shape,
    build_model,
    build_tokenizer,
    concept_words,
    roofline_seconds,
    weight_bytes,
)
from benchmarks.table import Row
from benchmarks.timing import free, measure, sync

GROUPS = ("detection", "patching", "vectors", "forward", "pending")
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
    attn: str = "sdpa"
    groups: tuple[str, ...] = GROUPS
    backends: tuple[str, ...] = BACKENDS
    hardware: Hardware = field(default_factory=lambda: Hardware("unknown", 3.35e12, 989e12))
    log: Callable[[str], None] = field(default=lambda s: print(s, file=sys.stderr, flush=True))
    on_row: Callable[[Row], None] | None = None  # called after every row (partial results)


def have_transformer_lens() -> bool:
    return importlib.util.find_spec("transformer_lens") is not None


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
    from mechintro.prompts import PromptBatch

    return PromptBatch(
        input_ids=batch.input_ids.repeat(k, 1),
        attention_mask=batch.attention_mask.repeat(k, 1),
        texts=batch.texts * k,
        positions={n: v.repeat(k) for n, v in batch.positions.items()},
        spans={n: v.repeat(k, 1) for n, v in batch.spans.items()},
    )


def make_inputs(shape: Shape, s: Settings, tok: Any) -> Inputs:
    from tokenizers.pre_tokenizers import Whitespace

    from mechintro.prompts import encode
    from mechintro.protocols.detection import PREAMBLE, detection_prompt

    layer = min(shape.n_layers - 1, round(s.depth * shape.n_layers))
    detection = encode(tok, [detection_prompt(1 + i % 10) for i in range(s.batch)])
    single = encode(tok, [detection_prompt(1)])
    g = torch.Generator().manual_seed(0)
    v = torch.randn(s.batch, shape.d_model, generator=g)
    v = v / v.norm(dim=-1, keepdim=True) * math.sqrt(shape.d_model)  # ~ a residual's norm
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


# --- the phases -------------------------------------------------------------------------------


def hf_phase(b: Bench, hf: Any, x: Inputs, tok: Any) -> dict[str, Row]:
    """Plain Hugging Face rows. Returns the plain-forward rows the patch groups reuse."""
    s, out = b.s, {}
    dev, N = s.device, s.new_tokens
    if "detection" in s.groups:
        one = x.deltas[:1]
        start = x.single.position("trial")

        def per_trial() -> Any:
            with hf_hook(hf, x.layer, one, start):
                return hf_generate(hf, x.single, N, dev)

        b.time(
            "detection",
            "per-trial HF generate + hook",
            "hf",
            "trial",
            per_trial,
            1,
            tokens_per_unit=N,
            repeats=s.per_trial,
            how=f"median of {s.per_trial} trials run one at a time",
            after=new_tokens(x.single.length),
        )

        def batched() -> Any:
            with hf_hook(hf, x.layer, x.deltas, x.detection.position("trial")):
                return hf_generate(hf, x.detection, N, dev)

        b.time(
            "detection",
            f"batched HF generate + hook, batch {s.batch}",
            "hf",
            "trial",
            batched,
            s.batch,
            tokens_per_unit=N,
            target=0.9,
            note="the fastest a user writes by hand (no prefix sharing)",
            after=new_tokens(x.detection.length),
        )
    if "forward" in s.groups or "patching" in s.groups:
        ids = x.tiled.input_ids.to(dev)
        R, T = s.patch_batch, s.patch_tokens
        fwd = b.time(
            "forward",
            "plain HF forward",
            "hf",
            "row",
            lambda: hf(input_ids=ids, use_cache=False),
            R,
            tokens_per_unit=T,
            ref=True,
            how=f"median of {s.repeats} forwards of {R}×{T} tokens",
        )
        out["plain"] = fwd
        if "forward" in s.groups:
            start = torch.zeros(R, dtype=torch.long)
            delta = x.deltas[:1].expand(R, -1)

            def hooked_fwd() -> Any:
                with hf_hook(hf, x.layer, delta, start):
                    return hf(input_ids=ids, use_cache=False)

            b.time(
                "forward",
                "HF forward + hand-written hook",
                "hf",
                "row",
                hooked_fwd,
                R,
                tokens_per_unit=T,
            )
    if "vectors" in s.groups:
        from mechintro.prompts import encode
        from mechintro.vectors import METHODS, word_list

        m = METHODS["lindsey"]
        prompts = [m.prompt(w) for w in x.words + word_list(m.baseline)]
        batches = [encode(tok, prompts[i : i + 32], device=dev) for i in range(0, len(prompts), 32)]

        def forward_all() -> Any:
            for p in batches:
                hf(input_ids=p.input_ids, attention_mask=p.attention_mask, use_cache=False)

        b.time(
            "vectors",
            "plain HF forward of the same prompts",
            "hf",
            "concept",
            forward_all,
            len(x.words),
            how=f"full depth, batches of 32, {len(prompts)} prompts "
            f"({len(x.words)} concepts + baseline)",
        )
    return out


def _tl_forward_row(b: Bench, model: Any, x: Inputs, backend: str) -> Row:
    ids = x.tiled.input_ids.to(b.s.device)
    name = "TransformerBridge forward" if backend == "bridge" else "HookedTransformer forward"
    return b.time(
        "forward",
        name,
        backend,
        "row",
        lambda: model(ids),
        b.s.patch_batch,
        tokens_per_unit=b.s.patch_tokens,
    )


def tl_phase(b: Bench, model: Any, x: Inputs, backend: str, plain: dict[str, Row]) -> None:
    """Rows of one TransformerLens backend: TL's own tools and mechintro on it."""
    from mechintro.generate import generate
    from mechintro.inject import Injection, injected

    s = b.s
    dev, N, ref = s.device, s.new_tokens, backend == "bridge"
    tl_name = "TransformerBridge" if ref else "HookedTransformer"
    fwd = None
    if "forward" in s.groups or "patching" in s.groups:
        fwd = _tl_forward_row(b, model, x, backend)
    if "forward" in s.groups:
        inj = Injection(x.layer, x.vectors[0], 4.0, mode="all")

        def injected_fwd() -> Any:
            with injected(model, inj, x.tiled):
                return model(x.tiled.input_ids.to(dev))

        b.time(
            "forward",
            f"{tl_name} forward + mechintro injection",
            backend,
            "row",
            injected_fwd,
            s.patch_batch,
            tokens_per_unit=s.patch_tokens,
        )
    if "detection" in s.groups:
        ids = x.single.input_ids.to(dev)
        hook = tl_hook(x.deltas[0], int(x.single.position("trial")[0]))

        def per_trial() -> Any:
            with model.hooks(fwd_hooks=[(f"blocks.{x.layer}.hook_resid_post", hook)]):
                return model.generate(
                    ids,
                    max_new_tokens=N,
                    stop_at_eos=False,
                    do_sample=False,
                    use_past_kv_cache=True,
                    verbose=False,
                )

        b.time(
            "detection",
            f"per-trial {tl_name}.generate + hook",
            backend,
            "trial",
            per_trial,
            1,
            tokens_per_unit=N,
            repeats=s.per_trial,
            target=50.0,
            how=f"median of {s.per_trial} trials run one at a time",
            after=new_tokens(x.single.length),
        )
        inj = Injection(x.layer, x.vectors, x.strengths, mode="from-trial")
        b.time(
            "detection",
            f"mechintro generate, batch {s.batch}",
            backend,
            "trial",
            lambda: generate(model, x.detection, injection=inj, max_new_tokens=N, stop_ids=[]),
            s.batch,
            tokens_per_unit=N,
            after=lambda g: {
                "shared_prefix": g.record.settings["shared_prefix"],
                "new_tokens": g.steps,
            },
        )
        sweep_rows(b, model, x, backend)
    if "patching" in s.groups:
        patch_rows(b, model, x, backend, plain.get("plain"), fwd)
    if "vectors" in s.groups:
        vector_rows(b, model, x, backend)


def sweep_rows(b: Bench, model: Any, x: Inputs, backend: str) -> None:
    from mechintro.sweeps import SweepSpec, run_sweep
    from mechintro.vectors import ConceptVector

    s = b.s
    total = s.batch * s.sweep_batches
    numbers = tuple(range(1, 5))
    n_concepts = max(1, (total * 7 // 8) // len(numbers))
    controls = max(0, total - n_concepts * len(numbers))
    words = concept_words(n_concepts)
    vecs = {
        x.layer: {
            w: ConceptVector(
                w,
                x.vectors[i % s.batch],
                x.layer,
                "lindsey",
                resid_norm=math.sqrt(b.shape.d_model),
            )
            for i, w in enumerate(words)
        }
    }
    temps = (0.0, 1.0) if backend == "bridge" else (0.0,)
    for temperature in temps:
        spec = SweepSpec(
            concepts=tuple(words),
            layers=(x.layer,),
            strengths=(4.0,),
            trial_numbers=numbers,
            n_controls=controls,
            max_new_tokens=s.new_tokens,
            temperature=temperature,
            readout=False,
        )
        root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
        count = iter(range(10**6))

        def sweep(spec: SweepSpec = spec, root: Path = root, count: Iterator[int] = count) -> Any:
            return run_sweep(
                model,
                spec,
                root / str(next(count)),
                vectors=vecs,
                batch_size=s.batch,
                progress=False,
            )

        name = f"mechintro run_sweep, batch {s.batch}"
        if temperature:
            name += f", sampled T={temperature:g}"
        b.time(
            "detection",
            name,
            backend,
            "trial",
            sweep,
            len(spec),
            tokens_per_unit=s.new_tokens,
            ref=backend == "bridge" and not temperature,
            how=f"median of {s.repeats} sweeps of {len(spec)} trials (fresh folder each, "
            "vectors given, readout off)",
            after=lambda df: {"mean_new_tokens": float(df.n_tokens.mean())},
        )
        shutil.rmtree(root, ignore_errors=True)


def patch_rows(
    b: Bench, model: Any, x: Inputs, backend: str, hf_plain: Row | None, own_plain: Row | None
) -> None:
    import pandas as pd

    from mechintro.patching import activation_patch, yes_no_gap

    s, dev = b.s, b.s.device
    n_layers, n_heads = b.shape.n_layers, b.shape.n_heads
    T = x.corrupt.length
    metric = yes_no_gap(model)
    cases = (
        (
            "patch resid_pre",
            "resid_pre",
            "each",
            n_layers * T,
            "get_act_patch_resid_pre",
            ["layer", "pos"],
            T,
        ),
        (
            "patch heads",
            "head",
            "all",
            n_layers * n_heads,
            "get_act_patch_attn_head_out_all_pos",
            ["layer", "head"],
            n_heads,
        ),
    )
    for group, component, positions, cells, tl_fn, cols, width in cases:

        def ours(c: str = component, p: str = positions) -> Any:
            return activation_patch(
                model, x.corrupt, x.clean, component=c, positions=p, batch_size=s.patch_batch
            )

        b.time(
            group,
            "mechintro activation_patch",
            backend,
            "cell",
            ours,
            cells,
            tokens_per_unit=T,
            ref=backend == "bridge",
            how=f"median of {s.repeats} sweeps of {cells} cells, {s.patch_batch} rows/forward",
        )
        k = min(s.tl_cells, cells)
        picks = [round(i * (cells - 1) / max(1, k - 1)) for i in range(k)]
        df = pd.DataFrame([(p // width, p % width) for p in picks], columns=cols)
        tl_name = f"transformer_lens.patching.{tl_fn}"
        try:
            from transformer_lens import patching as tlp

            _, cache = model.run_with_cache(x.clean.input_ids.to(dev))
            fn = getattr(tlp, tl_fn)
            corrupt = x.corrupt.input_ids.to(dev)

            def tl(fn: Any = fn, df: Any = df, cache: Any = cache, corrupt: Any = corrupt) -> Any:
                with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
                    return fn(
                        model,
                        corrupt,
                        cache,
                        lambda lg: metric(lg).sum(),
                        index_axis_names=None,
                        index_df=df,
                    )

            b.time(
                group,
                tl_name,
                backend,
                "cell",
                tl,
                k,
                tokens_per_unit=T,
                target=50.0,
                repeats=1,
                how=f"{k} of {cells} cells timed (one forward each), per cell",
            )
            del cache
        except Exception as e:
            traceback.print_exc()
            b.row(
                group=group,
                name=tl_name,
                backend=backend,
                unit="cell",
                status="error",
                note=f"{type(e).__name__}: {e}"[:160],
                target=50.0,
            )
        own_target = 0.8 if backend == "bridge" else None
        for plain, label, target in (
            (own_plain, "plain forward, same tokens", own_target),
            (hf_plain, "plain HF forward, same tokens", None),
        ):
            if plain is None or (plain.backend == "hf" and backend != "bridge"):
                continue
            b.add(
                dataclasses.replace(
                    plain,
                    group=group,
                    name=label,
                    unit="cell",
                    ref=False,
                    target=target,
                    ratio=None,
                    note=f"{s.patch_batch} rows of {T} tokens per forward (from the forward group)",
                )
            )


def vector_rows(b: Bench, model: Any, x: Inputs, backend: str) -> None:
    from mechintro.models import tokenizer_of
    from mechintro.prompts import encode
    from mechintro.vectors import METHODS, extract_vectors, word_list

    s, dev = b.s, b.s.device
    n = len(x.words)
    b.time(
        "vectors",
        f"mechintro extract_vectors, {n} concepts",
        backend,
        "concept",
        lambda: extract_vectors(model, x.words, layer=x.layer),
        n,
        ref=backend == "bridge",
        how=f"median of {s.repeats} calls (100 baseline words, batches of 32, no cache)",
    )
    m = METHODS["lindsey"]
    n_base = len(word_list(m.baseline))
    k = min(s.per_concept, n)
    tok = tokenizer_of(model)
    ids = [encode(tok, [m.prompt(w)]).input_ids.to(dev) for w in x.words[:k]]
    name = f"blocks.{x.layer}.hook_resid_post"

    def one_by_one() -> Any:
        for i in ids:
            _, cache = model.run_with_cache(i)
            cache[name][0, -1].float().cpu()

    scale = (n + n_base) / n  # the baseline words' prompts, spread over the concepts
    b.time(
        "vectors",
        "per-concept run_with_cache (full cache)",
        backend,
        "concept",
        one_by_one,
        k / scale,
        repeats=1,
        how=f"{k} prompts timed one at a time, ×{scale:.2f} for the {n_base} baseline prompts",
    )


# --- rows still to write ------------------------------------------------------------------


def transcoder_rows(b: Bench) -> None:
    """Transcoder feature caching: bytes stored vs dense, and transcoder layers resident.

    Targets: caches ≤ 2% of the dense size; at most one transcoder layer on the GPU at a time.
    To add: when ``mechintro.transcoders`` exists, cache the features of a batch of prompts
    for every layer, and record ``Row(..., detail={"stored_bytes", "dense_bytes",
    "max_layers_resident"})`` with ``seconds`` = time per cached token.
    """
    exists = importlib.util.find_spec("mechintro.transcoders") is not None
    why = (
        "mechintro.transcoders exists: write its rows in benchmarks/suites.py:transcoder_rows"
        if exists
        else "mechintro.transcoders does not exist yet"
    )
    for name in (
        "feature cache: bytes stored vs dense (≤ 2%)",
        "transcoder layers resident on the GPU (≤ 1)",
    ):
        b.row(
            group="transcoders",
            name=name,
            backend="bridge",
            unit="token",
            status="not implemented",
            note=why,
        )


def steering_rows(b: Bench) -> None:
    """Steering attribution: time per strength point against one forward pass.

    To add: when ``circuits`` has steering attribution, time it over a strength sweep and
    add it as the reference of a ``steering`` group, with ``plain forward`` as the baseline.
    """
    exists = importlib.util.find_spec("circuits.steering") is not None
    why = (
        "circuits.steering exists: write its rows in benchmarks/suites.py:steering_rows"
        if exists
        else "steering attribution does not exist yet"
    )
    b.row(
        group="steering",
        name="steering attribution per strength point vs a forward",
        backend="bridge",
        unit="point",
        status="not implemented",
        note=why,
    )


# --- one shape --------------------------------------------------------------------------------


def roofline_row(b: Bench, hf: Any, x: Inputs) -> None:
    from mechintro.generate import shared_prefix
    from mechintro.inject import Injection, steered_from

    s = b.s
    inj = Injection(x.layer, x.vectors, x.strengths, mode="from-trial")
    shared = shared_prefix(x.detection, steered_from(inj, x.detection))
    wbytes = weight_bytes(hf)
    roof = roofline_seconds(
        b.shape,
        s.hardware,
        wbytes,
        batch=s.batch,
        prompt=x.detection.length,
        shared=shared,
        new_tokens=s.new_tokens,
    )
    one_b = b.shape.name in ONE_B_SHAPES and s.batch >= 64
    hw = s.hardware
    b.row(
        group="detection",
        name=f"roofline, batch {s.batch}",
        backend="-",
        unit="trial",
        seconds=roof["total"] / s.batch,
        tokens_per_unit=s.new_tokens,
        status="model",
        target=1 / 3 if one_b else None,
        how=f"{wbytes / 1e9:.2f} GB weights + KV per step at {hw.bandwidth / 1e12:.2f} TB/s; "
        f"prefill of {x.detection.length} tokens ({shared} shared) at "
        f"{hw.peak_flops / 1e12:.0f} TFLOP/s",
        detail={**roof, "weight_bytes": wbytes, "prompt": x.detection.length, "shared": shared},
    )


def run_shape(shape: Shape, s: Settings, work: Path) -> tuple[list[Row], dict[str, Any]]:
    """Every row of ``shape``; also the build times and sizes (for the JSON's meta)."""
    from mechintro.models import load_model

    b = Bench(shape, s)
    meta: dict[str, Any] = {"shape": shape.to_dict()}
    start = t0 = time.perf_counter()
    style = "gemma3" if shape.arch == "gemma3" else "llama"
    tok = build_tokenizer(work / f"{shape.name}-tokenizer", style, shape.vocab, s.concepts)
    meta["tokenizer_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    hf = build_model(shape, tok, device=s.device, dtype=s.dtype, attn=s.attn)
    sync(s.device)
    meta["build_hf_seconds"] = time.perf_counter() - t0
    meta["params"] = sum(p.numel() for p in hf.parameters())
    x = make_inputs(shape, s, tok)
    meta["detection_prompt_tokens"] = x.detection.length
    meta["layer"] = x.layer
    s.log(
        f"[{shape.name}] built in {meta['build_hf_seconds']:.1f} s: "
        f"{meta['params'] / 1e9:.2f}B parameters, prompt {x.detection.length} tokens"
    )
    plain: dict[str, Row] = {}
    if "hf" in s.backends:
        plain = hf_phase(b, hf, x, tok)
    if "detection" in s.groups:
        roofline_row(b, hf, x)
    tl = have_transformer_lens()
    for backend in ("hooked", "bridge"):
        if backend not in s.backends:
            continue
        if not tl:
            b.skip(
                "detection",
                "mechintro / TransformerLens rows",
                backend,
                "trial",
                "transformer_lens is not installed",
            )
            continue
        t0 = time.perf_counter()
        try:
            model = load_model(
                hf,
                backend=backend,
                tokenizer=tok,
                dtype=s.dtype,
                device=s.device,
                name=f"random-{shape.name}",
            )
        except Exception as e:
            traceback.print_exc()
            b.skip(
                "detection",
                f"load_model(backend={backend!r})",
                backend,
                "trial",
                f"{type(e).__name__}: {e}"[:160],
            )
            continue
        sync(s.device)
        meta[f"build_{backend}_seconds"] = time.perf_counter() - t0
        tl_phase(b, model, x, backend, plain)
        del model
        free(s.device)
    if "pending" in s.groups:
        transcoder_rows(b)
        steering_rows(b)
    del hf
    free(s.device)
    meta["seconds"] = time.perf_counter() - start
    return b.rows, meta
