"""mechintro: inject concepts into a language model, ask whether it notices, find the circuit.

Heavy libraries (torch, transformers, TransformerLens) load on first use of a name, so
``import mechintro`` is instant. The main entry points::

    from mechintro import load_model, Prompt, encode, Injection, injected, generate, readout
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "mechintro.models",
    "model_info": "mechintro.models",
    "layer_at_depth": "mechintro.models",
    "Prompt": "mechintro.prompts",
    "PromptBatch": "mechintro.prompts",
    "encode": "mechintro.prompts",
    "Injection": "mechintro.inject",
    "PositionMode": "mechintro.inject",
    "injected": "mechintro.inject",
    "generate": "mechintro.generation",
    "readout": "mechintro.generation",
    "Generation": "mechintro.generation",
    "Readout": "mechintro.generation",
    "ConceptVector": "mechintro.vectors",
    "extract_vectors": "mechintro.vectors",
    "parity_check": "mechintro.parity",
    "activation_patch": "mechintro.patching",
    "attribution_patch": "mechintro.patching",
    "knock_out": "mechintro.patching",
    "knock_in": "mechintro.patching",
    "PatchResult": "mechintro.patching",
    "direct_logit_attribution": "mechintro.dla",
    "logit_direction": "mechintro.dla",
    "DLAResult": "mechintro.dla",
    "Transcoder": "mechintro.transcoders",
    "load_transcoder": "mechintro.transcoders",
    "organism_transcoders": "mechintro.transcoders",
    "splice": "mechintro.transcoders",
    "feature_activations": "mechintro.transcoders",
    "FeatureActivations": "mechintro.transcoders",
    "ReconstructionResult": "mechintro.transcoders",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        # a function may share its module's name (mechintro.generation.generate): importing the
        # submodule binds the module here, so bind the function over it
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mechintro' has no attribute {name!r}")
