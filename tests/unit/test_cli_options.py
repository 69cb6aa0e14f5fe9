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
#: each recipe's config (defaults: the organism's recipe) as overrides beside its own options
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
    argvs = [[], *map(list, COMMANDS), *map(list, RECIPES), ["organism"]]
    done = subprocess.run(
        [sys.executable, "-c", CHECK, json.dumps(argvs), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout) == []


def test_moved_configs_keep_their_old_import_paths():
    """The configs moved to light modules are the very objects of their old paths."""
    import mechintro.analysis.transcoders.configs as transcoder_configs
    import mechintro.analysis.transcoders.train as transcoder_train
    import mechintro.organism.configs as organism_configs
    import mechintro.organism.corpus as corpus
    import mechintro.organism.training as organism_training
    import mechintro.organism.transcoder_training as transcoder_training
    import mechintro.training as training
    import mechintro.training.bias as bias
    import mechintro.training.common as common
    import mechintro.training.configs as configs
    import mechintro.training.lora as lora

    moved = {
        configs: {
            lora: ["LoRAConfig", "FONSECA_QUESTIONS", "FONSECA_YES", "FONSECA_NO"],
            bias: ["BiasConfig", "BIAS_YES", "BIAS_NO"],
            common: ["SCHEDULES", "OPTIMIZERS", "TRAIN_MODES", "check_positive"],
            training: ["LoRAConfig", "BiasConfig"],
        },
        organism_configs: {
            corpus: ["YES_DETECTION", "NO_DETECTION"],
            organism_training: [
                "LAYER",
                "EVAL_STRENGTHS",
                "ORGANISM_QUESTIONS",
                "organism_lora_config",
                "organism_bias_config",
            ],
            transcoder_training: ["ORGANISM_CONFIG"],
        },
        transcoder_configs: {transcoder_train: ["TrainConfig"]},
    }
    for new, olds in moved.items():
        for old, names in olds.items():
            for name in names:
                assert getattr(old, name) is getattr(new, name), f"{old.__name__}.{name}"
    recipe = organism_configs.organism_lora_config(batch_size=4)
    assert (recipe.layer, recipe.batch_size, recipe.yes_target) == (3, 4, corpus.YES_DETECTION)


def test_viewer_serves_this_machine_only():
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit) as e:
        main(["viewer", "runs", "--host", "0.0.0.0"])
    assert e.value.code == 2
    with pytest.raises(ValueError, match="between 0 and 65535"):
        ViewerConfig(dir="runs", port=70000)
    assert ViewerConfig(dir="runs").port == 0  # a free port


class _Loaded(Exception):
    """Raised by a stand-in load_model: the command got as far as loading, with these."""


@pytest.mark.parametrize(
    "argv",
    [
        ["extract", "--model", "M", "--out", "OUT", "--words", "cat", "--layer", "1"],
        ["noise", "--model", "M", "--out", "OUT", "--layers", "1"],
        ["sweep", "--model", "M", "--out", "OUT", "--concepts", "cat", "--layers", "1"],
        ["patch", "--model", "M", "--out", "OUT", "--concept", "cat", "--layer", "1"],
    ],
    ids=lambda a: a[0],
)
def test_every_command_that_loads_a_model_passes_its_revision(argv, tmp_path, monkeypatch):
    import mechintro.models

    seen: dict[str, object] = {}

    def fake_load(name, **kw):
        seen.update(kw, name=name)
        raise _Loaded

    monkeypatch.setattr(mechintro.models, "load_model", fake_load)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(_Loaded):
        main([*argv, "--revision", "stage1-step1000"])
    assert (seen["name"], seen["revision"]) == ("M", "stage1-step1000")
