"""The circuit of the real-LM organism ``builtin:smollm2-introspective``: its transcoders, and
the organism's circuit analyses run on it.

SmolLM2-135M-Instruct reports a concept injected at block 20's output (the last prompt token)
after its LoRA adapter (attention of blocks 21–29) was trained to (docs/organism.md §8). The
adapter leaves every MLP as it was, so a transcoder of block L's MLP reads what the trained
attention wrote. This module

1. trains transcoders of blocks 21–29 with mechintro's trainer
   (:func:`~mechintro.analysis.transcoders.train.train_transcoder`) on the trained model's MLP
   activations over :func:`smollm2_prompts` (the training concepts' prompts and the adapter's
   five detection questions, unsteered and with a training concept injected), and measures
   their FVU on fresh activations of the held-out concepts (:func:`train_smollm2_transcoders`;
   the shipped ones: :func:`smollm2_transcoders`);
2. runs :func:`mechintro.organism.circuit.organism_circuits` on the trained model with them,
   single-token injection as the adapter was trained (:func:`smollm2_circuits`): gates and
   their ablation and patching, the 1+1=3 control, evidence carriers, the steering graph with
   its edges checked by intervention, and its export for ``mechintro viewer``.

One command does both (the shipped transcoders are loaded unless ``--retrain``)::

    python -m mechintro.organism.smollm2_circuit --out runs/smollm2-circuit --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mechintro.analysis.transcoders.configs import TrainConfig
from mechintro.io import atomic_write_text, json_ready
from mechintro.organism.smollm2 import SHIPPED, SmolWorld, smollm2_config

if TYPE_CHECKING:
    from mechintro.analysis.transcoders.core import Transcoder
    from mechintro.analysis.transcoders.sites import MLPActivations
    from mechintro.models import TLModel
    from mechintro.prompts import Prompt

logger = logging.getLogger(__name__)

#: the blocks after the injection (block 20's output): those whose MLP can see it
LAYERS = tuple(range(21, 30))
#: where the shipped transcoders live (``layer_L`` folders in sae-lens's layout, and fvu.json)
TRANSCODERS = SHIPPED / "transcoders"
#: the training concepts whose dialogues the shipped transcoders were trained on
TC_WORDS = "fonseca_train"
#: small enough to ship nine layers in fp16 (about 0.6 MB each): 256 features, no skip
SMOLLM2_TRANSCODER_CONFIG = TrainConfig(
    d_sae=256, k=32, steps=1000, batch_size=512, skip=False, dead_steps=100
)
#: the concept prompts' templates (plain chat, one turn)
CONCEPT_TEMPLATES = ("Tell me about {w}", "Write one sentence about {w}.", "What is {w}?")


@dataclass(frozen=True)
class SmolData:
    """Which dialogues give the activations (recorded in ``fvu.json``).

    Every concept prompt of ``words`` and of the word lists ``pool`` under
    :data:`CONCEPT_TEMPLATES`, every detection
    question of the preset × ``trials``, unsteered; then ``n_single`` questions with a concept
    injected at the last prompt token (only that position is kept: the rest is the unsteered
    run) and ``n_from_trial`` injected from the "Trial n" token on (positions from there on
    kept), each with a random concept, question, trial and strength (uniform in
    ``strengths``, sign flipped with probability ``negative``)."""

    trials: tuple[int, ...] = tuple(range(1, 11))
    pool: tuple[str, ...] = ("lindsey_baseline",)  # word lists, uninjected
    n_single: int = 200
    n_from_trial: int = 120
    strengths: tuple[float, float] = (0.25, 2.5)  # × the mean residual norm at block 20
    negative: float = 0.2
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the training dialogues (the training concepts)
TRAIN_DATA = SmolData()
#: fresh dialogues for the FVU: the held-out concepts injected (other seed), other words
#: (``macar_heldout``) in the concept prompts; the questions and trial numbers are those the
#: circuit reads, so their unsteered tokens are the training set's
HELDOUT_DATA = SmolData(pool=("macar_heldout",), n_single=80, n_from_trial=40, seed=1)


@dataclass(frozen=True)
class Dialogue:
    """One prompt of the data: the injected concept (``None``: unsteered), the injection mode,
    its signed strength, and which positions are kept: ``new`` (unsteered: those whose token
    prefix no earlier dialogue had, so a shared system prompt or preamble counts once),
    ``last`` (the last prompt token), ``from-trial`` (from the "Trial n" token on)."""

    prompt: Prompt
    concept: str | None
    mode: str
    strength: float
    keep: str


def smollm2_prompts(
    words: Sequence[str], data: SmolData, exclude: Sequence[str] = ()
) -> list[Dialogue]:
    """The dialogues of :class:`SmolData` over the concepts ``words`` (seeded); words of
    ``exclude`` are left out of the pool."""
    from mechintro.prompts import Prompt
    from mechintro.training.lora import question_prompt
    from mechintro.vectors import word_list

    cfg = smollm2_config()
    rng = random.Random(data.seed)
    skip = {*exclude, *words}
    pool = list(dict.fromkeys(w for name in data.pool for w in word_list(name) if w not in skip))
    out = [
        Dialogue(Prompt.chat(t.format(w=w)), None, "none", 0.0, "new")
        for w in [*words, *pool]
        for t in CONCEPT_TEMPLATES
    ]
    out += [
        Dialogue(question_prompt(q, cfg, n), None, "none", 0.0, "new")
        for q in cfg.questions
        for n in data.trials
    ]
    for mode, count, keep in (
        ("single-token", data.n_single, "last"),
        ("from-trial", data.n_from_trial, "from-trial"),
    ):
        for _ in range(count):
            q, n, w = rng.choice(cfg.questions), rng.choice(data.trials), rng.choice(words)
            s = rng.uniform(*data.strengths) * (-1 if rng.random() < data.negative else 1)
            out.append(Dialogue(question_prompt(q, cfg, n), w, mode, s, keep))
    return out


def smollm2_activations(
    model: TLModel,
    world: SmolWorld,
    words: Sequence[str],
    data: SmolData,
    layers: Sequence[int] = LAYERS,
    exclude: Sequence[str] = (),
    batch_size: int = 32,
) -> MLPActivations:
    """MLP inputs and outputs of blocks ``layers`` over :func:`smollm2_prompts` of ``words``
    and ``exclude`` (``world``'s unit vectors, injected at ``world.layer`` in resid-norm
    units), the kept positions only (:class:`Dialogue`)."""
    from mechintro.analysis.transcoders.sites import MLPActivations, mlp_activations
    from mechintro.inject import Injection
    from mechintro.models import tokenizer_of
    from mechintro.prompts import encode

    rows = smollm2_prompts(words, data, exclude)
    tok = tokenizer_of(model)
    parts = []
    for mode in ("none", "single-token", "from-trial"):
        group = [d for d in rows if d.mode == mode]
        if not group:
            continue
        prompts = [d.prompt for d in group]
        inj = None
        if mode != "none":
            V = torch.stack([world.vectors[str(d.concept)] for d in group])
            s = [d.strength for d in group]
            inj = Injection(
                world.layer, V, s, mode=mode, unit="resid-norm", resid_norm=world.resid_norm
            )
        acts = mlp_activations(model, prompts, layers, injection=inj, batch_size=batch_size)
        enc = encode(tok, prompts)
        n_real = enc.attention_mask.sum(-1)
        trial = torch.tensor(
            [
                int(enc.positions["trial"][i] - enc.n_pad[i]) if d.keep == "from-trial" else 0
                for i, d in enumerate(group)
            ]
        )
        last = torch.tensor([d.keep == "last" for d in group])
        p, pos = acts.prompt, acts.position
        keep = (pos >= trial[p]) & (~last[p] | (pos == n_real[p] - 1))
        if mode == "none":
            keep &= _new_prefixes(enc)[p, pos]
        parts.append(
            MLPActivations(
                x={L: acts.x[L][keep] for L in acts.x},
                y={L: acts.y[L][keep] for L in acts.y},
                prompt=acts.prompt[keep],
                position=pos[keep],
                token=acts.token[keep],
            )
        )
    return MLPActivations.cat(parts)


def _new_prefixes(batch: Any) -> torch.Tensor:
    """``[batch, pos]``: True where a row's token prefix (its real tokens up to and including
    that position, counted from its first real token) occurs for the first time in the
    batch."""
    seen: set[int] = set()
    out = torch.zeros(batch.input_ids.shape, dtype=torch.bool)
    for i, (ids, pad) in enumerate(zip(batch.input_ids.tolist(), batch.n_pad.tolist())):
        h = 0
        for t, tok in enumerate(ids[pad:]):
            h = hash((h, tok))
            if h not in seen:
                seen.add(h)
                out[i, t] = True
    return out


def train_layers(
    train: MLPActivations,
    heldout: MLPActivations,
    out: str | Path,
    cfg: TrainConfig = SMOLLM2_TRANSCODER_CONFIG,
    info: dict[str, Any] | None = None,
) -> dict[int, dict[str, Any]]:
    """Train one transcoder per layer of ``train`` into ``out/layer_L`` (fp16) and return each
    layer's report (FVU, L0, dead fraction, the MLP's own linear fit's FVU, seconds) measured
    on ``heldout`` (fresh activations)."""
    from mechintro.analysis.transcoders.train import train_transcoder

    torch.manual_seed(cfg.seed)
    reports: dict[int, dict[str, Any]] = {}
    for L in sorted(train.x):
        tc, rep = train_transcoder(
            train.x[L], train.y[L], cfg, layer=L, heldout=(heldout.x[L], heldout.y[L]), info=info
        )
        tc.save(Path(out) / f"layer_{L}", dtype=torch.float16)
        reports[L] = {k: v for k, v in rep.to_dict().items() if k not in ("config", "layer")}
        logger.info("layer %d: held-out FVU %.4f, L0 %.1f, %.0f s", L, rep.fvu, rep.l0, rep.seconds)
    return reports


def train_smollm2_transcoders(
    out: str | Path = TRANSCODERS,
    *,
    model: TLModel | None = None,
    world: SmolWorld | None = None,
    layers: Sequence[int] = LAYERS,
    cfg: TrainConfig = SMOLLM2_TRANSCODER_CONFIG,
    data: SmolData = TRAIN_DATA,
    heldout: SmolData = HELDOUT_DATA,
) -> dict[str, Any]:
    """Train the transcoders of ``builtin:smollm2-introspective`` (blocks ``layers``) on the
    training concepts' dialogues (``data``) and measure them on the held-out concepts'
    (``heldout``); writes ``out/layer_L`` and ``out/fvu.json`` and returns its content.
    Seeded: the same call with the same thread count gives the same files."""
    from mechintro.models import fingerprint
    from mechintro.organism.smollm2 import smollm2_introspective, smollm2_world

    t0 = time.perf_counter()
    model = model if model is not None else smollm2_introspective()
    # the shipped transcoders' data: Fonseca's 40 training concepts (fvu.json records it)
    world = world if world is not None else smollm2_world(model, smollm2_config().layer, TC_WORDS)
    from mechintro.vectors import word_list

    # neither split's pool holds a word of the other split, or of the other's pool
    held_words = [*world.heldout, *(w for n in heldout.pool for w in word_list(n))]
    acts = smollm2_activations(model, world, world.train, data, layers, held_words)
    hold = smollm2_activations(model, world, world.heldout, heldout, layers, world.train)
    t_data = time.perf_counter() - t0
    logger.info(
        "activations: %d train / %d held-out tokens in %.0f s", len(acts), len(hold), t_data
    )
    fp = fingerprint(model)
    info = {"model": "builtin:smollm2-introspective", "model_fingerprint": fp}
    reports = train_layers(acts, hold, out, cfg, info)
    result = {
        "model": "builtin:smollm2-introspective",
        "model_fingerprint": fp,
        "adapter_sha256": _adapter_digest(),
        "config": cfg.to_dict(),
        "data": {**data.to_dict(), "concepts": "train (fonseca_train)", "n_tokens": len(acts)},
        "heldout_data": {
            **heldout.to_dict(),
            "concepts": "held out (fonseca_heldout)",
            "n_tokens": len(hold),
        },
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "seconds_activations": round(t_data, 1),
        "layers": {str(L): r for L, r in reports.items()},
        "seconds_total": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(Path(out) / "fvu.json", json.dumps(result, indent=1))
    return result


def _adapter_digest() -> str:
    import hashlib

    return hashlib.sha256((SHIPPED / "adapter.safetensors").read_bytes()).hexdigest()[:16]


def smollm2_transcoders(
    folder: str | Path = TRANSCODERS, layers: Sequence[int] | None = None
) -> dict[int, Transcoder]:
    """The transcoders of ``builtin:smollm2-introspective`` (default: the shipped ones), by
    layer, in fp32."""
    from mechintro.analysis.transcoders.core import transcoders_in

    how = "train them with python -m mechintro.organism.smollm2_circuit --out DIR --retrain"
    return transcoders_in(folder, layers, how)


def smollm2_circuits(
    out: str | Path | None = None,
    *,
    model: TLModel | None = None,
    world: SmolWorld | None = None,
    transcoders: str | Path | dict[int, Transcoder] = TRANSCODERS,
    strength: float = 1.0,
    n_concepts: int | None = None,
    n_graphs: int = 3,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`~mechintro.organism.circuit.organism_circuits` on
    ``builtin:smollm2-introspective`` (loaded unless ``model`` is given; ``world``: its
    concepts and vectors, :func:`~mechintro.organism.smollm2.smollm2_world`): the first
    ``n_concepts`` held-out concepts (default all 20), single-token injection at block 20
    at ``strength`` × the mean residual norm, the transcoders of ``transcoders`` (a folder or
    ``{layer: Transcoder}``). Returns ``(metrics, frames)`` as organism_circuits does, the
    metrics with ``model``, ``mode``, the transcoders' held-out FVU and ``headline`` added
    (of the first graph's change of the Yes − No logit gap ``delta``: ``graph_share``, the
    part its features' attributions sum to, and ``feature_share``, that of every feature);
    with ``out``, the steering graph and its viewer export are written there
    (``out/viewer``)."""
    from mechintro.organism.circuit import organism_circuits
    from mechintro.organism.smollm2 import smollm2_introspective, smollm2_world

    t0 = time.perf_counter()
    cfg = smollm2_config()
    model = model if model is not None else smollm2_introspective()
    world = world if world is not None else smollm2_world(model, cfg.layer)
    if n_concepts is not None:
        world = replace(world, heldout=world.heldout[:n_concepts])
    fvu: dict[str, Any] | None = None
    if not isinstance(transcoders, dict):
        fvu_file = Path(transcoders) / "fvu.json"
        if fvu_file.is_file():
            fvu = json.loads(fvu_file.read_text("utf-8"))
        transcoders = smollm2_transcoders(transcoders)
    metrics, frames = organism_circuits(
        model,
        transcoders,
        world,
        strength=strength,
        n_graphs=n_graphs,
        out=out,
        mode=cfg.mode,
        scan="smollm2-introspective",
    )
    head = {
        "model": "builtin:smollm2-introspective",
        "mode": cfg.mode,
        "injection_layer": cfg.layer,
        "transcoder_fvu": (
            {L: r["fvu"] for L, r in fvu["layers"].items()} if fvu is not None else None
        ),
        "adapter_sha256": _adapter_digest(),
    }
    g = metrics["graph"]
    in_graph = sum(n.influence or 0.0 for n in frames["graph"].nodes if n.kind == "feature")
    head["headline"] = {
        "delta": g["delta"],
        "graph_share": in_graph / g["delta"] if g["delta"] else None,
        "feature_share": g["explained_by_features"] / g["delta"] if g["delta"] else None,
        "n_graph_features": sum(n.kind == "feature" for n in frames["graph"].nodes),
    }
    metrics = {**head, **metrics, "seconds_total": time.perf_counter() - t0}
    return metrics, frames


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m mechintro.organism.smollm2_circuit",
        description="The circuit of builtin:smollm2-introspective: gates, their ablation and "
        "patching, evidence carriers and the steering graph (edges checked by intervention) "
        "on the shipped transcoders (or ones trained first with --retrain); writes "
        "DIR/circuit.json and DIR/viewer for mechintro viewer.",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="train the transcoders first (into DIR/transcoders, about 15 minutes on one "
        "thread) instead of loading the shipped ones",
    )
    p.add_argument("--strength", type=float, default=1.0, help="× the mean residual norm")
    p.add_argument(
        "--n-concepts", type=int, default=None, help="the first N held-out concepts (all 20)"
    )
    p.add_argument("--n-graphs", type=int, default=3, help="steering graphs checked")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from mechintro.organism.smollm2 import smollm2_introspective

    out = Path(a.out)
    model = smollm2_introspective()
    folder: Path = TRANSCODERS
    if a.retrain:
        folder = out / "transcoders"
        train_smollm2_transcoders(folder, model=model)
    metrics, _ = smollm2_circuits(
        out,
        model=model,
        transcoders=folder,
        strength=a.strength,
        n_concepts=a.n_concepts,
        n_graphs=a.n_graphs,
    )
    metrics["threads"] = torch.get_num_threads()
    atomic_write_text(out / "circuit.json", json.dumps(json_ready(metrics), indent=2))
    logger.info("wrote %s (%.0f s)", out / "circuit.json", metrics["seconds_total"])


if __name__ == "__main__":
    main()
