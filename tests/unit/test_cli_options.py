"""The command line's options are its config dataclasses' fields, and building it (every
``--help``) imports no heavy library."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import subprocess
import sys

import pytest

from mechintro.app.cli import main
from mechintro.app.options import (
    ExtractConfig,
    GradeConfig,
    NoiseConfig,
    ReportConfig,
    RunCommandConfig,
    RunConfig,
    ViewerConfig,
)
from mechintro.app.organism_commands import (
    BuildOptions,
    EvaluateOptions,
    RecipeOptions,
    TranscoderOptions,
)
from mechintro.app.patch_sweep import PatchConfig
from mechintro.experiments.sweeps.spec import SweepSpec
from mechintro.organism.configs import DemoConfig, TrainConfig

HEAVY = ("torch", "transformers", "transformer_lens", "sae_lens", "pandas", "plotly")

#: each command line, the dataclasses its options come from, and its options of its own
COMMANDS: dict[tuple[str, ...], tuple[tuple[type, ...], set[str]]] = {
    ("extract",): ((ExtractConfig,), set()),
    ("sweep",): ((RunConfig, SweepSpec), {"--config"}),
    ("grade",): ((GradeConfig,), set()),
    ("report",): ((ReportConfig,), set()),
    ("noise",): ((NoiseConfig,), set()),
    ("patch",): ((PatchConfig,), set()),
    ("demo",): ((DemoConfig,), set()),
    ("run",): ((RunCommandConfig,), set()),
    ("viewer",): ((ViewerConfig,), set()),
    ("organism", "build"): ((BuildOptions, TrainConfig), set()),
    ("organism", "evaluate"): ((EvaluateOptions,), set()),
}
#: their recipe's config loads its training module (torch): checked apart
RECIPES = {
    ("organism", "lora"): "LoRAConfig",
    ("organism", "bias"): "BiasConfig",
    ("organism", "transcoders"): "TrainConfig",
}


def help_of(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return out.getvalue()


def flags_and_arguments(text: str) -> tuple[set[str], set[str]]:
    """The options (first flag of each) and positional arguments a --help lists."""
    flags = set(re.findall(r"^  (--[a-z][\w-]*)", text, flags=re.MULTILINE)) - {"--help"}
    args = set(re.findall(r"^  ([A-Z][A-Z_]*)\b", text, flags=re.MULTILINE))
    return flags, args


def expected(classes: tuple[type, ...]) -> tuple[set[str], set[str]]:
    fields = [f for cls in classes for f in dataclasses.fields(cls)]
    flags = {"--" + f.name.replace("_", "-") for f in fields if not f.metadata.get("positional")}
    args = {f.name.upper() for f in fields if f.metadata.get("positional")}
    return flags, args


@pytest.mark.parametrize("argv", list(COMMANDS), ids=" ".join)
def test_each_commands_options_are_its_dataclasses_fields(argv):
    classes, own = COMMANDS[argv]
    flags, args = expected(classes)
    assert flags_and_arguments(help_of(list(argv))) == (flags | own, args)


def test_every_command_is_checked():
    top = help_of([])
    listed = re.findall(r"^    (\w+)(?: |$)", top, flags=re.MULTILINE)
    organism = re.findall(r"^    (\w+)(?: |$)", help_of(["organism"]), flags=re.MULTILINE)
    assert listed and organism
    checked = {*COMMANDS, *RECIPES}
    assert {(c,) for c in listed if c != "organism"} | {("organism", s) for s in organism} == (
        checked
    )


@pytest.mark.parametrize("argv", list(RECIPES), ids=" ".join)
def test_recipe_overrides_are_the_recipes_config_fields(argv):
    from mechintro.analysis.transcoders.train import TrainConfig as TranscoderConfig
    from mechintro.training import BiasConfig, LoRAConfig

    recipe = {"LoRAConfig": LoRAConfig, "BiasConfig": BiasConfig, "TrainConfig": TranscoderConfig}
    own = TranscoderOptions if argv[-1] == "transcoders" else RecipeOptions
    flags, args = expected((own, recipe[RECIPES[argv]]))
    text = help_of(list(argv))
    assert f"{RECIPES[argv]} (default: the organism's recipe)" in text
    assert flags_and_arguments(text) == (flags, args)


CHECK = """
import contextlib, io, json, sys
from mechintro.app.cli import main
for argv in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main([*argv, "--help"])
        except SystemExit:
            pass
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in json.loads(sys.argv[2]))))
"""


def test_help_of_every_command_imports_no_heavy_library():
    argvs = [[], *map(list, COMMANDS), ["organism"]]
    done = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(argvs), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout) == []


def test_viewer_serves_this_machine_only():
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as e:
        main(["viewer", "runs", "--host", "0.0.0.0"])
    assert e.value.code == 2
    with pytest.raises(ValueError, match="between 0 and 65535"):
        ViewerConfig(dir="runs", port=70000)
    assert ViewerConfig(dir="runs").port == 0  # a free port
