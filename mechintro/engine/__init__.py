"""What makes generation and patching fast, private to :mod:`mechintro.generation`,
:mod:`mechintro.vectors` and :mod:`mechintro.analysis` (import-linter enforces it): a
bridge's plain Hugging Face twin (:mod:`~mechintro.engine.twin`), the static decode step
captured as a CUDA graph and kept for the next call of the same shape
(:mod:`~mechintro.engine.decode`), and the forward step of each generation path
(:mod:`~mechintro.engine.step`), and attention over grouped K/V heads without repeating
them, the twin's on CUDA (:mod:`~mechintro.engine.attention`). Every path it adds gives the
plain path's numbers (tests/unit/test_twin.py proves it; the grouped attention to float
rounding: tests/unit/test_attention.py)."""
