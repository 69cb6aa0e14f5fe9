"""Every study's example config runs end to end with ``mechintro run --small`` on the built-in
organisms, and its header names the study's real model for the user to swap in."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from mechintro.app.options import read_config
from mechintro.app.run_command import RECORD_FILE, main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

#: the model lines each study's header must hold (the study's own, or an open substitute)
MODELS: dict[str, tuple[str, ...]] = {
    "lindsey": ("google/gemma-3-27b-it",),
    "macar": (
        "google/gemma-3-27b-it",
        "allenai/Olmo-3-1125-32B",
        "allenai/Olmo-3.1-32B-Instruct-SFT",
        "allenai/Olmo-3.1-32B-Instruct-DPO",
        "allenai/Olmo-3.1-32B-Instruct",
    ),
    "godet": ("mistralai/Mistral-Small-Instruct-2409",),
    "fonseca": ("deepseek-ai/deepseek-llm-7b-chat",),
}


def test_every_study_has_an_example_naming_its_model():
    for study, models in MODELS.items():
        text = (EXAMPLES / f"{study}.toml").read_text("utf-8")
        header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
        for m in models:
            assert m in header, (study, m)
        assert re.search(r'^# model = "[^"]+"', header, re.MULTILINE), study
        assert "revision" in header, study
    lindsey = (EXAMPLES / "lindsey.toml").read_text("utf-8")
    assert "not public" in lindsey  # Claude: nothing to name, a substitute instead


@pytest.mark.parametrize("study", sorted(MODELS))
def test_example_runs_end_to_end_at_the_ci_size(study, tmp_path):
    config = EXAMPLES / f"{study}.toml"
    out = tmp_path / study
    assert main({"config": str(config), "out": str(out), "small": True}) == 0
    listed = read_config(config)["experiments"]
    names = [e.get("name", e["experiment"]) for e in listed]
    for name, entry in zip(names, listed):
        record = json.loads((out / name / RECORD_FILE).read_text("utf-8"))
        assert record["finished"] and record["small"], name
        assert record["experiment"] == entry["experiment"]
        table = pd.read_csv(out / name / record["table"])
        assert len(table) > 0, name
        assert (out / name / "report.html").is_file(), name
        if entry.get("preset"):
            assert record["preset"]["source"], name
    # rerunning finds every experiment finished: nothing is recomputed
    assert main({"config": str(config), "out": str(out), "small": True}) == 0
