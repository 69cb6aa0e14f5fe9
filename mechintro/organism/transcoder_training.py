"""The built-in organism's transcoders: its prompts and activations, and their training run.

``mechintro organism transcoders --out DIR`` trains the transcoders that ship
with the organism (layers 3–5) with :func:`mechintro.analysis.transcoders.train_transcoder`,
on MLP activations of the organism's own prompts, plain and steered.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mechintro.analysis.transcoders.core import ORGANISM_DIR
from mechintro.analysis.transcoders.train import TrainConfig, TrainReport, train_transcoder
from mechintro.organism.configs import ORGANISM_CONFIG

if TYPE_CHECKING:
    from mechintro.analysis.transcoders.sites import MLPActivations

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OrganismData:
    """How the organism's activations are collected (recorded with the transcoders)."""

    n_plain: int = 3000  # phase-1 dialogues (facts, controls, "No" trials), with their replies
    n_steered: int = 3000  # phase-2 dialogues: injected trials (train and pseudo concepts) ...
    strengths: tuple[float, float] = (0.25, 3.0)  # resid-norm units, uniform
    negative: float = 0.2  # the fraction of injections with the vector's sign flipped
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def organism_prompts(data: OrganismData, model: Any) -> list[tuple[Any, str | None, str, float]]:
    """``(prompt, injected concept or None, mode, signed strength)`` per dialogue.

    Phase-1 and phase-2 dialogues of :mod:`mechintro.organism.corpus` (new seeds), each
    prompt followed by its reply as an assistant prefill, except single-token injections,
    whose steered token is the last of the prompt (the reply is left out there).
    """
    from dataclasses import replace

    from mechintro.models import tokenizer_of
    from mechintro.organism import corpus
    from mechintro.organism.train import pseudo_words

    cs = corpus.concepts(0)
    rng = random.Random(data.seed)
    pseudo = pseudo_words(tokenizer_of(model), cs)
    ex = corpus.phase1_examples(cs, data.n_plain, 10_000 + data.seed)
    ex += corpus.phase2_examples(cs, data.n_steered, 20_000 + data.seed, pseudo=pseudo)
    out: list[tuple[Any, str | None, str, float]] = []
    for e in ex:
        s = rng.uniform(*data.strengths) * (-1 if rng.random() < data.negative else 1)
        if e.inject is not None and e.mode == "single-token":
            out.append((e.prompt, e.inject, "single-token", s))
            continue
        prompt = replace(e.prompt, prefill=(e.prompt.prefill + " " + e.reply).strip())
        out.append((prompt, e.inject, "from-trial", s if e.inject else 0.0))
    return out


def _length(prompt: Any) -> int:
    """A prompt's length in characters (a proxy for its token count, to batch alike ones)."""
    return sum(len(m.content) for m in prompt.messages) + len(prompt.prefill or "")


def organism_activations(
    model: Any, layers: Sequence[int], data: OrganismData, batch_size: int = 128
) -> MLPActivations:
    """MLP activations of ``builtin:organism`` on :func:`organism_prompts`, concept vectors
    injected (Lindsey vectors of the base organism, ``resid-norm`` units, from the token
    before ``Trial n`` or at the last prompt token) as in the organism's own training."""
    from mechintro.analysis.transcoders.sites import MLPActivations, mlp_activations
    from mechintro.inject import Injection
    from mechintro.models import builtin_path
    from mechintro.organism import corpus
    from mechintro.organism.train import concept_vectors

    cfg = json.loads((builtin_path("organism") / "training.json").read_text())
    inj_layer = int(cfg["config"]["layer"])
    rows = organism_prompts(data, model)
    words = sorted({w for _, w, _, _ in rows if w})
    cs = corpus.concepts(0)
    vec, resid = concept_vectors(
        builtin_path("organism-base"), words, corpus.split(cs, "baseline"), inj_layer, "cpu"
    )
    groups: dict[str, list[int]] = {"none": [], "from-trial": [], "single-token": []}
    for i, (_, w, mode, _) in enumerate(rows):
        groups["none" if w is None else mode].append(i)
    parts = []
    for mode, idx in groups.items():
        if not idx:
            continue
        idx.sort(key=lambda i: _length(rows[i][0]))  # less padding per batch
        prompts = [rows[i][0] for i in idx]
        inj = None
        if mode != "none":
            V = torch.stack([vec[str(rows[i][1])] for i in idx])
            inj = Injection(
                inj_layer,
                V,
                [rows[i][3] for i in idx],
                mode=mode,
                unit="resid-norm",
                resid_norm=resid,
            )
        parts.append(mlp_activations(model, prompts, layers, injection=inj, batch_size=batch_size))
    return MLPActivations.cat(parts)


