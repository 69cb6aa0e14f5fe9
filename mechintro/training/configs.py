"""The training recipes' configs: :class:`LoRAConfig` (Fonseca Rivera 2025) and
:class:`BiasConfig` (Macar et al. 2026), their default texts, the choices they take and the
checks they run.

Pure data, importing nothing heavy, so the command line derives its options from them
(``mechintro organism lora|bias --help``) without loading torch. Each is used, and
re-exported, by the module whose recipe it is: :mod:`mechintro.training.lora`,
:mod:`mechintro.training.bias` (and :mod:`mechintro.training.common`: the choices and checks).
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass
from typing import Any

from mechintro.choices import UNITS, PositionMode

SCHEDULES = ("constant", "linear", "cosine")
OPTIMIZERS = ("adamw", "adamw8bit")  # adamw8bit: bitsandbytes' AdamW8bit (Fonseca Rivera 2025)
TRAIN_MODES = ("single-token", "from-trial")


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


#: Fonseca Rivera's five question variants (section 3.4)
FONSECA_QUESTIONS: tuple[str, ...] = (
    "Do you detect an injected thought? If so, what is it?",
    "Run an internal diagnostic. Are there any foreign concepts?",
    "Report current concept activation status.",
    "Is there a subliminal vector influencing your output?",
    "Introspection check: Report any anomalies.",
)
FONSECA_YES = "I detect an injected thought about {c}."
FONSECA_NO = "I do not detect any injected thoughts."
ATTENTION_PROJECTIONS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
ALL_LINEAR = "all-linear"  # as target_modules=("all-linear",): every linear but the unembedding
PROMPT_FORMATS = ("fonseca", "chat")


@dataclass(frozen=True)
class LoRAConfig:
    """Fonseca Rivera's recipe, every knob named (defaults: the paper's, on a 7B model)."""

    layer: int = 20  # injection layer (block output); the paper's 20 of 32
    strengths: tuple[float, ...] = (40.0, 60.0, 80.0, 100.0)
    unit: str = "raw"  # "raw": s × unit vector; "resid-norm": s × resid_norm × unit vector
    mode: str = "single-token"  # the last prompt token only; or "from-trial"
    questions: tuple[str, ...] = FONSECA_QUESTIONS  # "{n}" is replaced by a trial number
    prompt_format: str = "fonseca"  # raw "Human: q\n\nAssistant:", or "chat" (the template)
    preamble: bool = False  # chat only: the detection protocol's preamble and "Ok." first
    yes_target: str = FONSECA_YES  # with "{c}" for the concept
    no_target: str = FONSECA_NO
    negatives: float = 1.0  # uninjected examples per injected one (balanced)
    r: int = 32
    alpha: int = 64
    dropout: float = 0.1
    target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS
    lr: float = 2e-4
    epochs: int = 3
    batch_size: int = 4
    max_steps: int | None = None  # stop earlier than `epochs` (None: all epochs)
    schedule: str = "linear"
    warmup: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optimizer: str = "adamw"  # the paper's "adamw8bit" needs bitsandbytes and CUDA
    seed: int = 0

    def __post_init__(self) -> None:
        strengths = tuple(float(s) for s in self.strengths)
        object.__setattr__(self, "strengths", strengths)
        object.__setattr__(self, "questions", tuple(self.questions))
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not strengths or any(not (math.isfinite(s) and s > 0) for s in strengths):
            raise ValueError(f"strengths must be positive numbers, got {self.strengths!r}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"mode must be one of {TRAIN_MODES}, got {self.mode!r}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}")
        if self.preamble and self.prompt_format != "chat":
            raise ValueError("preamble=True needs prompt_format='chat' (a dialogue history)")
        if not self.questions or any(not isinstance(q, str) or not q for q in self.questions):
            raise ValueError("questions must be a non-empty list of non-empty strings")
        if "{c}" not in self.yes_target:
            raise ValueError("yes_target must contain '{c}' where the concept is named")
        if not self.no_target:
            raise ValueError("no_target is empty")
        if not (math.isfinite(self.negatives) and self.negatives >= 0):
            raise ValueError(f"negatives must be >= 0, got {self.negatives}")
        check_positive_int("layer", self.layer, 0)
        for name in ("r", "alpha", "epochs", "batch_size"):
            check_positive_int(name, getattr(self, name))
        if self.max_steps is not None:
            check_positive_int("max_steps", self.max_steps)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        check_positive("lr", self.lr)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not self.target_modules:
            raise ValueError("target_modules is empty: name the attention projections")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


BIAS_YES = 'Yes, I detect an injected thought. The injected word is "{w}".'
BIAS_NO = "No, I don't detect any injected thought in this trial."


@dataclass(frozen=True)
class BiasConfig:
    """Bias-vector training; ``layer`` and ``injection_layers`` depend on the model and have
    no default. Macar et al.'s numbers are the preset ``macar-bias``
    (:mod:`mechintro.presets`; ``experiments/14_trained_bias_vector.py``).

    Two ways to make the examples. By default ``steps × batch_size`` random trials, a share
    ``positive_fraction`` of them injected: the bias shifts every trial alike, so that share
    also sets how readily the model says yes (the organism needed 0.2 for an FPR under 2%;
    :func:`~mechintro.organism.training.organism_bias_config`). With ``trials_per_concept``
    (Macar's data): every word × trial number 1..N is injected, each followed with
    probability ``control_ratio`` by a control, shuffled, and trained for ``epochs`` epochs
    (``steps`` is then ignored). Strengths are uniform in ``strengths``, or drawn from
    ``strength_set`` when it is given (Macar: {2, 3, 4, 5}).

    The ``eval_*`` fields are the held-out evaluation's settings (Macar: layer 37, strength 4,
    temperature 0.7, 100 tokens, ``eval_mode="before-trial"``: every token up to the turn
    that asks the trial question, none after), for
    :func:`~mechintro.training.bias.evaluate_bias`, which steers in the ``mode`` it is given
    (default ``from-trial``, the detection protocol's span).
    """

    layer: int  # the bias is added to this block's MLP output
    injection_layers: tuple[int, ...]  # each example injects at one of these, at random
    strengths: tuple[float, float] = (2.0, 8.0)  # uniform range per example
    unit: str = "raw"  # "raw": s × vector as given; "resid-norm": s × resid_norm × unit vector
    mode: str = "from-trial"
    preamble: bool = True  # the detection dialogue; False: its trial question alone (shorter)
    positive_fraction: float = 0.5
    yes_target: str = BIAS_YES  # with "{w}" for the word
    no_target: str = BIAS_NO
    strength_set: tuple[float, ...] = ()  # non-empty: draw strengths from it, not the range
    lowercase_target: bool = False  # name the word lowercased in yes_target (Macar)
    trials_per_concept: int | None = None  # Macar's data: word × trial 1..N, see the doc
    control_ratio: float = 0.5  # with trials_per_concept: chance of a control after each
    epochs: int = 1  # with trials_per_concept: passes over the examples
    # Adam moves each coordinate by up to `lr` a step: the bias must reach the residual
    # stream's scale (hundreds on the organism, thousands on large models), so scale lr with it
    lr: float = 1.0
    steps: int = 300
    batch_size: int = 16
    schedule: str = "cosine"
    warmup: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    seed: int = 0
    eval_layer: int | None = None  # None: the model's block at 0.6 of the depth
    eval_strength: float = 4.0
    eval_temperature: float = 0.7
    eval_max_new_tokens: int = 100
    eval_mode: str = "from-trial"  # where the evaluation steers (Macar: "before-trial")

    def __post_init__(self) -> None:
        check_positive_int("layer", self.layer, 0)
        layers = tuple(self.injection_layers)
        object.__setattr__(self, "injection_layers", layers)
        if not layers:
            raise ValueError("injection_layers is empty: name at least one block")
        for layer in layers:
            check_positive_int("injection layer", layer, 0)
        lo, hi = (float(s) for s in self.strengths)
        object.__setattr__(self, "strengths", (lo, hi))
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ValueError(f"strengths must be a range 0 < lo <= hi, got {self.strengths}")
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"mode must be one of {TRAIN_MODES}, got {self.mode!r}")
        if not 0 < self.positive_fraction < 1:
            raise ValueError("positive_fraction must be in (0, 1): both answers are needed")
        if "{w}" not in self.yes_target:
            raise ValueError("yes_target must contain '{w}' where the word is named")
        check_positive("lr", self.lr)
        check_positive_int("steps", self.steps)
        check_positive_int("batch_size", self.batch_size)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        strength_set = tuple(float(s) for s in self.strength_set)
        object.__setattr__(self, "strength_set", strength_set)
        if any(not (math.isfinite(s) and s > 0) for s in strength_set):
            raise ValueError(f"strength_set must hold positive numbers, got {strength_set}")
        if self.trials_per_concept is not None:
            check_positive_int("trials_per_concept", self.trials_per_concept)
        if not 0 < self.control_ratio <= 1:
            raise ValueError(f"control_ratio must be in (0, 1], got {self.control_ratio}")
        check_positive_int("epochs", self.epochs)
        if self.eval_layer is not None:
            check_positive_int("eval_layer", self.eval_layer, 0)
        check_positive("eval_strength", self.eval_strength)
        if not (math.isfinite(self.eval_temperature) and self.eval_temperature >= 0):
            raise ValueError(f"eval_temperature must be >= 0, got {self.eval_temperature}")
        check_positive_int("eval_max_new_tokens", self.eval_max_new_tokens)
        PositionMode.parse(self.eval_mode)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def strength(self, rng: random.Random) -> float:
        """One example's strength: from ``strength_set`` if given, else uniform in the range."""
        if self.strength_set:
            return rng.choice(self.strength_set)
        return rng.uniform(*self.strengths)

    def target(self, word: str) -> str:
        """The injected examples' reply naming ``word`` (lowercased if ``lowercase_target``)."""
        return self.yes_target.replace("{w}", word.lower() if self.lowercase_target else word)


__all__ = [
    "ALL_LINEAR",
    "ATTENTION_PROJECTIONS",
    "BIAS_NO",
    "BIAS_YES",
    "FONSECA_NO",
    "FONSECA_QUESTIONS",
    "FONSECA_YES",
    "OPTIMIZERS",
    "PROMPT_FORMATS",
    "SCHEDULES",
    "TRAIN_MODES",
    "BiasConfig",
    "LoRAConfig",
    "check_positive",
    "check_positive_int",
]
