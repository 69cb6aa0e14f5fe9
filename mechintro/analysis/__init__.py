"""Generic analyses of any TransformerLens model: activation and attribution patching
(:mod:`~mechintro.analysis.patching`), direct logit attribution (:mod:`~mechintro.analysis.dla`),
the parity self-check (:mod:`~mechintro.analysis.parity`), directions
(:mod:`~mechintro.analysis.directions`) and transcoders (:mod:`~mechintro.analysis.transcoders`).
They import the core and the engine, never the experiments, training or applications above."""
