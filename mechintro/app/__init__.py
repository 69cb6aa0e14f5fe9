"""The command line (:mod:`~mechintro.app.cli`, its options derived from the config dataclasses
in :mod:`~mechintro.app.options`), the HTML report of a run (:mod:`~mechintro.app.report`) and
the patching sweep command (:mod:`~mechintro.app.patch_sweep`). Nothing imports this layer."""
