"""The detection sweep at the studies' scale: ``python -m benchmarks.scale --out DIR``.

One process, one random-weight model (the Gemma-3-27B shape in bf16 by default: 54 GB, built
on the GPU from one seed), ``run_sweep`` (greedy, ``--new-tokens`` tokens, one injection
layer at 60% depth, 1 in 8 trials a control) at each batch size of ``--batches`` (``auto``:
the memory plan's), under each attention of ``--attention`` for the bridge's twin
(:func:`mechintro.generation.use_attention`: ``eager``, HF's, which repeats every K/V head
over the cache; ``mechintro_grouped``, which does not; ``ATTENTION+compiled``: with the twin's
RMSNorms compiled, :func:`mechintro.generation.use_norms`). Each shape first runs one untimed
batch (its decode step captured, once per shape as in a study; its time is reported as
"first batch"), then a sweep of ``--sweep-batches`` batches (``auto``: of the largest batch
the plan may pick, 512), timed whole (its shared preamble and records included). Per
sweep: trials/s, the roofline's trials/s at that batch and the fraction reached, the
planned and measured peak memory (the first batch's included). Rows:

* the **roofline** per batch (:func:`benchmarks.shapes.roofline_seconds`): one batch takes at
  least its prefill (``shared + batch·(prompt − shared)`` tokens at ``2·params`` FLOPs each
  plus attention, at the peak FLOP rate) plus ``new_tokens − 1`` decode steps, each the
  longer of (every weight + every row's KV cache) over the HBM bandwidth and its FLOPs over
  the peak; trials/s = batch ÷ that time;
* **parity**: one batch of 8 trials, 4 tokens, each entry of ``--attention`` against the
  first (by default grouped against eager): the largest logit
  difference over the largest logit (bf16: rounding differs, so a few argmax flips on random
  weights' flat logits are expected) and the tokens that agree;
* ``--profile B``: ``torch.profiler`` over one sweep of one batch of B (its capture kept
  from the timed sweep) per attention; every GPU kernel's time grouped by part from its name
  (:data:`PARTS`: attention, GEMM, copies, norm and reductions, elementwise, sampling,
  other), in ms per batch and per generated token (the prefill's share included);
* ``--host B``: cProfile over one more sweep of one batch of B per attention (the host's
  functions by self time, mechintro's by cumulative time).

Writes ``DIR/scale.md`` (paste it into benchmarks/RESULTS.md) and ``DIR/scale.json``,
rewritten after every sweep. ``--device cpu --shape tiny-gemma3`` runs it in seconds (the
smoke test does).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
MAX_BATCH = 512  # run_sweep's cap for batch_size="auto"

#: (part, substrings of a kernel's name), first match wins: sampling before reductions
#: (argmax is one), attention before GEMM (its kernels are CUTLASS ones too), copies before
#: elementwise (a copy is an elementwise kernel of the copy functor)
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sampling", ("argmax", "isin", "gumbel")),
    ("attention", ("fmha", "flash", "attention", "softmax", "sdpa", "cudnn")),
    ("GEMM", ("gemm", "nvjet", "xmma", "cutlass", "cublas", "splitk", "matmul")),
    ("copy (K/V repeat, cache, layout)", ("copy", "index", "cat", "memcpy", "memset", "scatter")),
    ("norm and reductions", ("reduce_kernel", "pow", "rsqrt", "mean")),
    ("elementwise", ("elementwise",)),
)


def part_of(kernel: str) -> str:
    """The part a GPU kernel belongs to, by its name (:data:`PARTS`; else ``other``)."""
    low = kernel.lower()
    return next((p for p, keys in PARTS if any(k in low for k in keys)), "other")


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from benchmarks.shapes import SHAPES

    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__)
    p.add_argument("--out", default="bench_scale", help="folder for scale.md and scale.json")
    p.add_argument("--shape", default="gemma3-27b", choices=sorted(SHAPES))
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="bf16 on a GPU")
    p.add_argument("--batches", default="32,64,128,auto", help="batch sizes, or auto")
    p.add_argument(
        "--attention",
        default="eager,mechintro_grouped",
        help="the twin's attention per sweep (mechintro.generation.use_attention); "
        "ATTENTION+compiled also compiles its RMSNorms (mechintro.generation.use_norms)",
    )
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--sweep-batches", type=int, default=3, help="batches per timed sweep")
    p.add_argument("--profile", type=int, default=0, help="profile one batch of this size")
    p.add_argument(
        "--host",
        type=int,
        default=0,
        help="profile the host (cProfile) over one batch of this size",
    )
    p.add_argument("--bandwidth", type=float, default=None, help="HBM B/s (default: datasheet)")
    p.add_argument("--peak-flops", type=float, default=None, help="bf16 FLOP/s (default 989e12)")
    args = p.parse_args(argv)
    args.batches = tuple(b for b in args.batches.split(",") if b)
    args.attention = tuple(a for a in args.attention.split(",") if a)
    bad = [b for b in args.batches if b != "auto" and not (b.isdigit() and int(b) > 0)]
    if bad or not args.batches:
        p.error(f"--batches: positive ints or auto, got {bad or 'none'}")
    return args


def _spec(words: list[str], layer: int, trials: int, new_tokens: int) -> Any:
    """A detection sweep of ``trials`` trials: concepts × 4 trial numbers, 1 in 8 a control."""
    from mechintro.experiments.sweeps import SweepSpec

    numbers = (1, 2, 3, 4)
    n = max(1, (trials * 7 // 8) // len(numbers))
    return SweepSpec(
        concepts=tuple(words[:n]),
        layers=(layer,),
        strengths=(4.0,),
        trial_numbers=numbers,
        n_controls=max(0, trials - n * len(numbers)),
        max_new_tokens=new_tokens,
        temperature=0.0,
        readout=False,
    )


def _vectors(words: list[str], layer: int, d_model: int) -> dict[int, dict[str, Any]]:
    """A random unit-RMS concept vector per word (seeded): the sweep's cost does not depend
    on what the vectors are."""
    import torch

    from mechintro.vectors import ConceptVector

    g = torch.Generator().manual_seed(0)
    out = {}
    for w in words:
        v = torch.randn(d_model, generator=g)
        v = v / v.norm() * math.sqrt(d_model)
        out[w] = ConceptVector(w, v, layer, "lindsey", resid_norm=math.sqrt(d_model))
    return {layer: out}


def _prompt_shape(tok: Any, layer: int, d_model: int) -> tuple[int, int]:
    """(prompt tokens, tokens shared by every row) of the sweep's detection prompts."""
    import torch

    from mechintro.experiments.protocols.detection import detection_prompt
    from mechintro.generation import shared_prefix
    from mechintro.inject import Injection, steered_from
    from mechintro.prompts import encode

    batch = encode(tok, [detection_prompt(n) for n in (1, 2, 3, 4)])
    inj = Injection(layer, torch.zeros(4, d_model), [4.0] * 4, mode="from-trial")
    return batch.length, shared_prefix(batch, steered_from(inj, batch))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def configure(model: Any, entry: str) -> str:
    """Set the twin's attention and norms for one ``--attention`` entry (``ATTENTION`` or
    ``ATTENTION+compiled``); the label of what runs."""
    from mechintro.generation import use_attention, use_norms

    attention, _, norms = entry.partition("+")
    ran = use_attention(model, attention)  # what the twin runs (the same, where valid)
    normed = use_norms(model, norms or "eager")
    return ran if normed == "eager" else f"{ran} + {normed} norms"


