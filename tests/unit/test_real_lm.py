"""The demo's real-LM section: which concept a claim names, and the before/after table."""

from __future__ import annotations

from mechintro.organism.real_lm import detection_table, named_concepts


def test_a_claim_names_a_heldout_a_training_or_another_word():
    replies = [
        "Yes, I detect an injected thought about origami.",
        "Yes, I detect an injected thought about Volcanoes.",  # plural, capitalised
        "Yes, I detect an injected thought about rocket.",
        "Yes, I detect an injected thought about drawing lip",
        "Yes, I detect an injected thought about.",
        "Yes.",
    ]
    got = named_concepts(replies, heldout=["origami", "volcano"], train=["rocket"])
    assert got == {"heldout": 2, "train": 1, "other": 3}


def test_the_table_gives_identification_among_claims_with_its_interval():
    def side(tpr, intro):
        return {
            "tpr": tpr,
            "tpr_ci": [0.0, 1.0],
            "fpr": 0.01,
            "fpr_ci": [0.0, 0.04],
            "n_control": 200,
            "n_injected": 80,
            "introspection_rate": intro,
        }

    metrics = {"detection": {"before": side(0.0, 0.0), "after": side(1.0, 0.075)}}
    table = detection_table(metrics)
    assert list(table["identification | claim"]) == ["–", "0.075 [0.035, 0.154]"]
    assert list(table["n injected"]) == [80, 80]
