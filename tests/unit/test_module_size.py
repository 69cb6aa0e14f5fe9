"""The house style's small modules (docs/architecture.md §6, point 1): no module of the package, the
circuits or the benchmarks runs past 600 lines. A module that grows past it is split into
modules of one idea each (a package whose ``__init__`` re-exports the public names keeps its
users' imports working), not trimmed by squeezing lines."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("mechintro", "circuits", "benchmarks")
MAX_LINES = 600


def modules() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def test_the_folders_hold_modules():
    found = {p.relative_to(ROOT).parts[0] for p in modules()}
    assert found == set(FOLDERS)


def test_no_module_is_longer_than_600_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in modules()
        if (n := len(p.read_text("utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines, split them: {long}"
