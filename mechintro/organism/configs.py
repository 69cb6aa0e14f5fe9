"""The organisms' configs: what the demo measures (``mechintro demo``) and what determines
the organisms (``mechintro organism build``). Pure data, importing nothing heavy, so the
command line derives its options without loading torch. What uses them:
:mod:`mechintro.organism.demo` and :mod:`mechintro.organism.train`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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
