"""What every kind of ``mechintro run`` shares: reading its parameter table into a config
dataclass (unknown keys and refused values as a UsageError naming the valid keys), the
concept vectors it injects, and its results as plain JSON values and flat table rows."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from mechintro.app.options import UsageError
from mechintro.io import json_ready

if TYPE_CHECKING:
    from mechintro.models import TLModel
    from mechintro.vectors import ConceptVector

#: keys that belong at the top of a config, not in an experiment's table
RUN_KEYS: tuple[str, ...] = ("model", "revision", "out", "backend", "dtype", "device", "batch_size")


def own_table(cfg: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A copy of an experiment's table, refusing the run's own keys in it."""
    misplaced = sorted(set(cfg) & set(RUN_KEYS))
    if misplaced:
        raise UsageError(f"[{where}]: {misplaced} are set at the top of the config (or --out)")
    return dict(cfg)


def build(cls: Any, cfg: Mapping[str, Any], where: str) -> Any:
    """``cls(**cfg)`` with unknown keys and refused values as a UsageError naming the valid
    keys."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(cfg) - set(names))
    if unknown:
        raise UsageError(f"[{where}]: unknown keys {unknown}: valid keys are {names}")
    try:
        return cls(**tuples(cfg))
    except (TypeError, ValueError) as e:
        raise UsageError(f"[{where}]: {e}") from None


def tuples(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with its lists as tuples (the config dataclasses' field types)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


def concept_vectors(
    model: TLModel, words: Sequence[str], layer: int, method: str, baseline: Sequence[str]
) -> dict[str, ConceptVector]:
    """The concept vectors of ``words`` at block ``layer`` (cached by content)."""
    from mechintro.vectors import extract_vectors

    return extract_vectors(model, list(words), layer=layer, method=method, baseline=list(baseline))


def flat_row(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as one row: ``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists as JSON."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_row(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(json_ready(v))
        else:
            out[key] = v
    return out
