"""The circuit of builtin:smollm2-introspective (docs/organism.md §8): the shipped transcoders
fit the size budget and belong to the shipped adapter; spliced into the model they leave its
logits as they were; a small seeded circuit run gives its committed headline numbers."""

from __future__ import annotations

import hashlib
import json
import sys

import pytest
import torch

from circuits.trace import forward, readouts, zero_features
from mechintro.analysis.transcoders import splice
from mechintro.experiments.protocols.detection import detection_prompt
from mechintro.inject import Injection, injected
from mechintro.models import load_model, tokenizer_of
from mechintro.organism.smollm2 import SHIPPED, smollm2_world
from mechintro.organism.smollm2_circuit import (
    LAYERS,
    SMOLLM2_TRANSCODER_CONFIG,
    TRANSCODERS,
    smollm2_circuits,
    smollm2_transcoders,
)
from mechintro.prompts import encode

#: everything shipped for the circuit must stay within this (the repository's size budget)
MAX_BYTES = 6_000_000
#: the small seeded run: the first 2 held-out concepts, one steering graph
N_CONCEPTS, N_GRAPHS, STRENGTH = 2, 1, 1.0
#: its headline numbers on the locked versions (uv.lock), one CPU thread
GOLDEN = {
    "n_gates": 27,
    "b_steered": 17.916767120361328,
    "b_ablated": 7.943955421447754,
    "delta": 18.454669952392578,
    "explained_by_features": 24.401168823242188,
    "graph_share": 1.0279468488497103,
}


def test_the_shipped_transcoders_fit_the_budget_and_match_the_adapter() -> None:
    files = [p for p in TRANSCODERS.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES
    assert {p.suffix for p in files} == {".json", ".safetensors"}
    tcs = smollm2_transcoders()
    assert sorted(tcs) == list(LAYERS)
    for tc in tcs.values():
        assert (tc.d_in, tc.d_sae, tc.d_out) == (576, SMOLLM2_TRANSCODER_CONFIG.d_sae, 576)
    fvu = json.loads((TRANSCODERS / "fvu.json").read_text("utf-8"))
    digest = hashlib.sha256((SHIPPED / "adapter.safetensors").read_bytes()).hexdigest()[:16]
    assert fvu["adapter_sha256"] == digest, "retrain: python -m mechintro.organism.smollm2_circuit"
    assert set(fvu["layers"]) == {str(L) for L in LAYERS}


@pytest.mark.slow
def test_the_spliced_model_is_the_model_and_a_small_run_gives_its_numbers(
    monkeypatch, tmp_path
) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    model = load_model("builtin:smollm2-introspective", dtype=torch.float32)
    world = smollm2_world(model, 20, "fonseca_heldout")  # the held-out concepts' vectors only
    tcs = smollm2_transcoders()
    tok = tokenizer_of(model)
    concept = world.heldout[0]
    batch = encode(tok, [detection_prompt(1)])
    inj = Injection(20, world.vectors[concept], STRENGTH, mode="single-token",
                    unit="resid-norm", resid_norm=world.resid_norm)  # fmt: skip
    zero = {L: list(range(tc.d_sae)) for L, tc in tcs.items()}
    with torch.no_grad():
        plain = forward(model, batch)
        with injected(model, inj, batch):
            steered = forward(model, batch)
            with splice(model, tcs):
                spliced = forward(model, batch)
            with splice(model, tcs, edit=zero_features(zero)):
                no_features = forward(model, batch)
    # the error terms close every transcoder: the spliced model is the model
    assert (spliced - steered).abs().max() < 1e-3
    # and the features carry the MLPs' output (zeroing them all moves the logits)
    assert (no_features - steered).abs().max() > 1.0

    metrics, _ = smollm2_circuits(
        tmp_path,
        model=model,
        world=world,
        strength=STRENGTH,
        n_concepts=N_CONCEPTS,
        n_graphs=N_GRAPHS,
    )
    g = metrics["graph"]
    index = json.loads((tmp_path / "viewer" / "graph-metadata.json").read_text("utf-8"))
    assert (tmp_path / "viewer" / f"smollm2-introspective-{concept}.json").is_file(), index
    # the graph's root change is the real model's change of the Yes - No logit gap
    pos = batch.position("last")
    gap = [readouts(model, logits, pos)[0].item() for logits in (plain, steered)]
    assert g["concept"] == concept
    assert g["delta"] == pytest.approx(gap[1] - gap[0], abs=1e-2)
    got = {
        "n_gates": sum(metrics["gates_per_layer"].values()),
        "b_steered": metrics["gate_ablation"]["b_steered"],
        "b_ablated": metrics["gate_ablation"]["b_ablated"],
        "delta": g["delta"],
        "explained_by_features": g["explained_by_features"],
        "graph_share": metrics["headline"]["graph_share"],
    }
    print(json.dumps(got))  # the values to commit as GOLDEN after a deliberate change
    assert got == pytest.approx(GOLDEN, rel=1e-3, abs=1e-3)
