"""The transcoder trainer's config (:class:`TrainConfig`), pure data importing nothing heavy,
so ``mechintro organism transcoders --help`` lists its fields without loading torch. Used, and
re-exported, by :mod:`mechintro.analysis.transcoders.train`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained transcoder (recorded in its config)."""

    d_sae: int = 2048  # number of features
    k: int = 32  # mean active features per token (BatchTopK)
    steps: int = 3000
    batch_size: int = 1024  # tokens per step
    lr: float = 2e-3  # Adam, linear warm-up then cosine decay to 10%
    warmup: int = 100
    skip: bool = True  # learn an affine skip A (initialised by least squares)
    aux_k: int = 128  # AuxK: top dead features used on the residual
    aux_coef: float = 1 / 32
    dead_steps: int = 200  # silent this many steps: dead
    threshold_decay: float = 0.99  # EMA of the smallest kept activation -> θ
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"k must be in 1..d_sae ({self.d_sae}), got {self.k}")
        for name in ("d_sae", "steps", "batch_size", "aux_k", "dead_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


__all__ = ["TrainConfig"]