def _parity(model: Any, tok: Any, layer: int, d_model: int, entries: Sequence[str]) -> Any:
    """Each ``--attention`` entry after the first against the first, on one batch of 8
    trials, 4 greedy tokens."""
    import torch

    from mechintro.experiments.protocols.detection import detection_prompt
    from mechintro.generation import generate
    from mechintro.inject import Injection
    from mechintro.prompts import encode

    if len(entries) < 2:
        return None
    batch = encode(tok, [detection_prompt(1 + i % 4) for i in range(8)])
    g = torch.Generator().manual_seed(1)
    v = torch.randn(8, d_model, generator=g)
    v = v / v.norm(dim=-1, keepdim=True) * math.sqrt(d_model)
    inj = Injection(layer, v, [4.0] * 7 + [0.0], mode="from-trial")
    runs = {}
    for entry in entries:
        label = configure(model, entry)
        out = generate(model, batch, injection=inj, max_new_tokens=4, keep_logits=True)
        runs[label] = (out.tokens, torch.stack(out.logits or []).float())
    (ref, (tb, lb)), *others = runs.items()
    found = []
    for name, (ta, la) in others:
        flat_a = [t for row in ta for t in row]
        flat_b = [t for row in tb for t in row]
        found.append(
            {
                "attentions": [ref, name],
                "max_abs_diff": float((la - lb).abs().max()),
                # the prompt's own logits: no earlier token can differ there
                "first_step_max_abs_diff": float((la[0] - lb[0]).abs().max()),
                "max_abs_logit": float(lb.abs().max()),
                "relative": float((la - lb).abs().max() / lb.abs().max()),
                "first_tokens_equal": sum(a[0] == b[0] for a, b in zip(ta, tb, strict=True)),
                "tokens_equal": sum(x == y for x, y in zip(flat_a, flat_b, strict=False)),
                "tokens": len(flat_b),
                "rows": len(tb),
            }
        )
    return found


