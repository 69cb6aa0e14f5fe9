"""Shared fixtures: tiny random checkpoints of every target architecture, built once, offline."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).parent))  # tiny_models, whatever pytest's import mode

# Run-time type checks, for the test run only: jaxtyping's import hook puts
# @jaxtyped(typechecker=beartype) on every function and dataclass of mechintro and circuits, so
# each call checks its annotations, tensor shapes and dtypes included (`Float[Tensor, "batch
# d_model"]`, one size per dimension name within a call). It must be installed before either
# package is imported, hence here and not in pyproject: jaxtyping's own --jaxtyping-packages
# option cannot take the typechecker's configuration with two packages (its comma split).
# is_pep484_tower: an int passes where float is annotated, as for mypy. An annotation that is
# not resolvable when the function is defined (a name imported only under TYPE_CHECKING, such
# as pd or TLModel, or a class's own name in its body) leaves that one parameter unchecked.
# JAXTYPING_DISABLE=1 switches the checks off (say, to time a test); without beartype (the
# "test" extra installs it; a bare GPU machine may lack it) the tests run unchecked.
import importlib.util

import jaxtyping

if {"mechintro", "circuits"} & set(sys.modules):
    raise RuntimeError("mechintro was imported before tests/conftest.py: it would go unchecked")
if importlib.util.find_spec("beartype") is not None:
    jaxtyping.install_import_hook(
        ["mechintro", "circuits"],
        "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))",
    )

import pytest
from tiny_models import ARCHS, make_all, make_tokenizer


@contextmanager
def _checks_off() -> Iterator[None]:
    was = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", was)


@pytest.fixture
def unchecked() -> Callable[[], AbstractContextManager[None]]:
    """``with unchecked():`` runs a block without the run-time type checks.

    For a call that passes an ill-typed value on purpose, to test mechintro's own refusal:
    what a caller without a type checker gets (the checks would refuse it first).
    """
    return _checks_off


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """arch -> folder of a tiny random checkpoint; each folder is named after its arch."""
    return make_all(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(params=ARCHS, ids=list(ARCHS))
def tiny_dir(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]) -> Path:
    """One tiny checkpoint folder per architecture (``tiny_dir.name`` is the arch)."""
    return tiny_dirs[request.param]


@pytest.fixture(scope="session")
def notemplate_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding only a byte-level tokenizer with chatml specials and no chat template."""
    folder = tmp_path_factory.mktemp("notemplate")
    make_tokenizer(folder, "none")
    return folder


_MODELS: dict[tuple[str, str], object] = {}


@pytest.fixture(
    params=[(a, b) for a in ARCHS for b in ("bridge", "hooked")], ids=lambda p: "-".join(p)
)
def model(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]):
    """Every tiny architecture on both backends, loaded once per session (fp32, CPU)."""
    from mechintro.models import load_model

    arch, backend = request.param
    if request.param not in _MODELS:
        _MODELS[request.param] = load_model(tiny_dirs[arch], backend=backend)
    return _MODELS[request.param]


@pytest.fixture(scope="module")
def toks(tiny_dirs: dict[str, Path]):
    """The tiny Llama's and Gemma-3's tokenizers (byte-level: one token per character)."""
    from transformers import AutoTokenizer

    return {a: AutoTokenizer.from_pretrained(tiny_dirs[a]) for a in ("llama", "gemma3")}


@pytest.fixture(scope="module")
def llama(tiny_dirs: dict[str, Path]):
    """The tiny Llama on the default backend (modules needing another define their own)."""
    from mechintro.models import load_model

    return load_model(tiny_dirs["llama"])


@pytest.fixture(scope="module", params=ARCHS)
def bridge(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]):
    """Every tiny architecture on the bridge, loaded once per module."""
    from mechintro.models import load_model

    return load_model(tiny_dirs[request.param], backend="bridge")
