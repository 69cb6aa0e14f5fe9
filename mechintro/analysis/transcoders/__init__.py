"""Transcoders: sparse, interpretable replacements of a model's MLPs, applied correctly.

A transcoder (Dunefsky et al. 2024, "Transcoders find interpretable LLM feature circuits";
Gemma Scope 2, used by Macar et al. 2026 for gate features) maps block L's MLP input ``x``
to what that MLP writes into the residual stream, through a wide, sparse layer of features::

    a = 1[x·W_enc + b_enc > θ] · ReLU(x·W_enc + b_enc)      (JumpReLU; ReLU without θ)
    ŷ = a·W_dec + b_dec + x·A                               (A: the optional affine skip)

Each feature ``f`` has an encoder column ``W_enc[:, f]`` (what it reads) and a decoder row
``W_dec[f]`` (what it writes), which is what makes circuit work on features possible
(virtual weights ``W_dec[f]·W_enc[:, g]`` between layers). Where the transcoder reads and
writes matters: ``x`` is the MLP input *after* the pre-MLP norm *and its weight*, ``ŷ`` the
MLP's contribution to the residual stream (after Gemma's post-feedforward norm): see
:mod:`.sites` for the hook of each on each backend. sae-lens's own attachment reads a wrong
site on an unprocessed model and leaves out the skip term, so here sae-lens only loads and
saves weights, and mechintro does the arithmetic. Always check the reconstruction error
(:func:`evaluate`, FVU) before trusting a feature.

Modules: :mod:`.core` (the :class:`Transcoder` value; sae-lens registry and disk format),
:mod:`.sites` (hook sites, reading MLP activations), :mod:`.analysis` (FVU, sparse feature
caches, :func:`splice`), :mod:`.train` (a BatchTopK trainer; the organism's transcoders),
:mod:`.configs` (its :class:`TrainConfig`, pure data). Each name loads on first use, so the
config (and the command line's help) loads no torch.

Example::

    from mechintro import Prompt, load_model
    from mechintro.analysis.transcoders import evaluate, feature_activations, organism_transcoders

    model = load_model("builtin:organism")
    tcs = organism_transcoders()                  # layers 3, 4, 5 (shipped, sae-lens format)
    prompts = [Prompt.chat("Tell me about cats")]
    evaluate(model, tcs, prompts).to_frame()      # FVU, L0 per layer
    fa = feature_activations(model, tcs, prompts)
    fa.top(4, k=5)

Wherever transcoders are taken, a loaded sae-lens ``SAE`` (of a transcoder architecture) or a
``(release, sae_id)`` pair of sae-lens's registry works as well (:func:`as_transcoder`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mechintro._lazy import lazy_exports

if TYPE_CHECKING:  # the real names for type checkers; at run time they load on first use, so
    # that importing the trainer's config (pure Python) does not load torch
    from mechintro.analysis.transcoders.analysis import (
        FeatureActivations,
        ReconstructionResult,
        SpliceState,
        evaluate,
        feature_activations,
        reconstruction,
        splice,
    )
    from mechintro.analysis.transcoders.configs import (
        TrainConfig,
    )
    from mechintro.analysis.transcoders.core import (
        ARCHITECTURES,
        RegistryEntry,
        Transcoder,
        as_transcoder,
        load_transcoder,
        organism_transcoders,
        registry_entry,
    )
    from mechintro.analysis.transcoders.sites import (
        MLPActivations,
        MLPSites,
        mlp_activations,
        mlp_sites,
    )
    from mechintro.analysis.transcoders.train import (
        TrainReport,
        train_transcoder,
    )

_EXPORTS = {
    "FeatureActivations": "mechintro.analysis.transcoders.analysis",
    "ReconstructionResult": "mechintro.analysis.transcoders.analysis",
    "SpliceState": "mechintro.analysis.transcoders.analysis",
    "evaluate": "mechintro.analysis.transcoders.analysis",
    "feature_activations": "mechintro.analysis.transcoders.analysis",
    "reconstruction": "mechintro.analysis.transcoders.analysis",
    "splice": "mechintro.analysis.transcoders.analysis",
    "TrainConfig": "mechintro.analysis.transcoders.configs",
    "ARCHITECTURES": "mechintro.analysis.transcoders.core",
    "RegistryEntry": "mechintro.analysis.transcoders.core",
    "Transcoder": "mechintro.analysis.transcoders.core",
    "as_transcoder": "mechintro.analysis.transcoders.core",
    "load_transcoder": "mechintro.analysis.transcoders.core",
    "organism_transcoders": "mechintro.analysis.transcoders.core",
    "registry_entry": "mechintro.analysis.transcoders.core",
    "MLPActivations": "mechintro.analysis.transcoders.sites",
    "MLPSites": "mechintro.analysis.transcoders.sites",
    "mlp_activations": "mechintro.analysis.transcoders.sites",
    "mlp_sites": "mechintro.analysis.transcoders.sites",
    "TrainReport": "mechintro.analysis.transcoders.train",
    "train_transcoder": "mechintro.analysis.transcoders.train",
}

__all__ = [
    "ARCHITECTURES",
    "FeatureActivations",
    "MLPActivations",
    "MLPSites",
    "ReconstructionResult",
    "RegistryEntry",
    "SpliceState",
    "TrainConfig",
    "TrainReport",
    "Transcoder",
    "as_transcoder",
    "evaluate",
    "feature_activations",
    "load_transcoder",
    "mlp_activations",
    "mlp_sites",
    "organism_transcoders",
    "reconstruction",
    "registry_entry",
    "splice",
    "train_transcoder",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
