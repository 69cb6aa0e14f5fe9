"""The measurements of one shape, side by side in one process: plain HF, HookedTransformer,
TransformerBridge, and mechintro on both backends.

:func:`run_shape` builds the tokenizer and the random HF model on the device, then runs the
groups in three phases, so that every backend sees the same weights:

1. **plain HF** (before anything wraps the model): per-trial and batched ``generate`` with a
   forward hook, plain forwards (:mod:`.hf`);
2. **HookedTransformer** (converted from the HF weights; freed afterwards): TL's per-trial
   ``generate`` with a hook, ``transformer_lens.patching``, ``run_with_cache``, and mechintro
   (:mod:`.tl`, :mod:`.patch`);
3. **TransformerBridge** (it wraps the HF modules in place, hence last): the same, plus the
   reference rows: mechintro on the bridge, which runs on the bridge's plain HF twin
   (:func:`mechintro.generation.fast_path`), and the same calls on the bridge itself (``...,
   bridge path``),
   and the transcoder feature caches (:mod:`.transcoders`).

Groups (the unit of each in brackets): ``detection`` [trial], ``patch resid_pre`` [cell],
``patch heads`` [cell], ``vectors`` [concept], ``forward`` [row of ``patch_tokens`` tokens],
``transcoders`` [cached token] and ``steering`` [strength point; with the transcoders, on
the bridge]. Per-trial and per-cell baselines are
timed on a few units and reported per unit (a sweep of N units takes N times as long: they
run one at a time, so the time is linear in N).
"""

from __future__ import annotations

import importlib.util
import time
import traceback
from pathlib import Path
from typing import Any

from benchmarks.shapes import Shape, build_model, build_tokenizer, roofline_seconds, weight_bytes
from benchmarks.suites.common import (
    BACKENDS,
    GROUPS,
    ONE_B_SHAPES,
    Bench,
    Inputs,
    Settings,
    make_inputs,
)
from benchmarks.suites.hf import hf_phase
from benchmarks.suites.tl import tl_phase
from benchmarks.table import Row
from benchmarks.timing import free, sync

__all__ = ["BACKENDS", "GROUPS", "Settings", "have_transformer_lens", "run_shape"]


def have_transformer_lens() -> bool:
    return importlib.util.find_spec("transformer_lens") is not None


def roofline_row(b: Bench, hf: Any, x: Inputs) -> None:
    from mechintro.generation import shared_prefix
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
        if backend == "bridge":
            from mechintro.generation import use_norms

            use_norms(model, s.norms)
        sync(s.device)
        meta[f"build_{backend}_seconds"] = time.perf_counter() - t0
        tl_phase(b, model, x, backend, plain)
        del model
        free(s.device)
    del hf
    free(s.device)
    meta["seconds"] = time.perf_counter() - start
    return b.rows, meta
