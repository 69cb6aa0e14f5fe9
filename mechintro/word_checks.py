"""Checks that concept words make distinct, meaningful vectors, before and after the forward.

A word the tokenizer does not know becomes its unknown token (every unknown word then gets
the same vector), two words that tokenize alike get identical vectors, and a vector can be
degenerate (zero or not finite: a contrastive pair whose sides tokenize alike). Each vector
method of :mod:`mechintro.vectors` collects what these checks find in one
:class:`Problems` and raises it as one ``ValueError`` naming the words and the fix, or, with
``on_bad_word="warn"``, warns and records each finding in the vector's ``problems``.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mechintro.choices import ON_BAD_WORD
from mechintro.prompts import Prompt, PromptBatch, encode


def unknown_words(tokenizer: Any, words: Iterable[str]) -> list[str]:
    """The words that ``tokenizer`` maps, in whole or in part, to its unknown token.

    Each word is tokenised alone, without special tokens. Byte-level tokenizers (GPT-2,
    Llama 3, Qwen, SmolLM2) read any text, so the list is empty; a word-level one, like the
    model organism's, knows only its own words (and lowercases: ``"Dust"`` is ``"dust"``).
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    return [w for w in words if unk in tokenizer(w, add_special_tokens=False).input_ids]


def same_key_groups(keys: Mapping[str, Hashable]) -> list[list[str]]:
    """Words that share a key (token ids, vector bytes), in groups of two or more."""
    by_key: dict[Hashable, list[str]] = defaultdict(list)
    for word, key in keys.items():
        by_key[key].append(word)
    return [ws for ws in by_key.values() if len(ws) > 1]


@dataclass
class Problems:
    """What one call's checks found: raised at once (``"raise"``) or warned and recorded.

    A finding names the words it concerns (their vectors record it) or ``None`` (every
    vector records it, e.g. unknown baseline words). :meth:`settle` raises all findings so
    far in one ``ValueError`` ending with ``fix``, or warns about each new one.
    """

    on_bad_word: str
    fix: str
    found: list[tuple[frozenset[str] | None, str]] = field(default_factory=list)
    warned: int = 0

    def __post_init__(self) -> None:
        if self.on_bad_word not in ON_BAD_WORD:
            raise ValueError(f"on_bad_word must be one of {ON_BAD_WORD}, got {self.on_bad_word!r}")

    def add(self, message: str, words: Iterable[str] | None = None) -> None:
        self.found.append((None if words is None else frozenset(words), message))

    def flagged(self) -> set[str]:
        return {w for words, _ in self.found for w in words or ()}

    def of(self, word: str) -> tuple[str, ...]:
        return tuple(msg for words, msg in self.found if words is None or word in words)

    def settle(self) -> None:
        if self.found and self.on_bad_word == "raise":
            raise ValueError("; ".join(msg for _, msg in self.found) + f". {self.fix}")
        for _, msg in self.found[self.warned :]:
            warnings.warn(f"{msg} (kept: on_bad_word='warn')", UserWarning, stacklevel=3)
        self.warned = len(self.found)

    def check_vectors(self, vectors: Mapping[str, Tensor]) -> None:
        """Zero or non-finite vectors, and identical ones, among the words not yet flagged."""
        flagged, fine = self.flagged(), {}
        for w, v in vectors.items():
            if w in flagged:
                continue
            n = float(torch.linalg.vector_norm(v))
            if n == 0.0 or not math.isfinite(n):
                self.add(f"the vector of {w!r} is degenerate (norm {n})", [w])
            else:
                fine[w] = v.numpy().tobytes()
        for group in same_key_groups(fine):
            self.add(f"{group} have identical vectors", group)


def prompt_ids(tokenizer: Any, prompts: Sequence[Prompt] | PromptBatch) -> list[tuple[int, ...]]:
    """Each prompt's token ids, exactly as the forward pass reads them (padding dropped)."""
    batch = prompts if isinstance(prompts, PromptBatch) else encode(tokenizer, prompts)
    return [tuple(row[int(p) :].tolist()) for row, p in zip(batch.input_ids, batch.n_pad)]


def check_tokens(
    problems: Problems,
    tokenizer: Any,
    prompt: Callable[[str], Prompt],
    words: list[str],
    base: list[str],
    encoded: PromptBatch | None = None,
) -> None:
    """The tokenizer-only checks of concept ``words`` against baseline words ``base``, each
    read in its ``prompt``: no forward pass needed. ``encoded``: those prompts (``words`` then
    ``base``) already encoded, when the caller has them (else they are encoded here)."""
    unk = getattr(tokenizer, "unk_token", None)
    bad = unknown_words(tokenizer, words)
    if bad:
        problems.add(
            f"the tokenizer does not know the words {bad} (each reads as {unk!r}, so unknown "
            "words share one vector)",
            bad,
        )
    distinct = list(dict.fromkeys(base))
    bad = unknown_words(tokenizer, distinct)
    if bad:
        problems.add(
            f"{len(bad)} of the {len(distinct)} distinct baseline words are unknown to the "
            f"tokenizer (they read as {unk!r}): {bad}"
        )
    ids = prompt_ids(tokenizer, [prompt(w) for w in words + base] if encoded is None else encoded)
    word_ids = dict(zip(words, ids))
    for group in same_key_groups(word_ids):
        problems.add(f"{group} tokenize identically, so their vectors would be identical", group)
    base_ids = set(ids[len(words) :])
    for w, i in word_ids.items():
        if base_ids == {i}:
            problems.add(f"{w!r} tokenizes like every baseline word: its vector would be zero", [w])
