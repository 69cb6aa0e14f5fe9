"""Where the modules of mechintro 0.1's flat layout went, and their old names kept working.

``import mechintro.patching`` (say) still works and gives the very module
``mechintro.analysis.patching`` (the same object, so classes and ``isinstance`` agree), with a
``DeprecationWarning`` naming the new path. :func:`install` adds the finder that does this to
``sys.meta_path``; it answers only for the old names below and for nothing else.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Iterable
from types import ModuleType
from typing import Any

#: old module (and every submodule under it) -> its place in the layered layout
MOVED = {
    "mechintro.twin": "mechintro.engine.twin",
    "mechintro.decode": "mechintro.engine.decode",
    "mechintro.patching": "mechintro.analysis.patching",
    "mechintro.patch_forwards": "mechintro.analysis.patch_forwards",
    "mechintro.patch_result": "mechintro.analysis.patch_result",
    "mechintro.dla": "mechintro.analysis.dla",
    "mechintro.parity": "mechintro.analysis.parity",
    "mechintro.directions": "mechintro.analysis.directions",
    "mechintro.transcoders": "mechintro.analysis.transcoders",
    "mechintro.protocols": "mechintro.experiments.protocols",
    "mechintro.sweeps": "mechintro.experiments.sweeps",
    "mechintro.grading": "mechintro.experiments.grading",
    "mechintro.grades": "mechintro.experiments.grades",
    "mechintro.metrics": "mechintro.experiments.metrics",
    "mechintro.distributed": "mechintro.experiments.distributed",
    "mechintro.cli": "mechintro.app.cli",
    "mechintro.options": "mechintro.app.options",
    "mechintro.report": "mechintro.app.report",
    "mechintro.patch_sweep": "mechintro.app.patch_sweep",
    "mechintro.demo": "mechintro.organism.demo",
    "mechintro.training.organism": "mechintro.organism.training",
}


def new_name(name: str) -> str | None:
    """The layered name of an old module name (a submodule of a moved package too)."""
    for old, new in MOVED.items():
        if name == old or name.startswith(old + "."):
            return new + name[len(old) :]
    return None


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: Any) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the target module ran when it was imported


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Iterable[str] | None, target: ModuleType | None = None
    ) -> Any:
        # path is Iterable, not typeshed's Sequence: a namespace package's is a _NamespacePath
        new = new_name(fullname)
        if new is None:
            return None
        warnings.warn(
            f"{fullname} moved to {new} (mechintro's layered layout); the old name goes in 0.2",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (called by ``import mechintro``)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
