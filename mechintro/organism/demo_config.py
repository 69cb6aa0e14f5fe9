"""The demo's options (``mechintro demo``): pure data, importing nothing heavy, so the command
line derives its options without loading torch. The demo itself: :mod:`mechintro.organism.demo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
