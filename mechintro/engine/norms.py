"""RMSNorms compiled into one kernel each, for a twin on CUDA (opt in: :func:`use_norms`).

Gemma-3 runs six RMSNorms per block (around attention and the MLP, and on queries and keys),
each in fp32 pieces: a cast up, a square, a mean, an rsqrt, two products and a cast down,
about a dozen small kernels per norm, launched per layer and step. At the studies' scale
they take about a third of the decode step's GPU time (benchmarks/RESULTS.md). Compiled
with ``torch.compile`` (default mode, shapes made dynamic after the first change of shape),
each norm module's own forward becomes one fused kernel computing the same formula: the same
numbers to float rounding (the reduction's order), not bit for bit. Only the twin's norm
modules are compiled (every module whose class name ends in ``RMSNorm``: Llama, Qwen, Gemma,
OLMo); the bridge is untouched, and on the CPU the twin stays the eager reference.

The compiled code is shared by every module of one class and made once per kind of shape
(the first call of a new shape compiles, seconds, outside any CUDA-graph capture: a
:class:`~mechintro.engine.decode.Replay` runs its first call eagerly). Each generation
records which norms ran (``settings["norms"]``).
"""

from __future__ import annotations

from typing import Any

import torch

COMPILED = "compiled"
#: what :func:`mechintro.engine.twin.use_norms` accepts
NORMS = ("eager", COMPILED)


def norm_modules(hf: torch.nn.Module) -> list[torch.nn.Module]:
    """The RMSNorm modules of a Hugging Face model (class name ending in ``RMSNorm``)."""
    return [m for m in hf.modules() if type(m).__name__.endswith("RMSNorm")]


def choose(wanted: str, device: torch.device) -> str:
    """The norms a twin on ``device`` runs when ``wanted`` (one of :data:`NORMS`) is asked
    for: compiled only on CUDA, eager elsewhere."""
    if wanted not in NORMS:
        raise ValueError(f"unknown norms {wanted!r}: use one of {', '.join(NORMS)}")
    return COMPILED if wanted == COMPILED and device.type == "cuda" else "eager"


#: on a model whose norms :func:`set_norms` set: which ones (read without walking the tree)
_MARK = "_mechintro_norms"


def set_norms(hf: torch.nn.Module, norms: str) -> None:
    """Compile (``"compiled"``) or restore (``"eager"``) the forward of every norm module of
    ``hf``: a compiled forward is an instance attribute over the class's own."""
    for m in norm_modules(hf):
        own: dict[str, Any] = m.__dict__
        if norms == COMPILED and "forward" not in own:
            own["forward"] = torch.compile(m.forward)
        elif norms != COMPILED:
            own.pop("forward", None)
    hf.__dict__[_MARK] = norms


def norms_of(hf: torch.nn.Module) -> str:
    """Which norms ``hf`` runs now (:func:`set_norms`'s last; ``"eager"`` if never set)."""
    return str(hf.__dict__.get(_MARK, "eager"))