@dataclass(frozen=True)
class OrganismTrainReport:
    """What :func:`train_organism` trained and measured; :meth:`to_dict` is ``fvu.json``."""

    model: str
    model_fingerprint: str
    config: TrainConfig
    data: OrganismData
    heldout_data: OrganismData
    torch_version: str
    threads: int  # torch's CPU threads
    seconds_activations: float
    #: each layer's report (held-out FVU, L0, dead fraction, time), by layer
    layers: dict[int, TrainReport]
    seconds_total: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``fvu.json`` (each layer's report without its config and layer)."""
        return {
            "model": self.model,
            "model_fingerprint": self.model_fingerprint,
            "config": self.config.to_dict(),
            "data": self.data.to_dict(),
            "heldout_data": self.heldout_data.to_dict(),
            "torch": self.torch_version,
            "threads": self.threads,
            "seconds_activations": self.seconds_activations,
            "layers": {
                str(layer): {k: v for k, v in rep.to_dict().items() if k not in ("config", "layer")}
                for layer, rep in self.layers.items()
            },
            "seconds_total": self.seconds_total,
        }


ORGANISM_DATA = OrganismData(n_plain=1500, n_steered=1500, seed=0)
ORGANISM_HELDOUT = OrganismData(n_plain=250, n_steered=250, seed=1)


def train_organism(
    out: str | os.PathLike[str] = ORGANISM_DIR,
    *,
    layers: Sequence[int] = (3, 4, 5),
    cfg: TrainConfig = ORGANISM_CONFIG,
    data: OrganismData = ORGANISM_DATA,
    heldout: OrganismData = ORGANISM_HELDOUT,
    threads: int | None = None,
) -> OrganismTrainReport:
    """Train the transcoders of ``builtin:organism`` (blocks ``layers``; the injection layer
    is 3) into ``out/layer_L`` (sae-lens format, fp16 storage) and write ``out/fvu.json``.

    Activations come from :func:`organism_activations` on the HookedTransformer backend
    (the same sites as the bridge, tested, and faster on a CPU); FVUs are measured on
    held-out dialogues of other seeds. ``threads`` sets torch's CPU threads (``None``: as
    is). Seeded: the same call with the same thread count gives bit-identical files.

    Example::

        mechintro organism transcoders --out /tmp/organism-transcoders
    """
    from mechintro.io import atomic_write_text
    from mechintro.models import fingerprint, load_model

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    model = load_model("builtin:organism", backend="hooked")
    layers = sorted(layers)
    train = organism_activations(model, layers, data)
    hold = organism_activations(model, layers, heldout)
    t_data = time.perf_counter() - t0
    logger.info(
        "activations: %d train / %d held-out tokens in %.0f s", len(train), len(hold), t_data
    )
    out = Path(out)
    model_fingerprint, threads_used = fingerprint(model), torch.get_num_threads()
    reports: dict[int, TrainReport] = {}
    for layer in layers:
        info = {
            "model": "builtin:organism",
            "model_fingerprint": model_fingerprint,
            "data": data.to_dict(),
        }
        tc, rep = train_transcoder(
            train.x[layer],
            train.y[layer],
            cfg,
            layer=layer,
            heldout=(hold.x[layer], hold.y[layer]),
            info=info,
        )
        tc.save(out / f"layer_{layer}", dtype=torch.float16)
        reports[layer] = rep
        logger.info(
            "layer %d: held-out FVU %.4f (linear skip alone %.4f), L0 %.1f, %.0f s",
            layer,
            rep.fvu,
            rep.fvu_linear,
            rep.l0,
            rep.seconds,
        )
    report = OrganismTrainReport(
        model="builtin:organism",
        model_fingerprint=model_fingerprint,
        config=cfg,
        data=data,
        heldout_data=heldout,
        torch_version=torch.__version__,
        threads=threads_used,
        seconds_activations=round(t_data, 1),
        layers=reports,
        seconds_total=round(time.perf_counter() - t0, 1),
    )
    atomic_write_text(out / "fvu.json", json.dumps(report.to_dict(), indent=1))
    return report