def _profile(sweep: Callable[[], Any], device: str, tokens: int) -> dict[str, Any]:
    """Every GPU kernel of one call of ``sweep``, grouped by part: ms per batch and per
    generated token; the ten longest kernels."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    _sync(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        sweep()
        _sync(device)
    wall = time.perf_counter() - t0
    kernels: dict[str, list[float]] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels.setdefault(e.name, []).append(e.time_range.elapsed_us() / 1e3)
    parts: dict[str, float] = {}
    for name, times in kernels.items():
        parts[part_of(name)] = parts.get(part_of(name), 0.0) + sum(times)
    busy = sum(parts.values())
    top = sorted(kernels.items(), key=lambda kv: -sum(kv[1]))[:10]
    return {
        "wall_ms": wall * 1e3,
        "device_ms": busy,
        "parts_ms": dict(sorted(parts.items(), key=lambda kv: -kv[1])),
        "per_token_ms": {k: v / tokens for k, v in parts.items()},
        "top": [
            {"kernel": k[:160], "ms": sum(t), "launches": len(t), "part": part_of(k)}
            for k, t in top
        ],
    }


def _host(sweep: Callable[[], Any], device: str, top: int = 20) -> dict[str, Any]:
    """Where the host's time goes in one call of ``sweep``: cProfile's functions by self time
    (a call that waits for the GPU, ``tolist``, ``item`` or a tensor's truth value, has the
    wait as its self time or its caller's) and mechintro's by cumulative time."""
    import cProfile
    import pstats

    _sync(device)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    try:
        sweep()
        _sync(device)
    finally:
        prof.disable()
    wall = time.perf_counter() - t0
    rows = []
    stats: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    for (file, line, name), (_, calls, own, cumulative, _) in stats.items():
        where = name if file == "~" else f"{Path(file).name}:{line}({name})"
        rows.append(
            {"function": where, "file": file, "calls": calls,
             "self_ms": own * 1e3, "cumulative_ms": cumulative * 1e3}
        )  # fmt: skip
    ours = [r for r in rows if f"{os.sep}mechintro{os.sep}" in r["file"]]
    return {
        "wall_ms": wall * 1e3,
        "by_self": sorted(rows, key=lambda r: -r["self_ms"])[:top],
        "mechintro_by_cumulative": sorted(ours, key=lambda r: -r["cumulative_ms"])[:top],
    }


def _host_lines(batch: int, hosts: dict[str, Any]) -> list[str]:
    def table(title: str, rows: list[dict[str, Any]]) -> list[str]:
        head = ["", f"| {title} | calls | self ms | cumulative ms |", "|---|---|---|---|"]
        return head + [
            f"| `{r['function']}` | {r['calls']} | {r['self_ms']:.1f} | {r['cumulative_ms']:.1f} |"
            for r in rows
        ]

    lines = []
    for name, h in hosts.items():
        lines += [
            "",
            f"Host profile, {name}, one batch of {batch} (cProfile, its overhead included): "
            f"wall {h['wall_ms']:.0f} ms.",
        ]
        lines += table("function (by self time)", h["by_self"])
        lines += table("mechintro (by cumulative time)", h["mechintro_by_cumulative"])
    return lines


def markdown(meta: dict[str, Any], sweeps: list[dict[str, Any]], extra: dict[str, Any]) -> str:
    hw = meta["hardware"]
    lines = [
        f"# mechintro at scale: {meta['shape']}",
        "",
        f"- date: {meta['date']}; wall time {meta['wall_seconds']:.0f} s"
        + ("" if meta["complete"] else " (**partial**)"),
        f"- device: {hw['name']} ({meta['device']}, {meta['dtype']}); roofline at "
        f"{hw['bandwidth'] / 1e12:.2f} TB/s and {hw['peak_flops'] / 1e12:.0f} TFLOP/s",
        f"- command: `{meta['command']}`",
        f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
        f"- sweep: prompts of {meta['prompt']} tokens ({meta['shared']} shared), "
        f"{meta['new_tokens']} new tokens (greedy, no early stop), layer {meta['layer']}, "
        f"{meta['sweep_batches']} batches per timed sweep after one untimed; weights "
        f"{meta['weight_bytes'] / 1e9:.1f} GB; model built in {meta['build_seconds']:.0f} s",
        "",
        "| attention | batch | trials | seconds | trials/s | roofline trials/s | of roofline "
        "| peak GiB (planned) | first batch s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in sweeps:
        planned = "-" if s["planned_gib"] is None else f"{s['planned_gib']:.1f}"
        peak = "-" if s["peak_gib"] is None else f"{s['peak_gib']:.1f}"
        lines.append(
            f"| {s['attention']} | {s['batch']}{' (auto)' if s['requested'] == 'auto' else ''} "
            f"| {s['trials']} | {s['seconds']:.1f} | {s['trials_per_s']:.1f} "
            f"| {s['roofline_trials_per_s']:.1f} | {100 * s['of_roofline']:.1f}% "
            f"| {peak} ({planned}) | {s['first_batch_seconds']:.1f} |"
        )
    for parity in extra.get("parity") or ():
        lines += [
            "",
            f"Parity, {parity['attentions'][0]} vs {parity['attentions'][1]} (8 rows, 4 "
            f"tokens): largest logit difference {parity['max_abs_diff']:.3g} of logits up to "
            f"{parity['max_abs_logit']:.3g} ({parity['relative']:.2g}), at the first token "
            f"(the prompt's logits, before any token can differ) "
            f"{parity.get('first_step_max_abs_diff', float('nan')):.3g}; first tokens equal "
            f"in {parity['first_tokens_equal']} of {parity['rows']} rows, "
            f"{parity['tokens_equal']} of {parity['tokens']} tokens.",
        ]
    profiles = extra.get("profiles") or {}
    if profiles:
        names = list(profiles)
        parts = sorted({p for prof in profiles.values() for p in prof["parts_ms"]})
        lines += [
            "",
            f"Profile, one batch of {extra['profile_batch']} ({meta['new_tokens']} tokens), "
            "GPU kernel time by part in ms per generated token (the prefill's share "
            "included), and per batch:",
            "",
            "| part | " + " | ".join(f"{n} ms/token | {n} ms/batch" for n in names) + " |",
            "|---|" + "---|---|" * len(names),
        ]
        for part in sorted(parts, key=lambda p: -profiles[names[0]]["parts_ms"].get(p, 0.0)):
            cells = []
            for n in names:
                ms = profiles[n]["parts_ms"].get(part, 0.0)
                cells.append(f"{ms / meta['new_tokens']:.2f} | {ms:.0f}")
            lines.append(f"| {part} | " + " | ".join(cells) + " |")
        cells = [
            f"{p['device_ms'] / meta['new_tokens']:.2f} | {p['device_ms']:.0f}"
            for p in profiles.values()
        ]
        lines.append("| **all kernels** | " + " | ".join(cells) + " |")
        walls = ", ".join(f"{n} {p['wall_ms']:.0f} ms" for n, p in profiles.items())
        lines += ["", f"Wall time of the profiled sweep (profiler on): {walls}."]
        for n, p in profiles.items():
            lines += ["", f"Longest kernels, {n}:", ""]
            lines += [
                f"- {k['ms']:.0f} ms, {k['launches']}×, {k['part']}: `{k['kernel'][:100]}`"
                for k in p["top"][:6]
            ]
    lines += _host_lines(extra.get("host_batch", 0), extra.get("hosts") or {})
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse(argv)
    import torch

    from benchmarks.run import versions
    from benchmarks.shapes import (
        SHAPES,
        build_model,
        build_tokenizer,
        concept_words,
        hardware,
        roofline_seconds,
        weight_bytes,
    )
    from mechintro.experiments.sweeps import load_runs, run_sweep
    from mechintro.generation import release_captures, use_attention, use_norms
    from mechintro.models import load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_name = args.dtype or ("bf16" if device.startswith("cuda") else "fp32")
    dtype = getattr(torch, DTYPES[dtype_name])
    shape = SHAPES[args.shape]
    hw = hardware(device, args.bandwidth, args.peak_flops)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    most = max(MAX_BATCH if b == "auto" else int(b) for b in args.batches)
    n_words = most * args.sweep_batches // 4 + 1
    work = Path(tempfile.mkdtemp(prefix="mechintro-scale-"))
    tok = build_tokenizer(work / "tokenizer", shape.arch, shape.vocab, n_words)
    t0 = time.perf_counter()
    hf = build_model(shape, tok, device=device, dtype=dtype, attn="eager")
    _sync(device)
    build = time.perf_counter() - t0
    model = load_model(hf, tokenizer=tok, name=f"random-{shape.name}", dtype=dtype, device=device)
    dims = shape.dims()
    layer = min(dims.n_layers - 1, round(0.6 * dims.n_layers))
    words = concept_words(n_words)
    vectors = _vectors(words, layer, dims.d_model)
    prompt, shared = _prompt_shape(tok, layer, dims.d_model)
    wbytes = weight_bytes(hf)
    meta: dict[str, Any] = {
        "shape": shape.name,
        "device": device,
        "dtype": dtype_name,
        "hardware": hw.to_dict(),
        "command": "python -m benchmarks.scale "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "versions": versions(),
        "prompt": prompt,
        "shared": shared,
        "layer": layer,
        "new_tokens": args.new_tokens,
        "sweep_batches": args.sweep_batches,
        "weight_bytes": wbytes,
        "build_seconds": build,
    }
    sweeps: list[dict[str, Any]] = []
    extra: dict[str, Any] = {
        "profile_batch": args.profile, "profiles": {}, "host_batch": args.host, "hosts": {}
    }  # fmt: skip
    count = iter(range(10**6))

    def write(final: bool) -> None:
        meta["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        meta["wall_seconds"] = time.perf_counter() - t_start
        meta["complete"] = final
        (out / "scale.md").write_text(markdown(meta, sweeps, extra), encoding="utf-8")
        data = {"meta": meta, "sweeps": sweeps, **extra}
        (out / "scale.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")

    def sweep_of(trials: int, batch: int | str) -> Callable[[], Any]:
        spec = _spec(words, layer, trials, args.new_tokens)

        def run() -> Any:
            folder = work / f"sweep-{next(count)}"
            run_sweep(model, spec, folder, vectors=vectors, batch_size=batch, progress=False)
            return folder

        return run

    extra["parity"] = _parity(model, tok, layer, dims.d_model, args.attention)
    write(False)
    for attention in args.attention:
        ran = configure(model, attention)
        for requested in args.batches:
            batch: int | str = requested if requested == "auto" else int(requested)
            cap = MAX_BATCH if batch == "auto" else int(batch)
            trials = cap * args.sweep_batches
            run = sweep_of(trials, batch)
            release_captures()  # the first sweep of a shape captures its decode step
            _sync(device)
            _reset_peak(device)
            t0 = time.perf_counter()
            sweep_of(cap, batch)()  # one batch: the capture and first-call costs, once
            _sync(device)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            folder = run()
            _sync(device)
            seconds = time.perf_counter() - t0
            record = load_runs(folder)[-1]
            size = int(record["batch_size"])
            plan = (record.get("ranks") or [{}])[0].get("memory") or {}
            roof = roofline_seconds(
                shape, hw, wbytes, batch=size, prompt=prompt, shared=shared,
                new_tokens=args.new_tokens,
            )  # fmt: skip
            sweeps.append(
                {
                    "attention": ran,
                    "requested": requested,
                    "batch": size,
                    "trials": trials,
                    "seconds": seconds,
                    "trials_per_s": trials / seconds,
                    "first_batch_seconds": first,
                    "roofline_trials_per_s": size / roof["total"],
                    "of_roofline": trials / seconds / (size / roof["total"]),
                    "roofline": roof,
                    "peak_gib": _peak(device),
                    "planned_gib": (plan.get("gib") or {}).get("total"),
                }
            )
            print(
                f"[scale] {attention} batch {size}: {trials / seconds:.1f} trials/s "
                f"({seconds:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
            write(False)
            if args.profile and requested == str(args.profile):
                one = sweep_of(args.profile, args.profile)
                prof = _profile(one, device, args.new_tokens)
                extra["profiles"][ran] = prof
                write(False)
            if args.host and requested == str(args.host):
                extra["hosts"][ran] = _host(sweep_of(args.host, args.host), device)
                write(False)
    use_attention(model)
    use_norms(model)
    write(True)
    print((out / "scale.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
