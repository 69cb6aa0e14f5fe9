"""The ``mechintro`` command. Options are derived from the config dataclasses, so the
command line and the library cannot drift apart.

    mechintro demo --out demo_out
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from typing import Any

from mechintro.demo import DemoConfig, run_demo


def _add_fields(parser: argparse.ArgumentParser, cls: Any) -> None:
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        if isinstance(default, bool):
            parser.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        elif isinstance(default, tuple):
            kind = type(default[0]) if default else str
            parser.add_argument(flag, nargs="+", type=kind, default=default, help=help_text)
        else:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            kind = type(default) if default is not None else str
            parser.add_argument(
                flag,
                type=kind,
                default=default,
                required=required,
                help=f"{help_text} (default: {default})",
            )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mechintro",
        description="inject concepts, ask whether the model notices, find the circuit",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="run the offline demo; writes DIR/report.html and DIR/metrics.json"
    )
    _add_fields(demo, DemoConfig)
    args = vars(parser.parse_args(argv))
    logging.basicConfig(
        level=logging.DEBUG if args.pop("verbose") else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
    )
    command = args.pop("command")
    if command == "demo":
        args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
        metrics = run_demo(DemoConfig(**args))
        logging.getLogger("mechintro").info(
            "wrote %s/report.html and metrics.json in %.1f s", args["out"], metrics["wall_seconds"]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
