"""What a patching sweep returns: its sites, values per cell, and a heatmap of them.

:class:`Sites` names the axes (layers, positions, heads) of a sweep's cells;
:class:`PatchResult` adds the metric per cell with the source and target runs' values, and
:func:`heatmap` draws it. Computed by :mod:`mechintro.analysis.patching` (which re-exports all
three).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

Cell = tuple[int, int | None, int | None]  # (layer, position or None = all, head or None)


@dataclass(frozen=True)
class Sites:
    """Where a sweep patches: the component, its hook, and the axes of its cells."""

    component: str
    hook: str  # the hook-name template, e.g. "blocks.{layer}.hook_mlp_out"
    layers: tuple[int, ...]
    positions: tuple[int | None, ...]  # None: all positions at once
    position_labels: tuple[str, ...]
    heads: tuple[int, ...] | None

    @property
    def dims(self) -> tuple[str, ...]:
        return ("layer", "position") + (() if self.heads is None else ("head",))

    def shape(self) -> tuple[int, ...]:
        heads = () if self.heads is None else (len(self.heads),)
        return (len(self.layers), len(self.positions), *heads)

    def cells(self) -> list[Cell]:
        """``(layer, position, head)`` per cell, in ``values.flatten()`` order."""
        heads: Sequence[int | None] = self.heads if self.heads is not None else (None,)
        return [(ly, p, h) for ly in self.layers for p in self.positions for h in heads]

    def labels(self) -> list[str]:
        """One label per cell, in ``values.flatten()`` order."""
        plabel = dict(zip(self.positions, self.position_labels))
        return [f"L{ly}{'' if h is None else f'H{h}'} {plabel[p]}" for ly, p, h in self.cells()]

    def hook_names(self) -> list[str]:
        return [self.hook.format(layer=layer) for layer in self.layers]


@dataclass(frozen=True, eq=False)
class PatchResult(Sites):
    """A patching sweep: one metric value per cell, with its axis labels (:class:`Sites`).

    ``values`` has dims ``("layer", "position")`` or ``("layer", "position", "head")``;
    each entry is the metric of the patched target run, averaged over the prompt rows
    (``rows`` keeps them: ``[*dims, batch]``). For attribution patching it is the linear
    estimate ``target + (source − target)·grad``.
    """

    values: Tensor
    rows: Tensor
    method: str  # "activation" or "attribution"
    source_value: Tensor  # [batch] metric of the source run
    target_value: Tensor  # [batch] metric of the unpatched target run
    source_injection: str | None
    target_injection: str | None
    backend: str

    @property
    def effect(self) -> Tensor:
        """Patched minus unpatched target metric (mean over rows), per cell."""
        return self.values - self.target_value.mean()

    @property
    def recovered(self) -> Tensor:
        """Fraction of the source − target gap that the cell moves: 0 = nothing, 1 = all."""
        return self.effect / (self.source_value.mean() - self.target_value.mean())

    def top(self, k: int = 10, by: str = "abs") -> list[tuple[str, float]]:
        """The ``k`` cells with the largest effect: ``by`` = "abs", "positive" or "negative"."""
        flat = self.effect.flatten()
        key = {"abs": flat.abs(), "positive": flat, "negative": -flat}.get(by)
        if key is None:
            raise ValueError(f"by must be 'abs', 'positive' or 'negative', got {by!r}")
        idx = key.argsort(descending=True)[:k].tolist()
        labels = self.labels()
        return [(labels[i], float(flat[i])) for i in idx]

    def to_frame(self) -> pd.DataFrame:
        """A tidy pandas DataFrame: one row per cell, in ``values.flatten()`` order."""
        import pandas as pd

        frame = pd.DataFrame(self.cells(), columns=["layer", "position", "head"])
        frame["label"] = self.labels()
        frame["value"] = self.values.flatten().tolist()
        frame["effect"] = self.effect.flatten().tolist()
        frame["component"], frame["method"] = self.component, self.method
        return frame


def heatmap(result: PatchResult, value: str = "effect", title: str | None = None) -> go.Figure:
    """A plotly heatmap of ``result`` (``value`` = "effect", "values" or "recovered").

    Layers × positions; for heads, (layer, head) rows × positions.
    """
    import plotly.graph_objects as go

    if value not in ("effect", "values", "recovered"):
        raise ValueError(f"value must be 'effect', 'values' or 'recovered', got {value!r}")
    z = getattr(result, value).float()
    if result.heads is None:
        rows = [f"L{layer}" for layer in result.layers]
    else:
        z = z.permute(0, 2, 1).reshape(-1, z.shape[1])
        rows = [f"L{layer}H{h}" for layer in result.layers for h in result.heads]
    fig = go.Figure(
        go.Heatmap(z=z.tolist(), x=list(result.position_labels), y=rows, colorscale="RdBu", zmid=0)
    )
    fig.update_layout(
        title=title or f"{result.method} patching of {result.component} ({value})",
        xaxis_title="position",
        yaxis={"title": "site", "autorange": "reversed"},
        template="plotly_white",
    )
    return fig
