"""Sweeps: a grid of trials, run in mixed batches, stored append-only, resumable at any moment.

A :class:`SweepSpec` names a grid (protocols × concepts × layers × strengths × position modes
× trial numbers × samples, plus uninjected controls) and the settings every trial shares
(temperature, reply length, vector method, strength unit, seed). :func:`plan` expands it into
:class:`Trial` values, each with a deterministic ``trial_id`` (a hash of everything that
determines its result) and its own sampling seed, so a trial's reply does not depend on the
batch it ran in (:func:`mechintro.generation.generate` draws each row's noise from its own seed).

:func:`run_sweep` runs the pending trials in batches that mix cells: different concepts,
strengths, trial numbers and controls side by side through per-row injections, and, where a
batch spans layers or modes, one :class:`~mechintro.inject.Injection` per (layer, mode) with
strength 0 (bit-identical to no injection) on the rows that belong elsewhere. Batches follow
the layer order, so most batches hook one layer; controls are spread evenly over them.

The package: :mod:`~mechintro.experiments.sweeps.spec` (the grid, trials, batches),
:mod:`~mechintro.experiments.sweeps.builders` (prompt builders: every protocol of
:data:`mechintro.experiments.protocols.PROTOCOLS` by name),
:mod:`~mechintro.experiments.sweeps.store` (the results folder),
:mod:`~mechintro.experiments.sweeps.frozen` (the injections frozen in it) and
:mod:`~mechintro.experiments.sweeps.runner` (:func:`run_sweep`).

The results folder holds::

    spec.json        the spec, the model (name, fingerprint) and each protocol's prompt hash
    frozen.safetensors, frozen.json   every (layer, concept)'s vector and what a strength of
                     1 adds with it, resolved on the first run (mechintro.experiments.sweeps.frozen)
    trials.jsonl     one JSON record per finished trial, appended batch by batch
    trials.rank{r}.jsonl   the same, written by rank r of a data-parallel run
    runs.jsonl       one record per run: world size, ranks, devices, batch size, memory plan,
                     generation path (twin, bridge or hooked), library versions

Each batch's records are appended with one write, flushed and fsynced. A run stopped at any
moment (Ctrl-C, an exception, ``kill -9``, a power cut) loses at most the batch in flight:
on the next run the torn last line, if any, is cut off, the trial ids already present are
skipped, and the rest run, in the batches an uninterrupted run would have run them in, with
the injections frozen on the first run: every record equals an uninterrupted run's but for
``written_at`` and the timings under ``batch`` (at the same batch size; see
:func:`run_sweep`). A folder is bound to one spec and one model: resuming with another is
refused. A lock file stops two processes from writing one folder.

Data-parallel: under ``torchrun`` (or ``mechintro sweep --nproc N``) every rank runs the same
call on its own model; rank 0 holds the lock, checks and repairs the folder and lists the
pending trials; rank ``r`` runs batches ``r, r + N, r + 2N, ...`` of them into its own
``trials.rank{r}.jsonl``. Readers merge every trial file; a rerun of any world size, one
included, skips the trials present in any of them (see :mod:`mechintro.experiments.distributed`).

Example::

    spec = SweepSpec(concepts=("Dust", "Peace"), layers=(20, 24), strengths=(2.0, 4.0),
                     trial_numbers=tuple(range(1, 11)), n_controls=20, max_new_tokens=100)
    df = run_sweep(model, spec, "runs/detection")  # rerun the same line to resume
    df.groupby(["layer", "strength"]).reply.count()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mechintro._lazy import lazy_exports

if TYPE_CHECKING:  # the real names for type checkers; at run time they load on first use, so
    # that importing the spec (pure Python) does not load torch with the runner
    from mechintro.experiments.sweeps.builders import (
        PROMPT_VERSIONS,
        PROMPTS,
        PromptBuilder,
        ProtocolBuilder,
        build_prompt,
        has_chat_template,
        prompt_version,
        raw_counterpart,
        without_chat_template,
    )
    from mechintro.experiments.sweeps.frozen import (
        FROZEN_FILE,
        FROZEN_TENSORS,
        Frozen,
        Vectors,
        load_frozen,
    )
    from mechintro.experiments.sweeps.runner import run_sweep
    from mechintro.experiments.sweeps.spec import (
        STORE_FORMAT,
        SweepSpec,
        Trial,
        batches,
        concept_protocols,
        plan,
    )
    from mechintro.experiments.sweeps.store import (
        LOCK_FILE,
        RUNS_FILE,
        SHARD_FILE,
        SPEC_FILE,
        TRIALS_FILE,
        TrialStore,
        load_results,
        load_runs,
        load_spec,
        read_trials,
        shard_path,
        trial_files,
    )

_EXPORTS = {
    "PROMPT_VERSIONS": "mechintro.experiments.sweeps.builders",
    "PROMPTS": "mechintro.experiments.sweeps.builders",
    "PromptBuilder": "mechintro.experiments.sweeps.builders",
    "ProtocolBuilder": "mechintro.experiments.sweeps.builders",
    "build_prompt": "mechintro.experiments.sweeps.builders",
    "has_chat_template": "mechintro.experiments.sweeps.builders",
    "prompt_version": "mechintro.experiments.sweeps.builders",
    "raw_counterpart": "mechintro.experiments.sweeps.builders",
    "without_chat_template": "mechintro.experiments.sweeps.builders",
    "FROZEN_FILE": "mechintro.experiments.sweeps.frozen",
    "FROZEN_TENSORS": "mechintro.experiments.sweeps.frozen",
    "Frozen": "mechintro.experiments.sweeps.frozen",
    "Vectors": "mechintro.experiments.sweeps.frozen",
    "load_frozen": "mechintro.experiments.sweeps.frozen",
    "run_sweep": "mechintro.experiments.sweeps.runner",
    "STORE_FORMAT": "mechintro.experiments.sweeps.spec",
    "SweepSpec": "mechintro.experiments.sweeps.spec",
    "Trial": "mechintro.experiments.sweeps.spec",
    "batches": "mechintro.experiments.sweeps.spec",
    "concept_protocols": "mechintro.experiments.sweeps.spec",
    "plan": "mechintro.experiments.sweeps.spec",
    "LOCK_FILE": "mechintro.experiments.sweeps.store",
    "RUNS_FILE": "mechintro.experiments.sweeps.store",
    "SHARD_FILE": "mechintro.experiments.sweeps.store",
    "SPEC_FILE": "mechintro.experiments.sweeps.store",
    "TRIALS_FILE": "mechintro.experiments.sweeps.store",
    "TrialStore": "mechintro.experiments.sweeps.store",
    "load_results": "mechintro.experiments.sweeps.store",
    "load_runs": "mechintro.experiments.sweeps.store",
    "load_spec": "mechintro.experiments.sweeps.store",
    "read_trials": "mechintro.experiments.sweeps.store",
    "shard_path": "mechintro.experiments.sweeps.store",
    "trial_files": "mechintro.experiments.sweeps.store",
}

__all__ = [
    "FROZEN_FILE",
    "FROZEN_TENSORS",
    "LOCK_FILE",
    "PROMPTS",
    "PROMPT_VERSIONS",
    "RUNS_FILE",
    "SHARD_FILE",
    "SPEC_FILE",
    "STORE_FORMAT",
    "TRIALS_FILE",
    "Frozen",
    "PromptBuilder",
    "ProtocolBuilder",
    "SweepSpec",
    "Trial",
    "TrialStore",
    "Vectors",
    "batches",
    "build_prompt",
    "concept_protocols",
    "has_chat_template",
    "load_frozen",
    "load_results",
    "load_runs",
    "load_spec",
    "plan",
    "prompt_version",
    "raw_counterpart",
    "read_trials",
    "run_sweep",
    "shard_path",
    "trial_files",
    "without_chat_template",
]


__getattr__ = lazy_exports(__name__, _EXPORTS)
