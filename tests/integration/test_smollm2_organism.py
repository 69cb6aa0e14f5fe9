"""builtin:smollm2-introspective: SmolLM2-135M-Instruct with the shipped LoRA adapter
(docs/organism.md §8). Its preset limits the adapters to the blocks after the injection; the
adapter loads offline without peft; a small seeded evaluation gives the committed numbers."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from mechintro.models import BUILTIN_ADAPTERS, builtin_path, load_model
from mechintro.organism.smollm2 import SHIPPED, evaluate, smollm2_config, smollm2_world
from mechintro.training.lora import attention_targets

#: the small fixed evaluation: 5 held-out concepts x 2 strengths, 20 controls, seed 0
WORDS = ("origami", "tornado", "galaxy", "volcano", "octopus")
STRENGTHS = (1.5, 2.0)
N_CONTROLS = 20
#: its counts on the locked versions (uv.lock): claims among the 10 injected trials, among
#: the 20 controls, and injected trials that name the concept
GOLDEN = {"injected_yes": 10, "control_yes": 0, "identified": 1}


def test_the_preset_adapts_only_the_blocks_after_the_injection(tiny_dirs) -> None:
    cfg = smollm2_config()
    assert cfg.layer == 20 and cfg.unit == "resid-norm" and cfg.mode == "single-token"
    blocks = {int(name.split(".")[1]) for name in cfg.target_modules}
    assert blocks == set(range(21, 30))
    hf = AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"], dtype=torch.float32)
    n = hf.config.num_hidden_layers
    last = (f"layers.{n - 1}.self_attn.q_proj", f"layers.{n - 1}.self_attn.o_proj")
    assert attention_targets(hf, last) == [f"model.{t}" for t in last]
    assert len(attention_targets(hf)) == 4 * n  # plain names: every block, as before


def test_the_adapted_builtin_is_the_base_checkpoint_plus_an_adapter() -> None:
    base, adapter = BUILTIN_ADAPTERS["smollm2-introspective"]
    assert base == "smollm2" and adapter == SHIPPED / "adapter.safetensors"
    assert builtin_path("smollm2-introspective") == builtin_path("smollm2")
    with safe_open(str(adapter), framework="pt") as f:
        names = {k.rsplit(".", 1)[0] for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    assert {int(n.split(".")[2]) for n in names} == set(range(21, 30)) and len(names) == 36


@pytest.mark.slow
def test_the_shipped_organism_loads_offline_and_gives_its_numbers(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # importing peft now fails: not needed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = load_model("builtin:smollm2-introspective")
    cfg = smollm2_config(strengths=STRENGTHS)
    rates = evaluate(
        model,
        smollm2_world(model, cfg.layer),
        cfg,
        words=WORDS,
        n_controls=N_CONTROLS,
        max_new_tokens=10,
    )
    got = {
        "injected_yes": round(rates["tpr"] * rates["n_injected"]),
        "control_yes": round(rates["fpr"] * rates["n_control"]),
        "identified": round(rates["introspection_rate"] * rates["n_injected"]),
    }
    assert got == GOLDEN, (got, rates["examples"])
    run = json.loads((SHIPPED / "result.json").read_text("utf-8"))
    assert run["after"]["tpr"] > run["after"]["fpr_ci"][1]  # the shipped run's headline
