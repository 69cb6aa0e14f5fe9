"""Run one protocol on each checkpoint of a model family and tabulate the comparison.

Macar et al. (2026, docs/protocols.md §7) run the detection protocol on OLMo's base, SFT, DPO and
instruct checkpoints: base models give FPR ≈ TPR, and DPO is the first stage with ~0% FPR.
:func:`compare_checkpoints` loads each checkpoint in turn (a Hub name, a Hub name at a
revision, a local folder, a ``builtin:`` model), calls ``run(model)`` and stacks what it
returns (one row of numbers, or a table) under the checkpoint's label; each model is freed
before the next is loaded, so a family of large checkpoints fits one GPU.

Example::

    stages = [Checkpoint("base", "allenai/Olmo-3-1025-7B"),
              Checkpoint("sft", "allenai/Olmo-3-7B-Instruct-SFT"),
              Checkpoint("dpo", "allenai/Olmo-3-7B-Instruct-DPO")]
    table = compare_checkpoints(stages, run=lambda m: my_detection_rates(m), dtype=torch.bfloat16)
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint: a ``label`` for the table, what to load, and an optional revision."""

    label: str
    source: str | os.PathLike[str]
    revision: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.label, str) or not self.label:
            raise ValueError(f"a checkpoint needs a non-empty label, got {self.label!r}")
        if not str(self.source):
            raise ValueError(f"checkpoint {self.label!r} has an empty source")


CheckpointSpec = Checkpoint | str | os.PathLike[str] | tuple[str, Any] | tuple[str, Any, Any]


def revisions(name: str, revs: Sequence[str] | Mapping[str, str]) -> list[Checkpoint]:
    """Checkpoints of one Hub repository at several revisions (``{label: revision}`` or a list,
    labelled by the revision): the training checkpoints of a family like OLMo."""
    items = revs.items() if isinstance(revs, Mapping) else ((r, r) for r in revs)
    return [Checkpoint(label, name, rev) for label, rev in items]


def _parse(spec: CheckpointSpec) -> Checkpoint:
    if isinstance(spec, Checkpoint):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        label = Path(spec).name if isinstance(spec, os.PathLike) else str(spec)
        return Checkpoint(label, spec)
    if isinstance(spec, tuple) and len(spec) in (2, 3):
        return Checkpoint(*spec)
    raise TypeError(
        f"a checkpoint is a Checkpoint, a name or folder, or (label, source[, revision]); "
        f"got {spec!r}"
    )


def compare_checkpoints(
    checkpoints: Sequence[CheckpointSpec] | Mapping[str, str | os.PathLike[str]],
    run: Callable[[Any], Mapping[str, Any] | pd.DataFrame],
    *,
    load: Callable[..., Any] | None = None,
    done: Callable[[Checkpoint], pd.DataFrame | None] | None = None,
    **load_kwargs: Any,
) -> pd.DataFrame:
    """``run(model)`` on every checkpoint, one after the other; one table.

    Args:
        checkpoints: :class:`Checkpoint` values, names or folders (labelled by themselves),
            ``(label, source[, revision])`` tuples, or a mapping ``label → source``.
        run: the protocol; returns a mapping of values (one row) or a DataFrame (its rows).
        load: the loader (default :func:`mechintro.models.load_model`), called as
            ``load(source, revision=..., **load_kwargs)`` (revision only when set).
        done: a finished checkpoint's table, or None: a checkpoint with a table is not
            loaded again (how ``mechintro run``'s ``stages`` resumes).

    Returns a DataFrame with ``checkpoint``, ``source`` and ``revision`` first, then what
    ``run`` returned, in checkpoint order. An error in any run propagates (nothing is
    silently skipped).
    """
    import pandas as pd

    if isinstance(checkpoints, Mapping):
        specs = [Checkpoint(label, src) for label, src in checkpoints.items()]
    else:
        if isinstance(checkpoints, (str, os.PathLike)):
            raise TypeError("checkpoints must be a list: pass [name]")
        specs = [_parse(c) for c in checkpoints]
    if not specs:
        raise ValueError("no checkpoints given")
    labels = [c.label for c in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"duplicate checkpoint labels {dupes}: give each a distinct label")
    if not callable(run):
        raise TypeError("run must be a callable taking the loaded model")
    if load is None:
        from mechintro.models import load_model

        load = load_model
    frames = []
    for i, ck in enumerate(specs):
        out = done(ck) if done is not None else None
        if out is not None:
            logger.info("[%d/%d] %s: finished before, not reloaded", i + 1, len(specs), ck.label)
        else:
            out = _run_one(ck, run, load, load_kwargs, f"[{i + 1}/{len(specs)}]")
        if isinstance(out, pd.DataFrame):
            frame = out.reset_index(drop=True).copy()
        elif isinstance(out, Mapping):
            frame = pd.DataFrame([dict(out)])
        else:
            raise TypeError(
                f"run returned {type(out).__name__} for {ck.label!r}: return a mapping of "
                "values (one row) or a DataFrame"
            )
        clash = [c for c in ("checkpoint", "source", "revision") if c in frame.columns]
        if clash:
            raise ValueError(f"run's output has reserved columns {clash}: rename them")
        frame.insert(0, "revision", ck.revision)
        frame.insert(0, "source", str(ck.source))
        frame.insert(0, "checkpoint", ck.label)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _run_one(
    ck: Checkpoint,
    run: Callable[[Any], Any],
    load: Callable[..., Any],
    load_kwargs: Mapping[str, Any],
    where: str,
) -> Any:
    """``run`` on checkpoint ``ck``, loaded and freed afterwards."""
    logger.info("%s %s: loading %s", where, ck.label, ck.source)
    kwargs = dict(load_kwargs)
    if ck.revision is not None:
        kwargs["revision"] = ck.revision
    model = load(ck.source, **kwargs)
    try:
        return run(model)
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
