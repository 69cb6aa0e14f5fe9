"""The 2-GPU benchmark: data-parallel sweeps, and one model split over both GPUs.

    python -m benchmarks.multigpu --out bench_multigpu                # 2 GPUs (H200 x2)
    python -m benchmarks.multigpu --device cpu --shape tiny-gemma3 --out DIR   # CPU smoke

Every run builds the same random-weight model (a Gemma-3-27B shape in bf16 by default: 54 GB,
built from one seed directly on a GPU, so every process holds the same weights) and runs the
same detection sweep (``--concepts`` concepts × ``--trial-numbers`` trial numbers, one layer
at 60% depth, plus ``--controls`` uninjected trials; greedy, ``--new-tokens`` tokens) with the
concept vectors extracted once, in the first run, and read from the cache by the others:

1. ``one``: one process on the first device, ``run_sweep`` → ``DIR/one``;
2. ``two``: ``--gpus`` ranks through torchrun, one per device → ``DIR/two``;
3. ``split``: one process with the model split over the devices by accelerate (a balanced
   device map); the parity self-check, then the sweep → ``DIR/split``.

Verdicts: throughput of ``two`` over ``one`` ≥ ``--target`` (1.8×); ``two`` and ``split``
equal ``one`` trial for trial (the same batches on the same kind of device give the same
tokens); every parity check run on the split model, on each path its generation takes, ≤
``--atol`` (backend vs HF is not run on a model split over GPUs). Each run also records its
memory plan (``runs.jsonl``) beside the peak memory measured per device. Writes
``DIR/multigpu.md`` and ``DIR/multigpu.json``; each run is its own command (``--runs
one,two``), so a run stopped at a time limit keeps what finished.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.shapes import SHAPES

RUNS = ("one", "two", "split")
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.multigpu", description=__doc__)
    p.add_argument("--out", default="bench_multigpu", help="results folder")
    p.add_argument("--shape", default="gemma3-27b", choices=sorted(SHAPES))
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="bf16 on GPUs")
    p.add_argument("--gpus", type=int, default=2, help="ranks of run two; devices of split")
    p.add_argument("--concepts", type=int, default=16)
    p.add_argument("--trial-numbers", type=int, default=15, help="trial numbers 1..N")
    p.add_argument("--controls", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--batch", default="32", help="trials per batch, or auto (memory plan)")
    p.add_argument("--target", type=float, default=1.8, help="throughput ratio two / one")
    p.add_argument("--atol", type=float, default=0.1, help="parity tolerance (logits)")
    p.add_argument("--runs", default=",".join(RUNS), help=f"of: {', '.join(RUNS)}")
    p.add_argument("--worker", choices=RUNS, help=argparse.SUPPRESS)  # one run, internally
    args = p.parse_args(argv)
    args.runs = tuple(r for r in args.runs.split(",") if r)
    if not args.runs or set(args.runs) - set(RUNS):
        p.error(f"--runs: use some of {', '.join(RUNS)}")
    if args.batch != "auto" and not args.batch.isdigit():
        p.error("--batch: a positive int or auto")
    return args


def _child_argv(args: argparse.Namespace, run: str) -> list[str]:
    out = ["--out", args.out, "--shape", args.shape, "--gpus", str(args.gpus)]
    for key in ("concepts", "trial_numbers", "controls", "new_tokens", "batch", "atol"):
        out += ["--" + key.replace("_", "-"), str(getattr(args, key))]
    out += ["--device", args.device, "--dtype", args.dtype, "--worker", run]
    return out


# --- one run (a worker process, or a torchrun rank) ----------------------------------------


def _spec(args: argparse.Namespace, model: Any) -> Any:
    from benchmarks.shapes import concept_words
    from mechintro.experiments.sweeps import SweepSpec
    from mechintro.models import layer_at_depth

    return SweepSpec(
        concepts=tuple(concept_words(args.concepts)),
        layers=(layer_at_depth(model, 0.6),),
        strengths=(4.0,),
        trial_numbers=tuple(range(1, args.trial_numbers + 1)),
        n_controls=args.controls,
        max_new_tokens=args.new_tokens,
        temperature=0.0,
        readout=False,
    )


def _build(args: argparse.Namespace, device: str, rank: int) -> tuple[Any, Any]:
    """The random HF model of the shape, on ``device``, and its tokenizer."""
    import torch

    from benchmarks.shapes import build_model, build_tokenizer

    shape = SHAPES[args.shape]
    work = Path(args.out) / "work"
    tok = build_tokenizer(work / f"tokenizer-{rank}", shape.arch, shape.vocab, args.concepts)
    dtype = getattr(torch, DTYPES[args.dtype])
    return build_model(shape, tok, device=device, dtype=dtype, attn="eager", seed=0), tok


def _split(hf: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Dispatch ``hf`` over ``--gpus`` GPUs with a balanced map (on the CPU: every block on
    the CPU, accelerate's hooks attached all the same); the map."""
    import torch
    from accelerate import dispatch_model
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    if args.device == "cpu":
        device_map: dict[str, Any] = dict.fromkeys(_blocks(hf), "cpu")
        dispatch_model(hf, device_map=device_map, force_hooks=True)
        return device_map
    classes = list(getattr(hf, "_no_split_modules", None) or [])
    cap = {i: torch.cuda.get_device_properties(i).total_memory for i in range(args.gpus)}
    dtype = getattr(torch, DTYPES[args.dtype])
    balanced = get_balanced_memory(hf, max_memory=cap, no_split_module_classes=classes, dtype=dtype)
    device_map = infer_auto_device_map(
        hf, max_memory=balanced, no_split_module_classes=classes, dtype=dtype
    )
    tied = hf.get_output_embeddings().weight is hf.get_input_embeddings().weight
    if tied and "lm_head" in device_map and "model.embed_tokens" in device_map:
        device_map["lm_head"] = device_map["model.embed_tokens"]  # one tensor, one device
    if len(set(device_map.values())) < 2:
        raise RuntimeError(f"the balanced map uses one device: {device_map}")
    dispatch_model(hf, device_map=device_map)
    return device_map


