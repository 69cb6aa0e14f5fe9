"""Run records: everything needed to trace a reply back to what produced it and re-run it."""

from __future__ import annotations

import functools
import platform
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any

from mechintro.inject import InjectionLog, PositionMode
from mechintro.models import TLModel, model_info

if TYPE_CHECKING:
    from mechintro.prompts import PromptBatch

_PACKAGES = ("mechintro", "torch", "transformers", "transformer-lens", "sae-lens")


def library_versions() -> dict[str, str]:
    """Versions of the libraries whose behaviour a result depends on (a fresh dict)."""
    return dict(_versions())


@functools.cache
def _versions() -> dict[str, str]:
    # read once per process: the package metadata lookups cost ~7 ms, and every generation
    # records them (a process's imported libraries do not change under it)
    out = {"python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


@dataclass
class RunRecord:
    """The exact inputs of one generation: token ids, steered positions, settings, versions."""

    model: dict[str, Any]
    prompt_ids: list[list[int]]
    generated_ids: list[list[int]]
    seeds: list[int]
    settings: dict[str, Any]
    injections: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=library_versions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_record(
    model: TLModel,
    batch: PromptBatch,
    *,
    injection_log: InjectionLog | None,
    seeds: list[int],
    settings: dict[str, Any],
    generated: list[list[int]],
) -> RunRecord:
    """Record of one generation over ``batch`` (padding removed from the prompt ids)."""
    ids = batch.input_ids.tolist()
    first = batch.n_pad.tolist()
    injections = []
    if injection_log is not None:
        for i, inj in enumerate(injection_log.injections):
            injections.append(
                {
                    "repr": repr(inj),
                    "layer": inj.layer,
                    "mode": PositionMode.parse(inj.mode).value,
                    "unit": inj.unit,
                    "strength": _plain(inj.strength),
                    # relative to each row's first real token, like prompt_ids
                    "steered_positions": [
                        [p - f for p in row]
                        for row, f in zip(injection_log.steered_positions(i), first)
                    ],
                }
            )
    return RunRecord(
        model=model_info(model).to_dict(),
        prompt_ids=[row[f:] for row, f in zip(ids, first)],
        generated_ids=generated,
        seeds=seeds,
        settings=settings,
        injections=injections,
    )


def _plain(x: Any) -> Any:
    """A JSON-able copy of a number, sequence or tensor."""
    tolist = getattr(x, "tolist", None)
    if tolist is not None:
        return tolist()
    if isinstance(x, (list, tuple)):
        return [float(v) for v in x]
    return float(x)
