"""What the light install (``pip install "mechintro[graph]"``, docs/architecture.md §7) must run
without TransformerLens, sae-lens or transformers: the attribution graph and its viewer, the
DLA and patching result types, and mechintro.plotting. Run as a script (``python
tests/light_parts.py``): it prints ``light parts ok`` and fails if a heavy package was imported.

tests/unit/test_light_install.py runs it with those packages blocked from importing;
tests/integration/test_light_install_venv.py in a fresh venv holding only the light install.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

HEAVY = ("transformer_lens", "sae_lens", "transformers")


def main() -> None:
    import pandas as pd
    import torch

    import mechintro.plotting as plotting
    from circuits.graph import AttributionGraph, Edge, Node
    from circuits.viewer import figure, to_viewer_json
    from mechintro.analysis.dla import DLAResult, LogitDirection
    from mechintro.analysis.patch_result import PatchResult, heatmap

    nodes = [
        Node("concept", "concept", layer=-1, role="concept", label="bread"),
        Node("L3#17", "feature", layer=3, feature=17, role="carrier", activation=2.1),
        Node("L4#5", "feature", layer=4, feature=5, role="gate", activation=0.4),
        Node("no", "logit", layer=6, role="logit", label="Yes - No"),
    ]
    edges = [Edge("concept", "L3#17", 1.2), Edge("L3#17", "L4#5", -0.8), Edge("L4#5", "no", -2.0)]
    graph = AttributionGraph(nodes, edges, {"model": "tiny", "tokens": ["a", "b"]})
    assert graph.flow()["concept"] == 1.0  # a chain: the whole root flows through it
    assert graph.prune(max_edges=2).n_edges == 1  # concept -> L3#17 no longer reaches the root
    figure(graph)
    with tempfile.TemporaryDirectory() as tmp:
        back = AttributionGraph.load_json(graph.save_json(Path(tmp) / "graph.json"))
        assert back.to_dict() == graph.to_dict()
        to_viewer_json(graph, Path(tmp) / "viewer", slug="light")

    per_row = torch.tensor([[0.5, 1.5], [-2.0, -1.0]])
    dla = DLAResult(
        values=per_row.mean(-1),
        per_row=per_row,
        labels=("L0.attn", "L0.mlp"),
        kinds=("attn", "mlp"),
        layers=(0, 0),
        index=(None, None),
        target=per_row.sum(0),
        direction=LogitDirection((1,), (2,)),
    )
    assert dla.top(1) == [("L0.mlp", -1.5)]
    assert float(dla.error.abs().max()) == 0.0
    assert list(dla.to_frame()["label"]) == ["L0.attn", "L0.mlp"]

    patch = PatchResult(
        component="resid_pre",
        hook="blocks.{layer}.hook_resid_pre",
        layers=(0, 1),
        positions=(0,),
        position_labels=("0 'a'",),
        heads=None,
        values=torch.tensor([[1.0], [2.0]]),
        rows=torch.tensor([[[1.0]], [[2.0]]]),
        method="activation",
        source_value=torch.tensor([2.0]),
        target_value=torch.tensor([0.0]),
        source_injection=None,
        target_injection=None,
        backend="bridge",
    )
    assert patch.to_frame()["effect"].tolist() == [1.0, 2.0]
    heatmap(patch)

    rates = pd.DataFrame(
        {
            "layer": [1, 1, 2, 2],
            "strength": [2, 4, 2, 4],
            "tpr": [0.1, 0.2, 0.3, 0.4],
            "tpr_lo": [0.0, 0.1, 0.2, 0.3],
            "tpr_hi": [0.2, 0.3, 0.4, 0.5],
            "k_tpr": [1, 2, 3, 4],
            "n_tpr": [10, 10, 10, 10],
        }
    )
    plotting.rate_heatmap(rates, "tpr")

    loaded = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
    assert not loaded, f"the light parts imported {loaded}"
    print("light parts ok")


if __name__ == "__main__":
    main()
