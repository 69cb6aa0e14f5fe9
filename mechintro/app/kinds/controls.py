"""The control kinds of ``mechintro run``: ``noise`` (Godet's noise controls,
docs/protocols.md §5), ``patch`` (``mechintro patch``'s sweep) and ``intentional-control``
(Lindsey's "think about" / "don't think about", docs/protocols.md §6)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechintro.app.kinds.common import build, own_table, tuples
from mechintro.app.options import UsageError
from mechintro.io import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

    from mechintro.models import TLModel

NOISE_FILE = "noise.csv"  # where the noise controls are written (mechintro report reads it)


def noise_config(cfg: Mapping[str, Any], *, small: bool = False) -> Any:
    """A NoiseConfig from a noise table (``model`` and ``out`` are the run's)."""
    from mechintro.app.options import NoiseConfig

    data = own_table(cfg, "noise")
    if small:
        data["strengths"] = [0.0, max(data.get("strengths", [10.0]))]
        data["n_random"] = 1
        if not data.get("controls"):
            data["battery"] = 1
        for k in ("layers", "depths"):
            if data.get(k):
                data[k] = list(data[k])[:1]
    try:
        return NoiseConfig(model="-", out="-", **tuples(data))
    except (TypeError, ValueError) as e:
        raise UsageError(f"[noise]: {e}") from None


def run_noise_kind(
    model: TLModel, cfg: Mapping[str, Any], out: Path, *, small: bool, batch_size: int = 64
) -> pd.DataFrame:
    """``experiment = "noise"``: Godet's noise controls (docs/protocols.md §5)."""
    return run_noise(model, noise_config(cfg, small=small), out, batch_size=batch_size)


def run_noise(model: TLModel, c: Any, out: Path, *, batch_size: int) -> pd.DataFrame:
    """Godet's noise controls as a NoiseConfig ``c`` says, into ``out/noise.csv``; returns the
    specificity table (the command line's ``mechintro noise`` and ``experiment = "noise"``)."""
    from mechintro.experiments.protocols.noise import (
        CONTROL_BATTERY,
        INTROSPECTION,
        NoiseControls,
        godet_vectors,
    )
    from mechintro.models import layer_at_depth
    from mechintro.vectors import extract_vectors

    layers = sorted({*c.layers, *(layer_at_depth(model, d, rule="floor") for d in c.depths)})
    vectors: Any
    if c.concepts:
        vectors = {
            L: extract_vectors(
                model, c.concepts, layer=L, baseline=c.baseline or None, cache_dir=out / "vectors"
            )
            for L in layers
        }
    else:
        vectors = godet_vectors(model, layers)
    battery = {q.id: q for q in CONTROL_BATTERY}  # the ids were checked with the options
    chosen = [battery[q] for q in c.controls] or CONTROL_BATTERY[: c.battery]
    controls = NoiseControls(
        layers=tuple(layers),
        strengths=c.strengths,
        questions=(INTROSPECTION, *chosen),
        n_random=c.n_random,
        seed=c.seed,
        yes=c.yes,
        no=c.no,
    )
    df = controls.run(model, vectors, batch_size=batch_size)
    atomic_write_text(out / NOISE_FILE, df.to_csv(index=False))
    return controls.specificity(df)


def patch_config(cfg: Mapping[str, Any], out: Path, *, small: bool = False, **run: Any) -> Any:
    """A PatchConfig from a patch table (``model``, ``out`` and the model keys are the run's)."""
    from mechintro.app.patch_sweep import PatchConfig

    data = own_table(cfg, "patch")
    if small:
        data["components"] = list(data.get("components", ("resid_post",)))[:1]
        data["positions"] = ["all"]
    try:
        return PatchConfig(out=str(out), **run, **tuples(data))
    except (TypeError, ValueError) as e:
        raise UsageError(f"[patch]: {e}") from None


def run_patch_kind(
    model: TLModel, cfg: Mapping[str, Any], out: Path, *, small: bool, batch_size: int = 64
) -> pd.DataFrame:
    """``experiment = "patch"``: a layer × position × component patching sweep (resumable)."""
    import pandas as pd

    from mechintro.app.patch_sweep import run_patch_sweep
    from mechintro.models import model_info

    info = model_info(model)
    c = patch_config(
        cfg, out, small=small, model=info.name, revision=info.revision or "", batch_size=batch_size
    )
    frames = run_patch_sweep(c, model)
    return pd.concat([f.assign(component=k) for k, f in frames.items()], ignore_index=True)


@dataclass(frozen=True)
class ControlParams:
    """Lindsey's intentional control (docs/protocols.md §6): "think about" / "don't think
    about" a word while writing a sentence; the projection on the word's vector."""

    words: tuple[str, ...] = ("aquariums",)  # the words to think (or not) about
    layers: tuple[int, ...] = ()  # blocks to read (default: depth 2/3)
    baseline: tuple[str, ...] = ()  # the vectors' baseline words (default: the method's)
    measure: str = "generated"  # generated (the model's own sentence) or prefilled
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        from mechintro.experiments.protocols.control import MEASURES

        if self.measure not in MEASURES:
            raise ValueError(f"measure must be one of {MEASURES}, got {self.measure!r}")
        if not self.words:
            raise ValueError("words is empty")


def run_control_kind(
    model: TLModel, cfg: Mapping[str, Any], out: Path, *, small: bool, batch_size: int = 32
) -> pd.DataFrame:
    """``experiment = "intentional-control"``: projections per condition, layer and word."""
    from mechintro.experiments.protocols.control import (
        SENTENCES,
        control_summary,
        intentional_control,
    )
    from mechintro.models import layer_at_depth
    from mechintro.vectors import extract_vectors

    p = build(ControlParams, cfg, "intentional-control")
    layers = list(p.layers) or [layer_at_depth(model, 2 / 3)]
    sentences = SENTENCES[:1] if small else SENTENCES
    base = list(p.baseline) or None
    vectors = {L: extract_vectors(model, list(p.words), layer=L, baseline=base) for L in layers}
    df = intentional_control(
        model,
        vectors,
        sentences=sentences,
        measure=p.measure,  # checked by ControlParams
        max_new_tokens=p.max_new_tokens,
        batch_size=batch_size,
    )
    atomic_write_text(out / "control_trials.csv", df.to_csv(index=False))
    return control_summary(df)
