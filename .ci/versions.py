"""Compare the installed packages with constraints.txt.

``--check``: every locked package is installed at exactly its locked version (exit 1 if not),
so the locked pass of CI provably ran on the lock. ``--diff``: print what the newest pass
runs instead (the libraries mechintro's numbers depend on first); always exits 0.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

KEY = ("torch", "transformers", "transformer-lens", "sae-lens", "tokenizers", "numpy")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[_norm(name)] = version.strip()
    return out


def installed(name: str) -> str | None:
    try:
        return metadata.version(name).split("+")[0]  # torch's local "+cpu" label
    except metadata.PackageNotFoundError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("constraints", type=Path)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true")
    mode.add_argument("--diff", action="store_true")
    args = parser.parse_args()
    lock = locked(args.constraints)
    differ = {n: (v, installed(n)) for n, v in lock.items() if installed(n) != v}
    for name in KEY:
        print(f"{name:18} locked {lock.get(name, '-'):12} installed {installed(name)}")
    if args.check and differ:
        for n, (want, have) in sorted(differ.items()):
            print(f"not the locked version: {n} {have} (locked {want})", file=sys.stderr)
        return 1
    if args.diff:
        print(f"{len(differ)} of {len(lock)} packages differ from the lock:")
        for n, (want, have) in sorted(differ.items()):
            print(f"  {n}: {want} -> {have}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
