"""The sweep's memory plan counts the shared preamble once: detection prompts of one length
share every token before the one preceding ``Trial n`` (where from-trial steering starts),
which generation runs once, for one row (mechintro.generation.shared_prefix)."""

from __future__ import annotations

import pytest

from mechintro.experiments.protocols.detection import detection_prompt
from mechintro.experiments.sweeps import SweepSpec, load_runs, run_sweep
from mechintro.generation import shared_prefix
from mechintro.models import load_model
from mechintro.prompts import encode


@pytest.fixture(scope="module")
def llama(tiny_dirs):
    return load_model(tiny_dirs["llama"])


def _memory(model, tmp_path, **changes):
    spec = SweepSpec(
        concepts=("Dust", "Milk"),
        layers=(1,),
        trial_numbers=(1, 2),
        n_controls=2,
        max_new_tokens=2,
        baseline=("Sand", "Fog"),
        readout=False,
        **changes,
    )
    run_sweep(model, spec, tmp_path, batch_size="auto", progress=False)
    (run,) = load_runs(tmp_path)
    return run["ranks"][0]["memory"]


def test_the_plan_counts_the_shared_preamble_once(llama, tmp_path):
    batch = encode(llama.tokenizer, [detection_prompt(n) for n in (1, 2)])
    assert int(batch.n_pad.max()) == 0  # one length: generation shares the preamble
    shared = shared_prefix(batch, int(batch.position("trial").min()))
    assert shared > 0
    memory = _memory(llama, tmp_path / "from-trial")
    assert (memory["prompt_tokens"], memory["shared_tokens"]) == (batch.length, shared)
    # steered from the first token: nothing is shared, the whole prompt is planned per row
    assert _memory(llama, tmp_path / "all", modes=("all",))["shared_tokens"] == 0
