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


def test_concept_ranks_read_each_direction_through_the_final_norm_and_unembedding(tiny_dirs):
    """The rank of a concept's first token (with or without a leading space) among the
    logits of its scaled direction, checked against the HF model's own final norm and
    ``lm_head`` (its bias included), counted as how many tokens score higher."""
    from types import SimpleNamespace

    import torch

    from mechintro.models import load_model
    from mechintro.organism.real_lm import concept_ranks

    model = load_model(tiny_dirs["llama"], backend="bridge")
    hf = model.original_model
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a bias that moves the ranks (the bridge shares the tensor)
        hf.lm_head.bias.copy_(3 * torch.randn(hf.lm_head.bias.shape, generator=g))
    words = ["cat", "zebra", "moon"]
    d = model.cfg.d_model
    unit = {w: torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0) for w in words}
    world = SimpleNamespace(heldout=words, vectors=unit, resid_norm=7.5)
    got = concept_ranks(model, world)
    tok = model.tokenizer
    for w in words:
        with torch.no_grad():
            logits = hf.lm_head(hf.model.norm(world.vectors[w] * world.resid_norm))
        ids = {tok.encode(p + w, add_special_tokens=False)[0] for p in (" ", "")}
        assert got[w] == min(int((logits > logits[i]).sum()) for i in ids), w
    assert any(v > 0 for v in got.values())
