"""``mechintro organism …``: build, train and measure the built-in organisms.

Each subcommand's options come from dataclasses, as every other command's: its own
(``*Options`` below) and, as overrides, the config dataclass of what it trains (the
organism's :class:`~mechintro.organism.configs.TrainConfig`, the LoRA and bias recipes'
:class:`~mechintro.training.configs.LoRAConfig` and
:class:`~mechintro.training.configs.BiasConfig`, the transcoders'
:class:`~mechintro.analysis.transcoders.configs.TrainConfig`), all in modules that import
nothing heavy, so ``--help`` loads no torch. An option not given keeps the recipe's value
(docs/organism.md); the recipes are :mod:`mechintro.organism.configs`'.

=============== ===========================================================================
``build``       train the base organism from scratch, then the introspective one on it
``lora``        Fonseca Rivera's LoRA recipe on the base organism, held-out rates before/after
``bias``        Macar et al.'s trained bias vector on the base organism, likewise
``evaluate``    detection on an organism folder's train and held-out concepts
``transcoders`` train the transcoders of ``builtin:organism``
=============== ===========================================================================
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mechintro.app.options import LazyParser, add_fields, arg, as_tuples, build_config, opt
from mechintro.organism.configs import (
    TrainConfig,
    organism_bias_config,
    organism_lora_config,
    organism_transcoder_config,
)

logger = logging.getLogger(__name__)

EPILOG = """\
examples:
  mechintro organism build --out organisms --device cuda
  mechintro organism lora --out runs/lora
  mechintro organism bias --out runs/bias --steps 300
  mechintro organism evaluate organisms/introspective
  mechintro organism transcoders --out runs/transcoders --layers 3

`mechintro organism SUBCOMMAND --help` lists its options; those of the trained recipe's
config default to the organism's recipe."""


@dataclass(frozen=True)
class BuildOptions:
    out: str = arg("folder: OUT/base, then OUT/introspective (a base already there is kept)")
    device: str = opt("auto", "torch device (auto: cuda if available, else cpu)")
    evaluate: bool = opt(False, "print the quick detection numbers afterwards")


@dataclass(frozen=True)
class RecipeOptions:
    out: str = arg("output folder (result.json and the trained weights go there)")
    n_controls: int = opt(200, "uninjected trials of each evaluation")
    device: str = opt("cpu", "torch device")


@dataclass(frozen=True)
class EvaluateOptions:
    folder: str = arg("an organism folder (its base must be at FOLDER/../base)", positional=True)
    device: str = opt("cpu", "torch device")
    strengths: tuple[float, ...] = opt((0.25, 0.5, 1.0, 1.5, 2.0, 3.0), "strengths (× resid norm)")
    trials: tuple[int, ...] = opt((1, 2, 3), "trial numbers of each injected concept")
    n_controls: int = opt(200, "uninjected trials")


@dataclass(frozen=True)
class TranscoderOptions:
    out: str = opt("", "folder for layer_L/ and fvu.json (default: the shipped transcoders')")
    layers: tuple[int, ...] = opt((3, 4, 5), "blocks whose MLP gets a transcoder")
    threads: int = opt(1, "torch CPU threads (the shipped weights used 1)")


def _split(args: Mapping[str, Any], cls: type) -> tuple[Any, dict[str, Any]]:
    """(the command's own options, the config overrides given on the command line)."""
    own = {f.name for f in dataclasses.fields(cls)}
    options = build_config(cls, {k: v for k, v in args.items() if k in own})
    return options, as_tuples({k: v for k, v in args.items() if k not in own})


def cmd_build(args: Mapping[str, Any]) -> int:
    import torch

    from mechintro.organism.train import quick_eval, train_base, train_introspective

    o, over = _split(args, BuildOptions)
    cfg = build_config(TrainConfig, over)
    device = o.device if o.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(o.out)
    if not (out / "base" / "config.json").is_file():
        train_base(out / "base", cfg, device)
    train_introspective(out / "base", out / "introspective", cfg, device)
    if o.evaluate:
        print(json.dumps(quick_eval(out / "introspective", out / "base", device)))
    return 0


def _recipe(method: str) -> Callable[[Mapping[str, Any]], int]:
    def run(args: Mapping[str, Any]) -> int:
        from mechintro.organism.training import organism_bias, organism_lora

        o, over = _split(args, RecipeOptions)
        train = organism_lora if method == "lora" else organism_bias
        result = train(o.out, n_controls=o.n_controls, device=o.device, **over)
        summary = {k: {m: result[k][m] for m in ("tpr", "fpr")} for k in ("before", "after")}
        print(json.dumps({**summary, "steps": result["steps"], "wall": result["wall_seconds"]}))
        return 0

    return run


