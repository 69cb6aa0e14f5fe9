"""Scripted patching sweeps: ``mechintro patch``, resumable, one file per component.

A steered run (a concept vector injected into a protocol's prompt) and the same prompt
unsteered; each component of :data:`~mechintro.analysis.patching.COMPONENTS` is patched over layers
× positions in the chosen direction (knock-out: unsteered values into the steered run;
knock-in: steered values into the unsteered run), with the Yes/No logit gap as the metric.
Each component's table is written to ``OUT/patch_{component}.csv`` as soon as it is done, and
``OUT/patch.json`` binds the folder to its settings: rerunning the same command skips the
components already written, and another configuration is refused rather than mixed in.
``OUT/patch.html`` holds one heatmap per component.

Example::

    cfg = PatchConfig(model="builtin:organism", out="runs/patch", concept="horse",
                      baseline=("table", "chair", "door"), layer=3, strength=1.0,
                      unit="resid-norm", positions=("all",))
    frames = run_patch_sweep(cfg)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mechintro.app.options import REVISION_HELP, arg, opt
from mechintro.io import atomic_write_text

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

SETTINGS_FILE = "patch.json"


@dataclass(frozen=True)
class PatchConfig:
    """A layer × position × component patching sweep of a steered vs an unsteered run."""

    model: str = arg("model folder, .gguf file, Hub name, or builtin:NAME")
    out: str = arg("results folder (patch.json, patch_COMPONENT.csv, patch.html)")
    concept: str = arg("the concept whose Lindsey vector is injected")
    layer: int = arg("injection layer (block index)")
    strength: float = opt(4.0, "injection strength, in --unit")
    unit: str = opt("raw", "raw (adds s·v) or resid-norm (adds s·resid_norm·v/‖v‖)")
    baseline: tuple[str, ...] = opt(
        (),
        "baseline words of the vector (default: a model organism's own object words, "
        "else the method's list)",
    )
    protocol: str = opt("detection", "prompt protocol (mechintro.experiments.protocols names)")
    trial: int = opt(1, "the n of 'Trial n'")
    direction: str = opt("knock-out", "knock-out or knock-in")
    components: tuple[str, ...] = opt(("resid_post", "attn_out", "mlp_out"), "sites to patch")
    layers: tuple[int, ...] = opt((), "patched layers (default: every layer after --layer)")
    positions: tuple[str, ...] = opt(("each",), "each, all, or indices / named positions")
    method: str = opt("activation", "activation (exact) or attribution (fast screen)")
    revision: str = opt("", REVISION_HELP)
    backend: str = opt("bridge", "TransformerLens model class")
    dtype: str = opt("float32", "weights and activations dtype")
    device: str = opt("cpu", "torch device, e.g. cuda")
    batch_size: int = opt(64, "patched rows per forward")

    def __post_init__(self) -> None:
        from mechintro.analysis.patching import COMPONENTS
        from mechintro.inject import UNITS

        if self.direction not in ("knock-out", "knock-in"):
            raise ValueError(f"direction must be knock-out or knock-in, got {self.direction!r}")
        if self.method not in ("activation", "attribution"):
            raise ValueError(f"method must be activation or attribution, got {self.method!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        bad = [c for c in self.components if c not in COMPONENTS]
        if bad or not self.components:
            raise ValueError(f"unknown components {bad}: use some of {sorted(COMPONENTS)}")
        if not self.positions:
            raise ValueError("--positions needs a value: each, all, or positions")
        if self.batch_size < 1:
            raise ValueError("--batch-size must be at least 1")

    def key(self) -> dict[str, Any]:
        """What the results depend on (not where they go, nor the batch size)."""
        data = dataclasses.asdict(self)
        for k in ("out", "batch_size", "device"):
            data.pop(k)
        if not data["revision"]:  # folders bound before the field existed still resume
            data.pop("revision")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


def _positions(values: tuple[str, ...]) -> Any:
    if values in (("each",), ("all",)):
        return values[0]
    return [int(v) if v.lstrip("-").isdigit() else v for v in values]


def run_patch_sweep(cfg: PatchConfig, model: Any = None) -> dict[str, pd.DataFrame]:
    """Run (or resume) the sweep of ``cfg``; ``{component: DataFrame}``. ``model``: an
    already-loaded model to use instead of loading ``cfg.model``."""
    import pandas as pd
    import torch

    from mechintro.analysis.patching import heatmap, knock_in, knock_out
    from mechintro.experiments.protocols import PROTOCOLS
    from mechintro.models import check_layer, load_model, n_layers, tokenizer_of
    from mechintro.plotting import Section, html_report
    from mechintro.progress import progress_bar
    from mechintro.prompts import encode
    from mechintro.vectors import extract_vectors

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    bound = out / SETTINGS_FILE
    if bound.is_file() and json.loads(bound.read_text("utf-8")) != cfg.key():
        raise ValueError(
            f"{out} holds a patching sweep with other settings ({bound}): use a new --out, "
            "or the same settings to resume"
        )
    atomic_write_text(bound, json.dumps(cfg.key(), indent=2))
    if model is None:
        model = load_model(
            cfg.model,
            revision=cfg.revision or None,
            backend=cfg.backend,  # type: ignore[arg-type]
            dtype=getattr(torch, cfg.dtype),
            device=cfg.device,
        )
    check_layer(model, cfg.layer)
    if cfg.protocol not in PROTOCOLS:
        raise ValueError(
            f"unknown protocol {cfg.protocol!r}: see mechintro.experiments.protocols.names()"
        )
    layers = list(cfg.layers) or list(range(cfg.layer + 1, n_layers(model)))
    vec = extract_vectors(
        model,
        [cfg.concept],
        layer=cfg.layer,
        baseline=list(cfg.baseline) or None,
        cache_dir=out / "vectors",
    )[cfg.concept]
    protocol = PROTOCOLS[cfg.protocol]
    tok = tokenizer_of(model)
    batch = encode(tok, [protocol.prompt(cfg.trial, concept=cfg.concept, tokenizer=tok)])
    inj = protocol.injection(
        cfg.layer, vec.vector, cfg.strength, unit=cfg.unit, resid_norm=vec.resid_norm
    )
    run = knock_out if cfg.direction == "knock-out" else knock_in
    frames: dict[str, pd.DataFrame] = {}
    figures = []
    for component in progress_bar(cfg.components, desc="patch", unit="component"):
        path = out / f"patch_{component}.csv"
        if path.is_file():
            logger.info("%s done: %s", component, path)
            frames[component] = pd.read_csv(path)
            continue
        res = run(
            model,
            batch,
            inj,
            component=component,
            layers=layers,
            positions=_positions(cfg.positions),
            method=cfg.method,
            batch_size=cfg.batch_size,
        )
        frame = res.to_frame()
        frame["recovered"] = res.recovered.flatten().tolist()
        atomic_write_text(path, frame.to_csv(index=False))
        frames[component] = frame
        figures.append(heatmap(res, title=f"{cfg.direction} of {component}: effect on b"))
    title = f"{cfg.direction} patching: {cfg.concept} at block {cfg.layer}, s = {cfg.strength:g}"
    tables = [f.sort_values("effect", key=abs, ascending=False).head(20) for f in frames.values()]
    html_report(
        title, [Section("Heatmaps", figures), Section("Top cells", tables)], path=out / "patch.html"
    )
    return frames
