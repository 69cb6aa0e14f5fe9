"""The 500-concept data of Macar et al.'s bias experiment: 50 Lindsey + 450 of ours, 400/100."""

from __future__ import annotations

import random

from mechintro.vectors import word_list


def test_extra_words_are_ours_unique_lowercase_and_disjoint_from_lindsey() -> None:
    extra = word_list("macar_extra")
    assert len(extra) == 450 and len(set(extra)) == 450
    assert all(w == w.lower() and w.isalpha() for w in extra)
    taken = {w.lower() for w in word_list("lindsey_concepts") + word_list("lindsey_baseline")}
    assert not taken & set(extra)


def test_split_is_the_recorded_seed_42_shuffle_and_disjoint() -> None:
    everything = word_list("lindsey_concepts") + word_list("macar_extra")
    order = list(everything)
    random.Random(42).shuffle(order)
    train, heldout = word_list("macar_train"), word_list("macar_heldout")
    assert (train, heldout) == (order[:400], order[400:])
    assert len(train) == 400 and len(heldout) == 100
    assert not set(train) & set(heldout)
    assert set(train) | set(heldout) == set(everything)
