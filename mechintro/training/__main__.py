"""``python -m mechintro.training organism-lora|organism-bias --out DIR``: train introspection
into the base organism and write ``DIR/result.json`` (held-out TPR/FPR before and after)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m mechintro.training", description=__doc__)
    sub = p.add_subparsers(dest="run", required=True)
    for name, what in (
        ("organism-lora", "Fonseca Rivera's LoRA recipe (mechintro.training.lora)"),
        ("organism-bias", "Macar et al.'s trained bias vector (mechintro.training.bias)"),
    ):
        s = sub.add_parser(name, help=what, description=what)
        s.add_argument("--out", required=True, help="output folder (result.json goes there)")
        s.add_argument("--seed", type=int, default=0, help="training and sampling seed")
        s.add_argument("--n-controls", type=int, default=200, help="uninjected trials")
        s.add_argument("--device", default="cpu")
        s.add_argument(
            "--steps", type=int, default=None, help="training steps (default: the config's)"
        )
        s.add_argument(
            "--set",
            nargs="*",
            default=[],
            metavar="KEY=JSON",
            help="other config fields, e.g. lr=5e-4",
        )
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    over = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    from mechintro.training import organism

    if a.run == "organism-lora":
        if a.steps is not None:
            over["max_steps"] = a.steps
        result = organism.organism_lora(
            a.out, seed=a.seed, n_controls=a.n_controls, device=a.device, **over
        )
    else:
        if a.steps is not None:
            over["steps"] = a.steps
        result = organism.organism_bias(
            a.out, seed=a.seed, n_controls=a.n_controls, device=a.device, **over
        )
    summary = {k: {m: result[k][m] for m in ("tpr", "fpr")} for k in ("before", "after")}
    print(json.dumps({**summary, "steps": result["steps"], "wall_seconds": result["wall_seconds"]}))


if __name__ == "__main__":
    main()
