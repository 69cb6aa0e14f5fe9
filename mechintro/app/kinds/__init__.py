"""The experiments ``mechintro run`` runs, one function per kind (docs/protocols.md §10).

Each runner is ``(model, cfg, out, *, small, batch_size) -> DataFrame``: ``cfg`` is the
experiment's parameter table (a preset's fields under the config's own), ``out`` its results
folder, ``small`` shrinks it to a CI size (:func:`shrink_sweep` and each kind's own cuts),
and the DataFrame is the kind's main table, which :mod:`mechintro.app.run_command` writes.
Each parameter table is checked by :func:`~mechintro.app.run_entries.check_params` before any
model loads.

=====================  =============================================  ==========================
kind                   what runs                                      resumable
=====================  =============================================  ==========================
sweep                  :func:`~mechintro.experiments.sweeps.run_sweep` by trial (the sweep's own)
                       (any protocol), rule-graded, report.html
intention              a sweep of ``intention`` and                   by trial
                       ``intention-unrelated`` (Lindsey's control),
                       span injection into the context
noise                  Godet's noise controls (noise.csv)             finished folder skipped
patch                  ``mechintro patch``'s sweep                    by component
intentional-control    :func:`~mechintro.experiments.protocols.       finished folder skipped
                       control.intentional_control`
train-lora             sweep before, LoRA, adapter, sweep after       by sweep; training reruns
train-bias             the bias vector, evaluated without and with    finished folder skipped
train-dpo              one preference objective, sweep before/after   by sweep; training reruns
circuits               gates, carriers, the steering graph            finished folder skipped
transcoder-r2          ridge R² of per-concept detection on           the sweep by trial
                       transcoder features vs the PC1 projection
=====================  =============================================  ==========================

The kinds live by family: :mod:`~mechintro.app.kinds.sweeps` (sweep, intention),
:mod:`~mechintro.app.kinds.controls` (noise, patch, intentional-control),
:mod:`~mechintro.app.kinds.training` (train-lora, train-bias, train-dpo) and
:mod:`~mechintro.app.kinds.transcoders` (circuits, transcoder-r2), on what they share
(:mod:`~mechintro.app.kinds.common`); every public name is importable from here.
"""

from __future__ import annotations

from mechintro.app.kinds.common import RUN_KEYS, build
from mechintro.app.kinds.controls import (
    NOISE_FILE,
    ControlParams,
    noise_config,
    patch_config,
    run_control_kind,
    run_noise,
    run_noise_kind,
    run_patch_kind,
)
from mechintro.app.kinds.sweeps import (
    INTENTION_FIXED,
    SWEEP_EXTRAS,
    run_intention_kind,
    run_sweep_kind,
    shrink_sweep,
    sweep_spec,
    sweep_table,
)
from mechintro.app.kinds.training import (
    TRAIN_KEYS,
    TrainRun,
    run_bias_kind,
    run_dpo_kind,
    run_lora_kind,
    split_train,
)
from mechintro.app.kinds.transcoders import CircuitParams, R2Params, run_circuits_kind, run_r2_kind

__all__ = [
    "INTENTION_FIXED",
    "NOISE_FILE",
    "RUN_KEYS",
    "SWEEP_EXTRAS",
    "TRAIN_KEYS",
    "CircuitParams",
    "ControlParams",
    "R2Params",
    "TrainRun",
    "build",
    "noise_config",
    "patch_config",
    "run_bias_kind",
    "run_circuits_kind",
    "run_control_kind",
    "run_dpo_kind",
    "run_intention_kind",
    "run_lora_kind",
    "run_noise",
    "run_noise_kind",
    "run_patch_kind",
    "run_r2_kind",
    "run_sweep_kind",
    "shrink_sweep",
    "split_train",
    "sweep_spec",
    "sweep_table",
]
