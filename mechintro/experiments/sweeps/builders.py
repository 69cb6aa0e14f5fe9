"""Prompt builders of a sweep: every registered protocol by name, plus the caller's own.

A builder turns a :class:`~mechintro.experiments.sweeps.spec.Trial` into a
:class:`~mechintro.prompts.Prompt`. :data:`PROMPTS` holds one per protocol of
:data:`mechintro.experiments.protocols.PROTOCOLS` (``detection``, ``forced``, the variants, the
dialogue formats, ``transient``, ``intention``, ...); ``run_sweep(prompts={name: builder})`` adds or
overrides others: a plain ``(Trial) -> Prompt`` function, whose ``version`` attribute, if
any, is recorded with each trial.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mechintro.experiments.protocols import PROTOCOLS, PromptProtocol
from mechintro.experiments.sweeps.spec import Trial
from mechintro.prompts import Prompt

PromptBuilder = Callable[..., Prompt]


class ProtocolBuilder:
    """The builder of a registered protocol: the trial's number and concept, and the model's
    tokenizer for protocols rendered through the chat template (roles swapped)."""

    takes_tokenizer = True

    def __init__(self, protocol: PromptProtocol) -> None:
        self.protocol = protocol
        self.version = protocol.version

    def __call__(self, trial: Trial, tokenizer: Any = None) -> Prompt:
        return self.protocol.prompt(trial.trial_number, concept=trial.concept, tokenizer=tokenizer)

    def __repr__(self) -> str:
        return f"ProtocolBuilder({self.protocol.name!r}, version={self.version!r})"


PROMPTS: dict[str, PromptBuilder] = {name: ProtocolBuilder(p) for name, p in PROTOCOLS.items()}
PROMPT_VERSIONS: dict[str, str] = {name: p.version for name, p in PROTOCOLS.items()}


def build_prompt(builder: PromptBuilder, trial: Trial, tokenizer: Any) -> Prompt:
    """Call ``builder`` on ``trial``, with the tokenizer if it takes one."""
    if getattr(builder, "takes_tokenizer", False):
        return builder(trial, tokenizer=tokenizer)
    return builder(trial)


def prompt_version(name: str, builder: PromptBuilder) -> str:
    """The version recorded for protocol ``name``: the builder's ``version``, else its name."""
    version = getattr(builder, "version", None)
    label = getattr(builder, "__qualname__", type(builder).__name__)
    return str(version) if version is not None else f"{name}/{label}"
