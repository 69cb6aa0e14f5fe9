"""What makes generation and patching fast, private to :mod:`mechintro.generation` and
:mod:`mechintro.analysis` (import-linter enforces it): a bridge's plain Hugging Face twin
(:mod:`~mechintro.engine.twin`) and the static decode step captured as a CUDA graph and kept
for the next call of the same shape (:mod:`~mechintro.engine.decode`). Every path it adds
gives the plain path's numbers; tests/unit/test_twin.py proves it."""
