"""The demo on its default settings: every required metric, and the headline numbers equal to
the committed golden values (tests/golden/demo.json) within their stated tolerance; the
README's tables are exactly the ones made from that file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from golden.golden import GOLDEN, drift, readme_tables

pytestmark = pytest.mark.slow

README = Path(__file__).parents[2] / "README.md"
REQUIRED = (
    "tpr",
    "fpr",
    "identification",
    "identification_category",
    "introspection_rate",
    "n_injected",
    "n_control",
    "control_flip_rate",
    "specificity",
)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, dict[str, Any]]:
    from mechintro.organism.demo import DemoConfig, run_demo

    out = tmp_path_factory.mktemp("demo")
    cfg = DemoConfig(out=str(out))  # the README's command: every default
    run_demo(cfg)
    return cfg, out, json.loads((out / "metrics.json").read_text())


def test_demo_matches_the_golden_numbers(demo) -> None:
    _, _, metrics = demo
    golden = json.loads(GOLDEN.read_text("utf-8"))
    versions = metrics["generation"]["versions"]
    moved = drift(golden, metrics)
    assert not moved, (
        f"the demo drifted from {GOLDEN.name} (golden versions {golden['versions']}, "
        f"this run {versions}):\n" + "\n".join(moved)
    )


def test_readme_shows_the_golden_tables() -> None:
    readme = README.read_text("utf-8")
    for table in readme_tables(json.loads(GOLDEN.read_text("utf-8"))):
        assert table in readme, f"paste into the README:\n{table}"


def test_demo_writes_every_required_metric(demo) -> None:
    cfg, out, metrics = demo
    assert metrics["injection_layer"] == 3 and metrics["wall_seconds"] > 0
    assert metrics["parity_ok"], metrics["parity"]
    assert metrics["vectors"]["frozen_layers_max_diff"] == 0.0  # phase 2 froze blocks 0..3
    for organism in ("base", "introspective"):
        assert metrics[organism]["best_strength"] in cfg.strengths
        for split in ("train", "heldout"):
            entry = metrics[organism][split]
            assert set(REQUIRED) <= set(entry), (organism, split)
            assert entry["n_control"] == cfg.n_controls
    fvu = metrics["transcoders"]["fvu"]
    assert set(fvu) == {"3", "4", "5"} and all(0 <= v <= 0.15 for v in fvu.values())
    for method in ("lora", "bias"):  # the shipped adapter and bias teach the base organism
        held = metrics["training"][method]["heldout"]
        assert held["before"]["tpr"] == 0.0 and held["before"]["n_control"] == cfg.n_controls
        assert held["after"]["tpr"] > 0.1 and held["after"]["fpr"] <= 0.02, (method, held)
    lora = metrics["training"]["lora"]["heldout"]["after"]
    assert lora["tpr"] >= 0.8 and lora["fpr"] == 0.0
    circ = metrics["circuits"]  # issue 6's targets, on the introspective organism
    assert circ["gate_ablation"]["relative_drop"] >= 0.25
    assert circ["gate_ablation"]["control_unchanged"] == 1.0
    assert circ["gate_patching"]["relative_gain"] > 0
    assert circ["graph"]["edge_verification_r"] >= 0.9
    gen = metrics["generation"]  # the path each part ran, and the exact versions
    assert gen["paths"]["detection"] == ["twin"] and gen["paths"]["trained.bias"] == ["bridge"]
    assert {"torch", "transformers", "transformer-lens", "sae-lens"} <= set(gen["versions"])
    assert circ["graph"]["n_nodes"] > 3 and circ["graph"]["n_edges"] > 3
    assert (out / "circuits" / "graph.json").is_file()
    assert (out / "circuits" / "viewer" / "graph-metadata.json").is_file()
    page = (out / "report.html").read_text()
    assert "Circuits: gates, carriers, the steering graph" in page
    assert "Introspection trained into the base organism" in page
    assert "Noise control" in page and "<script src=" not in page
