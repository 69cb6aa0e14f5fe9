"""The studies' experiments: protocols (:mod:`~mechintro.experiments.protocols`), batched
detection trials (:mod:`~mechintro.experiments.trials`), resumable sweeps
(:mod:`~mechintro.experiments.sweeps`, over ``torchrun`` ranks with
:mod:`~mechintro.experiments.distributed`), grading (:mod:`~mechintro.experiments.grading`,
:mod:`~mechintro.experiments.grades`) and metrics with intervals
(:mod:`~mechintro.experiments.metrics`)."""
