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

# what an example must find, beyond running (its comments' numbers), by (page, number)


def _patching(s):
    return s["res"].top(1)[0][0] == "L5 all"


def _dla(s):
    return float(s["steered"].error.abs().max()) < 1e-4 and s["steered"].top(1)[0][0] == "L5.mlp"


def _transcoders(s):
    again = s["feature_activations"](s["model"], s["tcs"][5], s["prompt"], injection=s["inj"])
    return s["fa"].top(5, k=3) == again.top(5, k=3)


def _graph(s):
    return s["check"].r > 0.9 and Path("horse_graph.json").is_file()


def _generation(s):
    gen = s["generate"](
        s["model"], s["batch"], injection=s["inj"], max_new_tokens=14, temperature=1.0, seed=0
    )
    return [r.split(" about ")[-1] for r in gen.replies[:2]] == ["horse .", "lemon ."]


def _gated_graph(s):
    return s["check"].r > 0.9 and s["sa"].explained > 0.5 * s["sa"].delta


CHECKS = {
    ("docs/examples.md", 1): _patching,
    ("docs/examples.md", 2): _dla,
    ("docs/examples.md", 3): _transcoders,
    ("docs/examples.md", 4): _graph,
    ("README.md", 1): _generation,
    ("README.md", 2): _gated_graph,
    ("README.md", 3): _patching,
    ("README.md", 4): _dla,
    ("README.md", 5): _transcoders,
}


def test_the_examples_page_has_its_four_examples():
    assert sum(page == "docs/examples.md" for page, _, _ in EXAMPLES) >= 4


@pytest.mark.slow
@pytest.mark.parametrize(("page", "n", "code"), EXAMPLES, ids=[f"{p}#{n}" for p, n, _ in EXAMPLES])
def test_a_marked_example_runs(page, n, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example may write files (a graph's JSON)
    session: dict[str, object] = {"__name__": "__example__"}
    exec(compile(code, f"{page}, example {n}", "exec"), session)
    assert (page, n) in CHECKS, f"{page}, example {n} has no check of what it says"
    assert CHECKS[page, n](session), f"{page}, example {n} no longer finds what it says"
