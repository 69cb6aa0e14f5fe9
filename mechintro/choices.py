"""The named choices the options take: backends, vector methods, strength units, position
modes and bad-word policies.

Pure data, importing nothing heavy, so the command line lists them (``mechintro COMMAND
--help``) without loading torch. Each is used, and re-exported, by the module whose idea it
is: :mod:`mechintro.models` (backends), :mod:`mechintro.vectors` (methods),
:mod:`mechintro.inject` (units and position modes), :mod:`mechintro.word_checks` (policies).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    from mechintro.prompts import Prompt

#: the TransformerLens model classes: TransformerBridge (the real HF model) or HookedTransformer
Backend = Literal["bridge", "hooked"]
BACKENDS: tuple[str, ...] = ("bridge", "hooked")

#: what a word the tokenizer does not know (or a duplicate or zero vector) does: refuse or warn
OnBadWord = Literal["raise", "warn"]
ON_BAD_WORD: tuple[str, ...] = get_args(OnBadWord)

#: strength units: ``raw`` adds s·v, ``resid-norm`` adds s·resid_norm·v/‖v‖
UNITS = ("raw", "resid-norm")


class PositionMode(str, Enum):
    FROM_TRIAL = "from-trial"
    PROMPT_ONLY = "prompt-only"
    GENERATION_ONLY = "generation-only"
    SINGLE_TOKEN = "single-token"
    ALL = "all"
    SPAN = "span"
    BEFORE_TRIAL = "before-trial"

    @classmethod
    def parse(cls, value: str | PositionMode) -> PositionMode:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(m.value for m in cls)
            raise ValueError(f"unknown position mode {value!r}: use one of {valid}") from None


@dataclass(frozen=True)
class Method:
    """How one extraction method builds its prompts, and what it subtracts."""

    prompt_format: str  # "chat" (the model's chat template) or "text" (raw)
    template: str  # with a ``{w}`` placeholder
    baseline: str  # name of the default baseline word list
    normalise: bool

    def prompt(self, word: str) -> Prompt:
        from mechintro.prompts import Prompt

        text = self.template.replace("{w}", word)
        return Prompt.chat(text) if self.prompt_format == "chat" else Prompt.text(text)


METHODS: dict[str, Method] = {
    "lindsey": Method("chat", "Tell me about {w}", "lindsey_baseline", normalise=False),
    "fonseca": Method(
        "text", "Human: Tell me about {w}.\n\nAssistant:", "fonseca_baseline", normalise=True
    ),
}
