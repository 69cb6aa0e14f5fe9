"""mechintro: inject concepts into a language model, ask whether it notices, find the circuit.

Heavy libraries (torch, transformers, TransformerLens) load on first use of a name, so
``import mechintro`` is instant. The main entry points::

    from mechintro import load_model, Prompt, encode, Injection, injected, generate, readout
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mechintro import _moved
from mechintro._lazy import lazy_exports

__version__ = "0.1.0"
_moved.install()  # mechintro 0.1's flat module names still import, with a DeprecationWarning

if TYPE_CHECKING:  # what IDEs and type checkers see: the real names, imported eagerly there
    from mechintro.analysis.dla import DLAResult, direct_logit_attribution, logit_direction
    from mechintro.analysis.parity import parity_check
    from mechintro.analysis.patching import (
        PatchResult,
        activation_patch,
        attribution_patch,
        knock_in,
        knock_out,
    )
    from mechintro.analysis.transcoders import (
        FeatureActivations,
        ReconstructionResult,
        Transcoder,
        feature_activations,
        load_transcoder,
        organism_transcoders,
        splice,
    )
    from mechintro.generation import Generation, Readout, generate, readout
    from mechintro.inject import Injection, PositionMode, injected
    from mechintro.models import layer_at_depth, load_model, model_info
    from mechintro.prompts import Prompt, PromptBatch, encode
    from mechintro.vectors import ConceptVector, extract_vectors

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
    "parity_check": "mechintro.analysis.parity",
    "activation_patch": "mechintro.analysis.patching",
    "attribution_patch": "mechintro.analysis.patching",
    "knock_out": "mechintro.analysis.patching",
    "knock_in": "mechintro.analysis.patching",
    "PatchResult": "mechintro.analysis.patching",
    "direct_logit_attribution": "mechintro.analysis.dla",
    "logit_direction": "mechintro.analysis.dla",
    "DLAResult": "mechintro.analysis.dla",
    "Transcoder": "mechintro.analysis.transcoders",
    "load_transcoder": "mechintro.analysis.transcoders",
    "organism_transcoders": "mechintro.analysis.transcoders",
    "splice": "mechintro.analysis.transcoders",
    "feature_activations": "mechintro.analysis.transcoders",
    "FeatureActivations": "mechintro.analysis.transcoders",
    "ReconstructionResult": "mechintro.analysis.transcoders",
}

__all__ = [
    "ConceptVector",
    "DLAResult",
    "FeatureActivations",
    "Generation",
    "Injection",
    "PatchResult",
    "PositionMode",
    "Prompt",
    "PromptBatch",
    "Readout",
    "ReconstructionResult",
    "Transcoder",
    "__version__",
    "activation_patch",
    "attribution_patch",
    "direct_logit_attribution",
    "encode",
    "extract_vectors",
    "feature_activations",
    "generate",
    "injected",
    "knock_in",
    "knock_out",
    "layer_at_depth",
    "load_model",
    "load_transcoder",
    "logit_direction",
    "model_info",
    "organism_transcoders",
    "parity_check",
    "readout",
    "splice",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
