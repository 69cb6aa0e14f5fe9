"""Shared fixtures: tiny random checkpoints of every target architecture, built once, offline."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).parent))  # tiny_models, whatever pytest's import mode

import pytest
from tiny_models import ARCHS, make_all, make_tokenizer


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
