"""Host overhead of a sweep on the CPU: the share of ``run_sweep``'s time outside the model.

``python -m benchmarks.sweep_host [--trials 512] [--batch 64] [--new-tokens 32] [--profile N]``
runs a detection sweep of the built-in organism (4M parameters; the detection prompt is
126 tokens, most of them shared, as Gemma-3-1B's) and splits its wall time into the model's
forwards (the HF twin's top-level module, timed by forward hooks: prefills, decode steps and
readouts) and everything else: planning, encoding, injection setup, sampling, stop checks,
decoding replies, records, writing the store. On a GPU the forwards become graph replays and
"everything else" is what the GPU waits for (issue 20). ``--profile N`` also prints the N
functions of mechintro, the tokenizer and the standard library with the most cumulative time
(cProfile; its own overhead inflates Python-heavy parts). Run it at two commits and compare
the "outside" lines for a before/after ratio; ``--before FILE`` does it for you, given the
``--json`` of an earlier run.

Conditions matter: run with ``OMP_NUM_THREADS=1`` on an idle machine.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

N_WORDS = 4


def words() -> tuple[str, ...]:
    """The organism's first :data:`N_WORDS` training concepts (words its tokenizer knows)."""
    from mechintro.models import builtin_path
    from mechintro.organism import corpus

    training = json.loads((builtin_path("organism") / "training.json").read_text("utf-8"))
    return tuple(corpus.split(corpus.concepts(training["config"]["seed"]), "train")[:N_WORDS])


def spec_for(trials: int, new_tokens: int) -> Any:
    """A detection spec of ``trials`` trials (4 concepts x 4 strengths x 8 trial numbers x
    samples), sampled at temperature 1, at one layer."""
    from mechintro.experiments.sweeps import SweepSpec

    per_sample = N_WORDS * 4 * 8
    if trials % per_sample:
        raise ValueError(f"--trials must be a multiple of {per_sample}")
    return SweepSpec(
        concepts=words(),
        layers=(2,),
        strengths=(1.0, 2.0, 4.0, 8.0),
        trial_numbers=tuple(range(1, 9)),
        n_samples=trials // per_sample,
        temperature=1.0,
        max_new_tokens=new_tokens,
        seed=0,
    )


def measure(trials: int, batch: int, new_tokens: int, profile: int = 0) -> dict[str, Any]:
    """One sweep's wall time, the time in the model's forwards, and what is left."""
    import torch

    from mechintro.engine.twin import fast_twin
    from mechintro.experiments.sweeps import run_sweep
    from mechintro.models import load_model
    from mechintro.vectors import extract_vectors

    torch.manual_seed(0)
    model = load_model("builtin:organism")
    spec = spec_for(trials, new_tokens)
    vectors = {2: extract_vectors(model, list(words()), layer=2)}
    twin = fast_twin(model)
    assert twin is not None, "the organism should run on its HF twin"
    spent = {"forward": 0.0, "calls": 0}
    started: list[float] = []

    def before(*_: Any) -> None:
        started.append(time.perf_counter())

    def after(*_: Any) -> None:
        spent["forward"] += time.perf_counter() - started.pop()
        spent["calls"] += 1

    handles = [twin.register_forward_pre_hook(before), twin.register_forward_hook(after)]
    prof = cProfile.Profile() if profile else None
    try:
        with tempfile.TemporaryDirectory(prefix="mechintro-sweep-host-") as tmp:
            # a warm-up sweep of one batch (lazy imports, first-call caches)
            warm = spec_for(N_WORDS * 4 * 8, 2)
            run_sweep(model, warm, Path(tmp) / "warm", vectors=vectors, batch_size=batch,
                      progress=False)  # fmt: skip
            spent.update(forward=0.0, calls=0)
            if prof is not None:
                prof.enable()
            t0 = time.perf_counter()
            run_sweep(model, spec, Path(tmp) / "run", vectors=vectors, batch_size=batch,
                      progress=False)  # fmt: skip
            wall = time.perf_counter() - t0
            if prof is not None:
                prof.disable()
    finally:
        for h in handles:
            h.remove()
    outside = wall - spent["forward"]
    out: dict[str, Any] = {
        "trials": trials,
        "batch": batch,
        "new_tokens": new_tokens,
        "seconds": wall,
        "forward_seconds": spent["forward"],
        "forward_calls": spent["calls"],
        "outside_seconds": outside,
        "outside_share": outside / wall,
        "trials_per_second": trials / wall,
        "outside_ms_per_trial": 1e3 * outside / trials,
    }
    if prof is not None:
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text).sort_stats("cumulative")
        stats.print_stats(r"mechintro|tokeniz|json|hashlib|datetime|generation", profile)
        out["profile"] = text.getvalue()
    return out


def report(r: dict[str, Any], before: dict[str, Any] | None = None) -> str:
    lines = [
        f"{r['trials']} trials, batch {r['batch']}, {r['new_tokens']} new tokens",
        f"wall            {r['seconds']:.2f} s ({r['trials_per_second']:.1f} trials/s)",
        f"model forwards  {r['forward_seconds']:.2f} s ({r['forward_calls']} calls)",
        f"outside         {r['outside_seconds']:.2f} s ({100 * r['outside_share']:.1f}% of wall, "
        f"{r['outside_ms_per_trial']:.2f} ms per trial)",
    ]
    if before is not None:
        lines.append(
            f"vs before       outside {before['outside_seconds']:.2f} s -> "
            f"{r['outside_seconds']:.2f} s (x{before['outside_seconds'] / r['outside_seconds']:.2f}"
            f" less), trials/s {before['trials_per_second']:.1f} -> {r['trials_per_second']:.1f}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep_host", description=__doc__)
    p.add_argument("--trials", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--profile", type=int, default=0, metavar="N", help="print N top functions")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    p.add_argument("--before", default=None, help="an earlier run's --json, to compare with")
    args = p.parse_args(argv)
    r = measure(args.trials, args.batch, args.new_tokens, args.profile)
    before = json.loads(Path(args.before).read_text("utf-8")) if args.before else None
    print(report(r, before))
    if "profile" in r:
        print(r.pop("profile"))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
