"""Package attributes loaded on first use: a package lists ``name -> submodule`` and its
``__getattr__`` imports the submodule only when the name is first read, so importing the
package (or building the command line) loads nothing heavy."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A ``__getattr__`` for ``package`` that imports each name of ``exports`` from its
    submodule on first use and binds it in the package, so later reads are plain lookups (and
    a function that shares its module's name, bound over the submodule, stays the function).

    Example::

        _EXPORTS = {"run_sweep": "mechintro.experiments.sweeps.runner"}
        __getattr__ = lazy_exports(__name__, _EXPORTS)
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            value = getattr(importlib.import_module(exports[name]), name)
            vars(sys.modules[package])[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
