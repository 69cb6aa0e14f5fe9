"""Token-level pieces of generation and readouts: the Yes/No answer tokens and Godet's belief
over them, and sampling noise that depends only on ``(seed, step, token)``.

:func:`gumbel_noise` makes each row's sampling reproducible alone or in any batch: a
counter-based hash (splitmix64) of ``(seed + row, step, token)`` gives uniform noise, and
``argmax(logits / T + G)`` with Gumbel noise ``G`` samples exactly from ``softmax(logits / T)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

YES_VARIANTS = ("Yes", " Yes", "yes", " yes", "YES", " YES")
NO_VARIANTS = ("No", " No", "no", " no", "NO", " NO")


def first_token_ids(tokenizer: Any, words: Sequence[str]) -> list[int]:
    """The first token of each word (as it would continue the prompt, no BOS).

    One call of the tokenizer for all the words (each word's ids are those it gets alone).
    """
    words = list(words)
    encoded = tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
    ids = []
    for w, enc in zip(words, encoded, strict=True):
        if not enc:
            raise ValueError(f"{w!r} tokenizes to nothing")
        ids.append(int(enc[0]))
    return ids


@dataclass(frozen=True)
class Belief:
    """Godet's Yes/No belief for one tokenizer: ``b = logsumexp(logits[Yes variants]) −
    logsumexp(logits[No variants])`` over the variants' first tokens, deduplicated (defined even
    when neither answer is the top token). The one definition :func:`readout`, patching's
    ``yes_no_gap`` and the circuits' readouts share.

    Example: ``Belief.of(tokenizer)(logits)  # [batch] from [batch, vocab]``.
    """

    yes: tuple[int, ...]
    no: tuple[int, ...]

    @classmethod
    def of(
        cls, tokenizer: Any, yes: Sequence[str] = YES_VARIANTS, no: Sequence[str] = NO_VARIANTS
    ) -> Belief:
        return cls(
            tuple(sorted(set(first_token_ids(tokenizer, yes)))),
            tuple(sorted(set(first_token_ids(tokenizer, no)))),
        )

    def __call__(self, logits: Float[Tensor, "batch vocab"]) -> Float[Tensor, " batch"]:
        return logits[:, list(self.yes)].logsumexp(-1) - logits[:, list(self.no)].logsumexp(-1)


def _mix(x: Tensor) -> Tensor:
    """splitmix64 finaliser on int64 (logical shifts emulated), vectorised."""

    def shr(v: Tensor, k: int) -> Tensor:
        return (v >> k) & ((1 << (64 - k)) - 1)

    x = (x ^ shr(x, 30)) * -4658895280553007687  # 0xBF58476D1CE4E5B9 as int64
    x = (x ^ shr(x, 27)) * -7723592293110705685  # 0x94D049BB133111EB as int64
    return x ^ shr(x, 31)


def gumbel_noise(seeds: Tensor, step: int, vocab: int) -> Float[Tensor, "batch vocab"]:
    """Gumbel(0, 1) noise that depends only on (seed, step, token id)."""
    golden = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64
    tokens = torch.arange(vocab, device=seeds.device, dtype=torch.long)
    x = _mix(seeds[:, None] * golden + step * 1_000_003)
    x = _mix(x + tokens[None, :] * golden)
    u = (((x >> 11) & ((1 << 53) - 1)).double() + 0.5) / float(1 << 53)
    return -torch.log(-torch.log(u))
