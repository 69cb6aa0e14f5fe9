"""Prompt builders of a sweep: every registered protocol by name, plus the caller's own.

A builder turns a :class:`~mechintro.experiments.sweeps.spec.Trial` into a
:class:`~mechintro.prompts.Prompt`. :data:`PROMPTS` holds one per protocol of
:data:`mechintro.experiments.protocols.PROTOCOLS` (``detection``, ``forced``, the variants, the
dialogue formats, ``transient``, ``intention``, ...); ``run_sweep(prompts={name: builder})`` adds or
overrides others: a plain ``(Trial) -> Prompt`` function, whose ``version`` attribute, if
any, is recorded with each trial.

:func:`without_chat_template` adapts a spec to a base checkpoint whose tokenizer has no chat
template: every protocol rendered through the template becomes its raw-text counterpart
(``detection`` → ``detection/raw``, ``transient`` → ``transient/fonseca``) and a vector method
whose prompts need the template becomes one written as raw text (``lindsey`` → ``fonseca``),
with a note that the sweep logs and records (``spec.json``: ``notes``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from mechintro.experiments.protocols import PROTOCOLS, PromptProtocol
from mechintro.experiments.sweeps.spec import SweepSpec, Trial
from mechintro.prompts import Prompt
from mechintro.vectors import METHODS

logger = logging.getLogger(__name__)

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


def has_chat_template(tokenizer: Any) -> bool:
    """The tokenizer has a chat template (a base checkpoint's usually has none)."""
    return bool(getattr(tokenizer, "chat_template", None))


def renders_chat(protocol: PromptProtocol) -> bool:
    """The protocol's prompts go through the chat template."""
    if protocol.needs_tokenizer:
        return True
    return protocol.prompt(1, concept="probe").raw is None


def raw_counterpart(name: str) -> str | None:
    """The registered raw-text form of protocol ``name`` (itself if it is raw), or None."""
    protocol = PROTOCOLS[name]
    if not renders_chat(protocol):
        return name
    base = name.partition("/")[0]
    tried = (f"{base}/raw", f"{base}/fonseca")
    return next((t for t in tried if t in PROTOCOLS and not renders_chat(PROTOCOLS[t])), None)


def without_chat_template(spec: SweepSpec, tokenizer: Any) -> tuple[SweepSpec, str | None]:
    """``spec`` as it runs on a tokenizer without a chat template, and what was changed.

    Unchanged (note None) when the tokenizer has a template or nothing needs one. Otherwise
    every protocol that renders through the template becomes its raw-text counterpart
    (:func:`raw_counterpart`) and a ``chat`` vector method the first raw-text one of
    :data:`mechintro.vectors.METHODS` (``fonseca``); the note, "no chat template: raw format,
    method ...", says what changed. A protocol with no raw form (``intention``) is refused.

    Example::

        spec, note = without_chat_template(spec, model.tokenizer)   # note: None or the change
    """
    if has_chat_template(tokenizer):
        return spec, None
    changed: dict[str, str] = {}
    for name in spec.protocols:
        if name not in PROTOCOLS:
            continue  # the caller's own builder: its prompts are its business
        raw = raw_counterpart(name)
        if raw is None:
            raise ValueError(
                f"the tokenizer has no chat template and protocol {name!r} has no raw-text "
                "form: drop it from the sweep, or set tokenizer.chat_template"
            )
        if raw != name:
            changed[name] = raw
    method = spec.method
    if METHODS[method].prompt_format == "chat":
        method = next(m for m, v in METHODS.items() if v.prompt_format == "text")
    if not changed and method == spec.method:
        return spec, None
    protocols = tuple(dict.fromkeys(changed.get(p, p) for p in spec.protocols))
    new = dataclasses.replace(spec, protocols=protocols, method=method)
    parts = [f"{a} → {b}" for a, b in changed.items()]
    if method != spec.method:
        parts.append(f"vector method {spec.method} → {method}")
    note = f"no chat template: raw format, method {method} ({'; '.join(parts)})"
    return new, note