def cmd_evaluate(args: Mapping[str, Any]) -> int:
    from mechintro.experiments.trials import detection_trials, summary
    from mechintro.models import load_model
    from mechintro.organism import corpus
    from mechintro.organism.train import concept_vectors

    o = build_config(EvaluateOptions, args)
    folder = Path(o.folder)
    meta = json.loads((folder / "training.json").read_text())
    layer = meta["config"]["layer"]
    cs = corpus.concepts(meta["config"]["seed"])
    words = [c.word for c in cs if c.split != "baseline"]
    base = corpus.split(cs, "baseline")
    vec, resid = concept_vectors(folder.parent / "base", words, base, layer, o.device)
    model = load_model(folder, device=o.device)
    report = {}
    for name in ("train", "heldout"):
        kw: dict[str, Any] = dict(trials=o.trials, n_controls=o.n_controls)
        ws = corpus.split(cs, name)
        df = detection_trials(model, vec, resid, layer=layer, words=ws, strengths=o.strengths, **kw)
        table = summary(df, corpus.category_of(cs))
        report[name] = table.reset_index().to_dict(orient="records")
        print(name, "\n", table.round(3).to_string())
        print(df[df.injected].sample(5, random_state=0)[["word", "strength", "reply"]].to_string())
    print(json.dumps({"folder": str(folder), **report}))
    return 0


def cmd_transcoders(args: Mapping[str, Any]) -> int:
    from mechintro.organism.transcoder_training import ORGANISM_DIR, train_organism

    o, over = _split(args, TranscoderOptions)
    try:
        cfg = organism_transcoder_config(**over)
    except (TypeError, ValueError) as e:
        raise ValueError(str(e)) from None
    report = train_organism(o.out or ORGANISM_DIR, layers=o.layers, cfg=cfg, threads=o.threads)
    rows = {str(k): round(v.fvu, 4) for k, v in report.layers.items()}
    logger.info("held-out FVU by layer: %s; %.0f s in all", rows, report.seconds_total)
    return 0


COMMANDS: dict[str, Callable[[Mapping[str, Any]], int]] = {
    "build": cmd_build,
    "lora": _recipe("lora"),
    "bias": _recipe("bias"),
    "evaluate": cmd_evaluate,
    "transcoders": cmd_transcoders,
}


#: name -> (help, the subcommand's own options, the recipe config it overrides, or None)
SUBCOMMANDS: dict[str, tuple[str, type, Callable[[], Any] | None]] = {
    "build": ("train the base organism, then the introspective", BuildOptions, TrainConfig),
    "lora": (
        "Fonseca Rivera's LoRA recipe on the base organism",
        RecipeOptions,
        organism_lora_config,
    ),
    "bias": (
        "Macar et al.'s bias vector on the base organism",
        RecipeOptions,
        organism_bias_config,
    ),
    "evaluate": ("detection on an organism's train and held-out words", EvaluateOptions, None),
    "transcoders": (
        "train the transcoders of builtin:organism",
        TranscoderOptions,
        organism_transcoder_config,
    ),
}


def _options(options: type, recipe: Callable[[], Any] | None) -> Callable[[Any], None]:
    def add(p: argparse.ArgumentParser) -> None:
        add_fields(p, options)
        if recipe is not None:
            config = recipe()
            kind = type(config)
            group = p.add_argument_group(f"{kind.__name__} (default: the organism's recipe)")
            add_fields(group, kind, suppress=True, defaults=config)

    return add


def add_commands(parser: argparse.ArgumentParser) -> None:
    """The subcommands of ``mechintro organism``, their options from the dataclasses, added
    when the subcommand is used."""
    sub = parser.add_subparsers(
        dest="organism_command", required=True, metavar="SUBCOMMAND", parser_class=LazyParser
    )
    for name, (help_text, options, recipe) in SUBCOMMANDS.items():
        sub.add_parser(
            name, help=help_text, description=help_text, add_options=_options(options, recipe)
        )


def run(args: Mapping[str, Any]) -> int:
    """Run the ``mechintro organism`` subcommand named in ``args``."""
    rest = dict(args)
    return COMMANDS[rest.pop("organism_command")](rest)


__all__ = ["add_commands", "run"]
