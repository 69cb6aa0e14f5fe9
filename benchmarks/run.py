"""Run the GPU benchmarks: ``python -m benchmarks.run --shapes gemma3-1b,llama-7b --out DIR``.

Prints one markdown table (absolute numbers, ratios to mechintro's reference rows, targets)
and writes ``DIR/results.md`` and ``DIR/results.json`` (every row, its raw times, the device,
the command, the versions and the date). ``--device cpu --shapes tiny`` runs the same code
on the CPU in seconds (the smoke test does).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from benchmarks.shapes import SHAPES
    from benchmarks.suites import BACKENDS, GROUPS

    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="mechintro throughput against per-trial TransformerLens, hand-written HF "
        "and transformer_lens.patching, on random-weight models of realistic shapes.",
    )
    p.add_argument(
        "--shapes", default="gemma3-1b,llama-7b", help=f"comma-separated, of: {', '.join(SHAPES)}"
    )
    p.add_argument("--out", default="bench_out", help="folder for results.md and results.json")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default=None,
        help="default bf16 on a GPU, fp32 on the CPU",
    )
    p.add_argument("--batch", type=int, default=64, help="trials per batch")
    p.add_argument("--new-tokens", type=int, default=32, help="tokens generated per trial")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing")
    p.add_argument(
        "--per-trial",
        type=int,
        default=3,
        help="trials timed one by one for the per-trial baselines",
    )
    p.add_argument("--sweep-batches", type=int, default=2, help="batches per run_sweep call")
    p.add_argument("--patch-tokens", type=int, default=32, help="patched prompt length")
    p.add_argument("--patch-batch", type=int, default=64, help="rows per patching forward")
    p.add_argument(
        "--tl-cells",
        type=int,
        default=16,
        help="cells timed for transformer_lens.patching (reported per cell)",
    )
    p.add_argument("--concepts", type=int, default=500, help="concepts of the vectors group")
    p.add_argument(
        "--per-concept", type=int, default=5, help="concepts timed one by one with run_with_cache"
    )
    p.add_argument("--tc-width", type=int, default=16384, help="transcoder features")
    p.add_argument(
        "--tc-l0", type=int, default=64, help="active transcoder features per token (calibrated)"
    )
    p.add_argument(
        "--bandwidth",
        type=float,
        default=None,
        help="HBM bytes/s for the roofline (default: H200 4.8e12, H100 SXM 3.35e12)",
    )
    p.add_argument(
        "--peak-flops",
        type=float,
        default=None,
        help="dense bf16 FLOP/s for the roofline's prefill (default 989e12)",
    )
    p.add_argument("--attn", default="sdpa", help="HF attention implementation (sdpa, eager)")
    p.add_argument(
        "--norms",
        default="eager",
        choices=("eager", "compiled"),
        help="the bridge twin's RMSNorms (mechintro.generation.use_norms; compiled on CUDA)",
    )
    p.add_argument("--groups", default=",".join(GROUPS), help=f"of: {', '.join(GROUPS)}")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"of: {', '.join(BACKENDS)}")
    args = p.parse_args(argv)
    for key, allowed in (("shapes", SHAPES), ("groups", GROUPS), ("backends", BACKENDS)):
        values = [v for v in getattr(args, key).split(",") if v]
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            p.error(f"--{key}: unknown {bad}; use {', '.join(allowed)}")
        setattr(args, key, tuple(values))
    return args


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "tokenizers", "transformer-lens", "mechintro"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        here = Path(__file__).resolve().parent
        out["git"] = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=here,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        out["git"] = "unknown"
    return out


def header(meta: dict[str, Any]) -> str:
    hw, st = meta["hardware"], meta["settings"]
    lines = [
        f"# mechintro benchmarks: {', '.join(meta['shapes'])}",
        "",
        f"- date: {meta['date']}",
        f"- device: {hw['name']} ({meta['device']}, {meta['dtype']}); roofline at "
        f"{hw['bandwidth'] / 1e12:.2f} TB/s and {hw['peak_flops'] / 1e12:.0f} TFLOP/s",
        f"- command: `{meta['command']}`",
        f"- versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}",
        f"- settings: batch {st['batch']}, {st['new_tokens']} new tokens (greedy, no early "
        f"stop), {st['repeats']} repeats after {st['warmup']} warm-up, patching "
        f"{st['patch_tokens']} positions × {st['patch_batch']} rows/forward, "
        f"{st['concepts']} concepts, attention {st['attn']}, the twin's norms {st['norms']}",
        f"- wall time: {meta['wall_seconds']:.0f} s"
        + ("" if meta["complete"] else " (**partial**: the run has not finished, or was stopped)"),
        "",
        "ratio = time per unit of the row ÷ time per unit of the group's **reference** row "
        "(mechintro on the bridge; plain HF in the forward group): how many times faster the "
        "reference is. A target is a lower bound on the ratio.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parse(argv)
    import torch

    from benchmarks.shapes import SHAPES, hardware
    from benchmarks.suites import Settings, run_shape
    from benchmarks.table import Row, add_ratios, markdown, ordered, to_json

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: use --device cpu", file=sys.stderr)
        return 2
    dtype_name = args.dtype or ("bf16" if device.startswith("cuda") else "fp32")
    s = Settings(
        device=device,
        dtype=getattr(torch, DTYPES[dtype_name]),
        batch=args.batch,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        warmup=args.warmup,
        per_trial=args.per_trial,
        sweep_batches=args.sweep_batches,
        patch_tokens=args.patch_tokens,
        patch_batch=args.patch_batch,
        tl_cells=args.tl_cells,
        concepts=args.concepts,
        per_concept=args.per_concept,
        tc_width=args.tc_width,
        tc_l0=args.tc_l0,
        attn=args.attn,
        norms=args.norms,
        groups=args.groups,
        backends=args.backends,
        hardware=hardware(device, args.bandwidth, args.peak_flops),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    done: list[Row] = []
    shapes_meta: dict[str, Any] = {}
    settings = {k: v for k, v in vars(args).items() if k not in ("out",)}
    command = "python -m benchmarks.run " + shlex.join(sys.argv[1:] if argv is None else argv)

    def write(final: bool) -> tuple[list[Row], dict[str, Any], str]:
        rows = ordered(list(done))
        add_ratios(rows)
        meta = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command,
            "device": device,
            "dtype": dtype_name,
            "hardware": s.hardware.to_dict(),
            "versions": versions_,
            "settings": settings,
            "shapes": list(args.shapes),
            "per_shape": shapes_meta,
            "wall_seconds": time.perf_counter() - t0,
            "complete": final,
        }
        table = markdown(rows)
        (out / "results.md").write_text(header(meta) + "\n" + table + "\n", encoding="utf-8")
        (out / "results.json").write_text(to_json(rows, meta) + "\n", encoding="utf-8")
        return rows, meta, table

    def on_row(r: Row) -> None:  # keep the files current: a stopped run leaves its rows
        done.append(r)
        write(final=False)

    versions_ = versions()
    s.on_row = on_row
    with tempfile.TemporaryDirectory(prefix="mechintro-bench-") as work:
        for name in args.shapes:
            _, shapes_meta[name] = run_shape(SHAPES[name], s, Path(work))
    rows, meta, table = write(final=True)
    print(table)
    verdicts = [r.passed for r in rows]
    errors = [f"{r.shape} / {r.name} [{r.backend}]" for r in rows if r.status == "error"]
    print(
        f"\n{verdicts.count(True)} targets passed, {verdicts.count(False)} failed, "
        f"{len(errors)} rows errored{': ' + '; '.join(errors) if errors else ''}; "
        f"{meta['wall_seconds']:.0f} s. Wrote {out / 'results.md'} and {out / 'results.json'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
