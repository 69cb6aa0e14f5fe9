"""Introspection protocols: the prompts and trials of the source studies (docs/protocols.md §3–§6).

Generation protocols (named, versioned :class:`~mechintro.experiments.protocols.base.PromptProtocol`
values in :data:`PROTOCOLS`, usable as ``SweepSpec(protocols=...)``):

* :mod:`~mechintro.experiments.protocols.detection`: Lindsey/Macar's detection dialogue and forced
  identification;
* :mod:`~mechintro.experiments.protocols.variants`: the prompt variants of Macar et al.'s table;
* :mod:`~mechintro.experiments.protocols.formats`: the dialogue formats (chat, raw, roles swapped,
  characters, plain, story; Fonseca's raw format);
* :mod:`~mechintro.experiments.protocols.transient`: Fonseca Rivera's single-token injection;
* :mod:`~mechintro.experiments.protocols.intention`: Lindsey's prefill intention ("bread"), with a
  runner.

Runners outside the registry: :mod:`~mechintro.experiments.protocols.noise` (Godet's noise
controls, one forward per readout,
:class:`~mechintro.experiments.protocols.noise.NoiseControls`) and
:mod:`~mechintro.experiments.protocols.control` (Lindsey's intentional control, a reply and one
forward to read it, :func:`~mechintro.experiments.protocols.control.intentional_control`).

Example::

    from mechintro.experiments.protocols import get, names
    names()[:4]
    get("detection/characters").prompt(2)
"""

from __future__ import annotations

from mechintro.experiments.protocols.base import PromptProtocol, grade_results
from mechintro.experiments.protocols.registry import PROTOCOLS, get, names

__all__ = ["PROTOCOLS", "PromptProtocol", "get", "grade_results", "names"]
