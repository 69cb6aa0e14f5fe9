"""Transient single-token injection (Fonseca Rivera 2025; docs/protocols.md §2, §8).

The concept vector is added at one position only, the last prompt token, during one forward
pass: nothing is added to the earlier prompt or to the reply (``mode="single-token"``). The
prompt is the detection dialogue (:mod:`mechintro.experiments.protocols.variants`, ``original``) in
the chat template (``transient``) or in Fonseca Rivera's raw ``Human: ...`` / ``Assistant:``
format (``transient/fonseca``), where the last prompt token is the ``:`` of ``Assistant:``.

Example::

    from mechintro.experiments.protocols.transient import transient
    p = transient("fonseca")
    batch = encode(model.tokenizer, [p.prompt(1)])
    with injected(model, p.injection(layer=20, vector=v, strength=40.0), batch) as log:
        out = generate(model, batch, max_new_tokens=40)
    log.steered_positions()  # [[batch.length - 1]]
"""

from __future__ import annotations

from typing import Any

from mechintro.experiments.protocols.base import PromptProtocol
from mechintro.experiments.protocols.formats import get_format
from mechintro.experiments.protocols.variants import VARIANTS
from mechintro.prompts import Prompt

FORMATS: tuple[str, ...] = ("chat", "fonseca")


def transient(prompt_format: str = "chat") -> PromptProtocol:
    """The transient protocol in ``prompt_format`` (``chat`` or ``fonseca``)."""
    if prompt_format not in FORMATS:
        raise ValueError(f"the transient protocol's formats are {FORMATS}, got {prompt_format!r}")
    fmt, var = get_format(prompt_format), VARIANTS["original"]

    def build(trial: int, concept: str | None, tokenizer: Any = None) -> Prompt:
        return fmt.prompt(var.dialogue(trial), tokenizer=tokenizer)

    return PromptProtocol(
        "transient" if prompt_format == "chat" else f"transient/{prompt_format}",
        build,
        (*var.texts, *fmt.texts),
        mode="single-token",
        start="last",
        description=f"Fonseca Rivera's transient injection at the last prompt token ({fmt.name})",
        turn_markers=fmt.turn_markers,
    )