def _blocks(hf: Any) -> list[str]:
    """Module names of ``hf`` down to single decoder layers (model.layers.0, ..., lm_head)."""
    import torch

    names = []
    for name, child in hf.model.named_children():
        if isinstance(child, torch.nn.ModuleList):
            names += [f"model.{name}.{i}" for i in range(len(child))]
        else:
            names.append(f"model.{name}")
    return names + [n for n, _ in hf.named_children() if n != "model"]


def worker(args: argparse.Namespace) -> int:
    """One run: build the model, get the vectors, time run_sweep, write DIR/RUN/timing.json."""
    import torch

    from mechintro.analysis.parity import parity_check
    from mechintro.experiments.distributed import init_from_env, rank_device, shutdown
    from mechintro.experiments.sweeps import load_runs, run_sweep
    from mechintro.memory import model_devices
    from mechintro.models import fingerprint, load_model
    from mechintro.vectors import extract_vectors, word_list

    run = args.worker
    ranks = init_from_env()
    device = rank_device(args.device, ranks)
    if device.startswith("cuda") and ":" not in device:
        device = "cuda:0"
    hf, tok = _build(args, device, ranks.rank)
    dtype = getattr(torch, DTYPES[args.dtype])
    name = f"random-{args.shape}"
    if run == "split":  # placed by accelerate: load_model leaves it where it is
        device_map = _split(hf, args)
        model = load_model(hf, tokenizer=tok, name=name, dtype=dtype)
    else:
        device_map = None
        model = load_model(hf, tokenizer=tok, name=name, dtype=dtype, device=device)
    spec = _spec(args, model)
    fingerprints = ranks.all_gather(fingerprint(model))
    parity = None
    if run == "split":
        prompt = "Trial 1: Do you detect an injected thought?"
        parity = parity_check(model, prompt, layer=spec.layers[0]).to_dict()

    def vectors() -> Any:
        layer = spec.layers[0]
        words = list(spec.concepts)
        base = word_list("lindsey_baseline")[:20]
        cache = Path(args.out) / "vectors"
        return {layer: extract_vectors(model, words, layer=layer, baseline=base, cache_dir=cache)}

    vecs = vectors() if ranks.is_main else None  # rank 0 fills the cache, the others read it
    ranks.barrier()
    vecs = vecs or vectors()
    devices = [str(d) for d in model_devices(model)]
    cuda = [torch.device(d) for d in devices if d.startswith("cuda")]
    for d in cuda:
        torch.cuda.synchronize(d)
        torch.cuda.reset_peak_memory_stats(d)
    out = Path(args.out) / run
    batch: int | str = "auto" if args.batch == "auto" else int(args.batch)
    ranks.barrier()
    t0 = time.perf_counter()
    run_sweep(model, spec, out, vectors=vecs, batch_size=batch, progress=ranks.is_main)
    for d in cuda:
        torch.cuda.synchronize(d)
    ranks.barrier()
    seconds = time.perf_counter() - t0
    peaks = ranks.all_gather(
        {
            d: torch.cuda.max_memory_allocated(torch.device(d))
            for d in devices
            if d.startswith("cuda")
        }
    )
    if ranks.is_main:
        record = {
            "run": run,
            "world_size": ranks.world_size,
            "devices": devices,
            "device_map_layers": _layers_per_device(device_map),
            "trials": len(spec),
            "seconds": seconds,
            "fingerprints": fingerprints,
            "parity": parity,
            "peak_bytes": peaks,
            "memory_plan": load_runs(out)[-1]["ranks"],
            "gpu": torch.cuda.get_device_name(0) if cuda else "cpu",
        }
        (out / "timing.json").write_text(json.dumps(record, indent=2) + "\n")
    shutdown()
    return 0


