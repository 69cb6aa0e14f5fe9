"""No module shares a name with a name exported beside it: importing the submodule (which any
other import may do first) would bind the module over the export."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

import circuits
import mechintro

pytestmark = pytest.mark.identity

PACKAGES = [mechintro, circuits]


def _all_packages() -> list[types.ModuleType]:
    found = []
    for root in PACKAGES:
        found.append(root)
        for info in pkgutil.walk_packages(root.__path__, root.__name__ + "."):
            if info.ispkg:
                found.append(importlib.import_module(info.name))
    return found


def _exports(package: types.ModuleType) -> list[str]:
    names = list(getattr(package, "__all__", ()))
    return [n for n in names if n != "__version__"]


@pytest.mark.parametrize("package", _all_packages(), ids=lambda p: p.__name__)
def test_no_submodule_shares_an_exported_name(package: types.ModuleType) -> None:
    subs = {info.name for info in pkgutil.iter_modules(package.__path__)}
    assert not subs & set(_exports(package))


def test_exports_stay_what_they_are_whatever_was_imported_first() -> None:
    import mechintro.analysis.patching  # noqa: F401  (imports the generation module)
    from mechintro.experiments.sweeps import run_sweep  # noqa: F401

    for package in _all_packages():
        for info in pkgutil.iter_modules(package.__path__):
            if info.name != "__main__":  # runs a command line
                importlib.import_module(f"{package.__name__}.{info.name}")
    from mechintro import generate, readout

    assert callable(generate) and not isinstance(generate, types.ModuleType)
    assert callable(readout) and not isinstance(readout, types.ModuleType)
    for package in _all_packages():
        for name in _exports(package):
            value = getattr(package, name)
            assert not isinstance(value, types.ModuleType), f"{package.__name__}.{name}"


def test_the_flat_layouts_module_names_still_import_as_the_same_modules() -> None:
    import importlib

    # mechintro 0.1's flat module names: each imports the very module of the layered layout
    # that its DeprecationWarning names
    old_names = [
        "twin",
        "decode",
        "patching",
        "patch_forwards",
        "patch_result",
        "dla",
        "parity",
        "directions",
        "transcoders",
        "protocols",
        "sweeps",
        "grading",
        "grades",
        "metrics",
        "distributed",
        "cli",
        "options",
        "report",
        "patch_sweep",
        "demo",
        "training.organism",
    ]
    for old in (f"mechintro.{name}" for name in old_names):
        with pytest.warns(DeprecationWarning, match=f"{old} moved to ") as warned:
            module = importlib.import_module(old)
        said = next(str(w.message) for w in warned if f"{old} moved to " in str(w.message))
        new = said.split(" moved to ")[1].split()[0]
        assert new != old and module is importlib.import_module(new)
    from mechintro.protocols.detection import detection_prompt  # the README's 0.1 path

    from mechintro.experiments.protocols import detection

    assert detection_prompt is detection.detection_prompt


def test_importing_mechintro_installs_no_torch_hook() -> None:
    import subprocess
    import sys

    code = (
        "import torch.nn.modules.module as m\n"
        "before = [len(getattr(m, n)) for n in dir(m) if n.startswith('_global_') and "
        "isinstance(getattr(m, n), dict)]\n"
        "import mechintro, mechintro.generation, mechintro.analysis.patching, circuits.graph\n"
        "after = [len(getattr(m, n)) for n in dir(m) if n.startswith('_global_') and "
        "isinstance(getattr(m, n), dict)]\n"
        "assert before == after, (before, after)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_graph_export_and_the_viewer_import_no_model_library() -> None:
    # the light install (no torch, TransformerLens, sae-lens or transformers) exports graphs
    # and serves the viewer: these modules must not load any of them
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import circuits.graph, circuits.viewer, circuits.viewer_server\n"
        "import mechintro.app.viewer_command\n"
        "heavy = {'torch', 'transformer_lens', 'sae_lens', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
