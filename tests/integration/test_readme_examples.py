"""The examples of docs/examples.md and README.md run: every ```python block right after a
``<!-- runs -->`` line, each on its own (a fresh namespace, in a temporary folder)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = ("docs/examples.md", "README.md")
MARKED = re.compile(r"^<!-- runs -->\n```python\n(.*?)^```", re.M | re.S)


def _examples() -> list[tuple[str, int, str]]:
    out = []
    for page in PAGES:
        for i, code in enumerate(MARKED.findall((ROOT / page).read_text("utf-8"))):
            out.append((page, i + 1, code))
    return out


EXAMPLES = _examples()

# what an example of docs/examples.md must find, beyond running (its comments' numbers)
CHECKS = {
    1: lambda s: s["res"].top(1)[0][0] == "L5 all",
    2: lambda s: (
        float(s["steered"].error.abs().max()) < 1e-4 and s["steered"].top(1)[0][0] == "L5.mlp"
    ),
    3: lambda s: (
        s["fa"].top(5, k=3)
        == s["feature_activations"](s["model"], s["tcs"][5], s["prompt"], injection=s["inj"]).top(
            5, k=3
        )
    ),
    4: lambda s: s["check"].r > 0.9 and Path("horse_graph.json").is_file(),
}


def test_the_examples_page_has_its_four_examples():
    assert sum(page == "docs/examples.md" for page, _, _ in EXAMPLES) >= 4


@pytest.mark.slow
@pytest.mark.parametrize(("page", "n", "code"), EXAMPLES, ids=[f"{p}#{n}" for p, n, _ in EXAMPLES])
def test_a_marked_example_runs(page, n, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example may write files (a graph's JSON)
    session: dict[str, object] = {"__name__": "__example__"}
    exec(compile(code, f"{page}, example {n}", "exec"), session)
    if page == "docs/examples.md" and n in CHECKS:
        assert CHECKS[n](session), f"{page}, example {n} no longer finds what it says"