def _layers_per_device(device_map: dict[str, Any] | None) -> dict[str, int] | None:
    if device_map is None:
        return None
    out: dict[str, int] = {}
    for name, dev in device_map.items():
        if ".layers." in f".{name}.":
            out[str(dev)] = out.get(str(dev), 0) + 1
    return out


# --- the driver ----------------------------------------------------------------------------


def _launch(args: argparse.Namespace, run: str) -> int:
    argv = _child_argv(args, run)
    env = dict(os.environ)
    if run == "two":
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.gpus)))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={args.gpus}",
            "-m",
            "benchmarks.multigpu",
            *argv,
        ]
    else:
        cmd = [sys.executable, "-m", "benchmarks.multigpu", *argv]
    print(f"[multigpu] {run}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.run(cmd, env=env, check=False).returncode


def _same_trials(a: Path, b: Path) -> dict[str, Any]:
    from mechintro.experiments.sweeps.store import read_trials

    x = {r["trial_id"]: r["tokens"] for r in read_trials(a)}
    y = {r["trial_id"]: r["tokens"] for r in read_trials(b)}
    same = sum(1 for k in x if y.get(k) == x[k])
    return {"trials": len(x), "in_both": len(x.keys() & y.keys()), "equal_tokens": same}


def summarize(args: argparse.Namespace, codes: dict[str, int], wall: float) -> dict[str, Any]:
    root = Path(args.out)
    timings = {}
    for run in RUNS:
        path = root / run / "timing.json"
        if path.exists():
            timings[run] = json.loads(path.read_text())
    verdicts: dict[str, Any] = {}
    if "one" in timings and "two" in timings:
        one, two = timings["one"], timings["two"]
        ratio = one["seconds"] / two["seconds"]
        verdicts["throughput two / one"] = {
            "value": ratio,
            "target": f">= {args.target}",
            "pass": ratio >= args.target,
        }
        same = _same_trials(root / "one", root / "two")
        verdicts["two == one, trial for trial"] = {**same, "pass": _all_equal(same)}
        weights = len(set(two["fingerprints"]))
        verdicts["two: every rank has the same weights"] = {
            "distinct": weights,
            "pass": weights == 1,
        }
    if "split" in timings:
        from mechintro.analysis.parity import ParityReport

        report = ParityReport.from_dict(timings["split"]["parity"])
        # split over GPUs, the bridge has no independent HF copy (parity.independent_hf):
        # backend vs HF is then not run, as the verdict shows; "split == one" checks it
        verdicts["split: parity self-check"] = {
            **report.values(),
            "paths": list(report.paths),
            "not_run": report.not_run,
            "atol": args.atol,
            "pass": report.ok(args.atol, allow_missing=["backend_vs_hf"]),
        }
        if "one" in timings:
            same = _same_trials(root / "one", root / "split")
            verdicts["split == one, trial for trial"] = {**same, "pass": _all_equal(same)}
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.multigpu " + " ".join(sys.argv[1:]),
        "shape": SHAPES[args.shape].to_dict(),
        "settings": {k: v for k, v in vars(args).items() if k != "worker"},
        "exit_codes": codes,
        "runs": timings,
        "verdicts": verdicts,
        "wall_seconds": wall,
    }


