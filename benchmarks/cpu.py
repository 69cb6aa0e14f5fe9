"""CPU numbers: ``import mechintro`` time, and (``--demo``) the demo's wall time and peak RSS.

``python -m benchmarks.cpu [--repeats 3] [--demo] [--out DIR]``. Each import is timed in a
fresh interpreter (median of ``--repeats``): the time of the ``import`` statement itself, and
the whole process (interpreter start included). The demo (``mechintro demo --out TMP``, about
a minute) runs as a child process; its peak resident memory comes from ``wait4``'s rusage.
Targets (issue 7): ``import mechintro`` ≤ 3 s, the demo ≤ 120 s.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

IMPORTS = {
    "import mechintro": "import mechintro",
    "first use: from mechintro import load_model, Injection, generate (imports torch)": (
        "from mechintro import load_model, Injection, generate"
    ),
    "CLI start: mechintro --help (whole process)": "import mechintro.app.cli",
}
TARGETS = {"import mechintro": 3.0, "demo": 120.0}


# children run in an empty folder, so mechintro is imported as installed (or from PYTHONPATH),
# never from the current directory
@functools.cache
def _cwd() -> str:
    return tempfile.mkdtemp(prefix="mechintro-cpu-")


def time_import(statement: str) -> tuple[float, float]:
    """(seconds of the statement, seconds of the whole process), in a fresh interpreter."""
    if statement == "import mechintro.app.cli":  # the console script's whole run
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "mechintro.app.cli", "--help"]
        subprocess.run(cmd, capture_output=True, check=True, cwd=_cwd())
        wall = time.perf_counter() - t0
        return wall, wall
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=_cwd()
    )
    wall = time.perf_counter() - t0
    return float(out.stdout.strip().splitlines()[-1]), wall


def _s(x: float) -> str:
    return f"{x:.2f} s" if x >= 1 else f"{x * 1e3:.1f} ms"


def run_demo(folder: Path) -> dict[str, Any]:
    """Wall time, peak RSS and exit status of ``mechintro demo --out folder``."""
    cmd = [sys.executable, "-m", "mechintro.app.cli", "demo", "--out", str(folder)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=_cwd())
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    return {
        "command": "mechintro demo --out TMP",
        "seconds": wall,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "returncode": proc.returncode,
        "stderr_tail": err.decode(errors="replace")[-2000:],
    }


def conditions() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    where = subprocess.run(
        [sys.executable, "-c", "import mechintro; print(mechintro.__file__)"],
        capture_output=True,
        text=True,
        cwd=_cwd(),
    ).stdout.strip()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mechintro": str(Path(where).parent) if where else "not importable",
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
        "python": platform.python_version(),
        "executable": sys.executable,
    }


def markdown(results: dict[str, Any]) -> str:
    lines = ["| measurement | median | runs | target | |", "|---|---|---|---|---|"]
    for name, r in results["imports"].items():
        target = TARGETS.get(name)
        verdict = "" if target is None else ("PASS" if r["median"] <= target else "FAIL")
        runs = ", ".join(_s(t) for t in r["seconds"])
        lines.append(
            f"| {name} | {_s(r['median'])} (process {_s(r['process_median'])}) | {runs} | "
            f"{'' if target is None else f'≤ {target:g} s'} | {verdict} |"
        )
    demo = results.get("demo")
    if demo is not None:
        ok = demo["returncode"] == 0 and demo["seconds"] <= TARGETS["demo"]
        lines.append(
            f"| mechintro demo --out TMP (exit {demo['returncode']}) | {demo['seconds']:.1f} s | "
            f"1 | ≤ {TARGETS['demo']:g} s | {'PASS' if ok else 'FAIL'} |"
        )
        lines.append(f"| demo peak RSS | {demo['peak_rss_bytes'] / 2**30:.2f} GiB | 1 | | |")
    c = results["conditions"]
    load = c["load_average"]
    lines += [
        "",
        f"Conditions: {c['date']}, {c['cpu']}, {c['cores']} cores, load average "
        f"{', '.join(f'{x:.2f}' for x in load) if load else 'n/a'} at the start, "
        f"OMP_NUM_THREADS={c['OMP_NUM_THREADS']}, Python {c['python']}, mechintro from "
        f"{c['mechintro']}.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu", description=__doc__)
    p.add_argument("--repeats", type=int, default=3, help="fresh interpreters per import")
    p.add_argument("--demo", action="store_true", help="also run the demo (about a minute)")
    p.add_argument("--out", default=None, help="folder for cpu.md and cpu.json")
    args = p.parse_args(argv)
    results: dict[str, Any] = {"conditions": conditions(), "imports": {}}
    for name, statement in IMPORTS.items():
        runs = [time_import(statement) for _ in range(args.repeats)]
        results["imports"][name] = {
            "statement": statement,
            "seconds": [r[0] for r in runs],
            "median": statistics.median(r[0] for r in runs),
            "process_median": statistics.median(r[1] for r in runs),
        }
    if args.demo:
        with tempfile.TemporaryDirectory(prefix="mechintro-demo-") as tmp:
            results["demo"] = run_demo(Path(tmp))
    text = markdown(results)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cpu.md").write_text(text + "\n", encoding="utf-8")
        (out / "cpu.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    demo = results.get("demo")
    return 1 if demo is not None and demo["returncode"] != 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
