"""The examples of docs/analysis.md run, in order, in one session, on the built-in organism."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "analysis.md"


@pytest.mark.slow
def test_the_analysis_guide_runs():
    blocks = re.findall(r"^```python\n(.*?)^```", PAGE.read_text("utf-8"), re.M | re.S)
    assert len(blocks) >= 6, "docs/analysis.md lost its examples"
    session: dict[str, object] = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/analysis.md, example {i + 1}", "exec"), session)
    assert session["report"].ok(atol=1e-4)
    assert session["res"].relative_drop > 0.3  # the gates matter
    assert session["check"].r > 0.9  # the steering graph predicts its interventions