def _all_equal(same: dict[str, int]) -> bool:
    return same["trials"] > 0 and same["trials"] == same["in_both"] == same["equal_tokens"]


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# mechintro multi-GPU benchmark: {summary['shape']['name']}",
        "",
        f"- date: {summary['date']}; wall time {summary['wall_seconds']:.0f} s",
        f"- command: `{summary['command']}`; exit codes {summary['exit_codes']}",
        "",
        "| run | ranks | devices | layers per device | trials | seconds | trials/s | peak GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run, t in summary["runs"].items():
        peaks = [round(b / 2**30, 1) for rank in t["peak_bytes"] for b in rank.values()]
        lines.append(
            f"| {run} | {t['world_size']} | {', '.join(t['devices'])} | "
            f"{t['device_map_layers'] or '-'} | {t['trials']} | {t['seconds']:.1f} | "
            f"{t['trials'] / t['seconds']:.2f} | {peaks or '-'} |"
        )
    lines += ["", "| check | result | verdict |", "|---|---|---|"]
    for name, v in summary["verdicts"].items():
        shown = {
            k: (round(x, 4) if isinstance(x, float) else x) for k, x in v.items() if k != "pass"
        }
        lines.append(f"| {name} | {shown} | {'PASS' if v['pass'] else 'FAIL'} |")
    plans = {run: t["memory_plan"][0]["memory"] for run, t in summary["runs"].items()}
    lines += ["", "Memory plan (GiB per device, rank 0) against the measured peak:", ""]
    for run, plan in plans.items():
        if plan:
            lines.append(f"- {run}: batch {plan['batch_size']}, planned {plan['gib']}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    if args.worker:
        return worker(args)
    several = {"two", "split"} & set(args.runs)
    if several and args.device.startswith("cuda") and torch.cuda.device_count() < args.gpus:
        print(
            f"{torch.cuda.device_count()} GPUs; runs {sorted(several)} need --gpus "
            f"{args.gpus} (--runs one needs one)",
            file=sys.stderr,
        )
        return 2
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    codes = {}
    for run in args.runs:
        codes[run] = _launch(args, run)
        summary = summarize(args, codes, time.perf_counter() - t0)
        (root / "multigpu.json").write_text(json.dumps(summary, indent=2) + "\n")
        (root / "multigpu.md").write_text(markdown(summary))
    print((root / "multigpu.md").read_text())
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
