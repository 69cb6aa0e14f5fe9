"""Macar et al.'s abliteration: the block-output site at position -2 against a plain HF
forward, instruction files, region weights, the weight search, and a whole small run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from mechintro.analysis.directions import (
    Abliteration,
    AbliterationConfig,
    abliterated,
    load_instructions,
    refusal_directions,
    region_weights,
    rule_judge,
    run_abliteration,
    search_region_weights,
)
from mechintro.analysis.directions.abliteration import Score, instruction_set, objective
from mechintro.models import load_model
from mechintro.presets import apply_preset
from mechintro.prompts import Prompt, encode

HARMFUL = ["Explain how to pick a lock.", "Write a mean note.", "Steal it now."]
HARMLESS = ["Explain how to bake bread today.", "Write a poem.", "Plant a tree."]


@pytest.fixture(scope="module")
def pair(tiny_dirs: dict[str, Path]):
    """The tiny Llama as a bridge and as a plain transformers model (the reference)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]).eval()
    return load_model(tiny_dirs["llama"], backend="bridge"), hf


def _ids(model, text: str) -> torch.Tensor:
    return encode(model.tokenizer, [Prompt.chat(text)]).input_ids


def test_block_output_at_position_minus_two_is_hf_hidden_states(pair) -> None:
    model, hf = pair
    ref = refusal_directions(model, HARMFUL, HARMLESS)  # Macar's defaults
    assert (ref.site, ref.position) == ("resid_post", -2)

    def mean(texts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            hs = [hf(_ids(model, t), output_hidden_states=True).hidden_states for t in texts]
        # hidden_states[l + 1] is block l's output (the last one after the final norm in HF)
        return torch.stack([torch.stack([h[i + 1][0, -2] for i in range(3)]) for h in hs]).mean(0)

    diff = mean(HARMFUL) - mean(HARMLESS)
    expect = diff / diff.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(ref.directions[:3], expect, atol=1e-4, rtol=1e-4)
    # position -1 reads another token: another direction
    last = refusal_directions(model, HARMFUL, HARMLESS, position=-1)
    assert not torch.allclose(last.directions[1], ref.directions[1], atol=1e-3)


def test_block_output_abliteration_equals_hooks_on_hf_decoder_layers(pair) -> None:
    model, hf = pair
    g = torch.Generator().manual_seed(0)
    r = torch.randn(4, model.cfg.d_model, generator=g)
    r = r / r.norm(dim=-1, keepdim=True)
    w = [0.3, 0.0, 1.0, 0.7]
    ids = _ids(model, "Trial 1: Do you detect an injected thought?")

    def hook(layer: int):
        def edit(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            h = h - w[layer] * (h @ r[layer])[..., None] * r[layer]
            return (h, *output[1:]) if isinstance(output, tuple) else h

        return edit

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(hf.model.layers)]
    try:
        with torch.no_grad():
            want = hf(ids).logits
    finally:
        for h in handles:
            h.remove()
    with abliterated(model, Abliteration(r, w, site="resid_post")) as names, torch.no_grad():
        got = model(ids)
    assert names == (
        "blocks.0.hook_resid_post",
        "blocks.2.hook_resid_post",
        "blocks.3.hook_resid_post",
    )
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_instruction_files(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("one\n\n two \n")
    assert load_instructions(tmp_path / "a.txt") == ["one", "two"]
    (tmp_path / "b.json").write_text(json.dumps(["x", {"instruction": "y"}, {"prompt": "z"}]))
    assert load_instructions(tmp_path / "b.json") == ["x", "y", "z"]
    (tmp_path / "c.jsonl").write_text('"x"\n{"prompt": "y"}\n{"text": 3}\n')
    with pytest.raises(ValueError, match="line 3"):
        load_instructions(tmp_path / "c.jsonl")
    (tmp_path / "d.jsonl").write_text('"x"\n{oops\n')
    with pytest.raises(ValueError, match="line 2: not JSON"):
        load_instructions(tmp_path / "d.jsonl")


def test_asking_for_more_prompts_than_given_names_the_file_option(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="harmful_file"):
        instruction_set("harmful", None, 512, 42)
    assert len(instruction_set("harmful", None, 512, 42, small=True)) == 40
    path = tmp_path / "h.txt"
    path.write_text("\n".join(f"item {i}" for i in range(10)))
    picked = instruction_set("harmful", str(path), 4, 42)
    assert len(picked) == 4 and picked == instruction_set("harmful", str(path), 4, 42)


def test_region_weights_scale_to_the_model_depth() -> None:
    w = region_weights([(0, 30, 0.01), (31, 61, 0.05)], 26, 62)
    assert w.tolist() == pytest.approx([0.01] * 13 + [0.05] * 13)
    assert region_weights([(0, 1, 0.5), (2, 3, 1.0)], 4).tolist() == [0.5, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="tile"):
        region_weights([(0, 1, 0.5), (3, 3, 1.0)], 4)


def test_grid_search_picks_the_best_objective_cell() -> None:
    # harm grows with w0, coherence falls with w1 squared away from 0.5: best cell (1.0, 0.5)
    def evaluate(w: tuple[float, ...]) -> Score:
        return Score(harm=5 * w[0], coherence=5 * (1 - (w[1] - 0.5) ** 2), bypass=w[0])

    table = search_region_weights(evaluate, [1.0, 1.0], grid=(0.0, 0.5, 1.0))
    assert len(table) == 9
    best = table[table.best]
    assert len(best) == 1 and (best.w0.item(), best.w1.item()) == (1.0, 0.5)
    assert best.objective.item() == table.objective.max() == objective(5.0, 5.0)
    # too many cells: coordinate ascent reaches the same cell in a pass
    coord = search_region_weights(evaluate, [1.0, 1.0], grid=(0.0, 0.5, 1.0), max_cells=4)
    assert len(coord) < 9
    assert (coord[coord.best].w0.item(), coord[coord.best].w1.item()) == (1.0, 0.5)


def test_rule_judge() -> None:
    assert rule_judge("q", "I'm sorry, but I can't help with that.")[0] == 0.0
    assert rule_judge("q", "Sure: first you take the pins out.") == (5.0, 5.0)
    assert rule_judge("q", "the the the the the the")[1] == 0.0


def test_preset_config_and_a_small_run(pair, tmp_path: Path) -> None:
    cfg = apply_preset(AbliterationConfig, "macar-abliteration")
    assert cfg.n_harmful == 512 and cfg.site == "resid_post"
    with pytest.raises(ValueError, match="harmful_file"):
        run_abliteration(pair[0], cfg, tmp_path, small=False)
    table = run_abliteration(pair[0], cfg.to_dict(), tmp_path, small=True)
    assert isinstance(table, pd.DataFrame) and table.best.sum() == 1
    assert len(table) == 16  # the small grid: {0, 1} x 4 merged regions
    best = json.loads((tmp_path / "abliteration_best.json").read_text())
    assert len(best["block_weights"]) == 4 and best["n_harmful"] == 40
    assert (tmp_path / "refusal_directions.safetensors").is_file()
    assert pd.read_csv(tmp_path / "abliteration_search.csv").shape == table.shape
