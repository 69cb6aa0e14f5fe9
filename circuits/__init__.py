"""circuits: gates, evidence carriers, steering attribution and attribution graphs.

Assembles mechintro's primitives into the circuit analyses of Macar et al. (2026). Names
load on first use, so ``import circuits`` is instant::

    from circuits import AttributionGraph, Node, Edge
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mechintro._lazy import lazy_exports

if TYPE_CHECKING:  # what IDEs and type checkers see: the real names, imported eagerly there
    from circuits.graph import AttributionGraph, Edge, EdgeCheck, Node, pearson_r
    from circuits.viewer import to_viewer_json

_EXPORTS = {
    "AttributionGraph": "circuits.graph",
    "Node": "circuits.graph",
    "Edge": "circuits.graph",
    "EdgeCheck": "circuits.graph",
    "pearson_r": "circuits.graph",
    "to_viewer_json": "circuits.viewer",
}

__all__ = ["AttributionGraph", "Edge", "EdgeCheck", "Node", "pearson_r", "to_viewer_json"]


__getattr__ = lazy_exports(__name__, _EXPORTS)
