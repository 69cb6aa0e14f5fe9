"""benchmarks/sweep_host.py, run small so that it cannot rot: a sweep's wall time split into
the model's forwards and the rest. Nothing here asserts a timing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: benchmarks/

from benchmarks import sweep_host


def test_the_split_adds_up_and_compares_with_an_earlier_run(tmp_path, capsys):
    out = tmp_path / "after.json"
    assert sweep_host.main(["--trials", "128", "--new-tokens", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text("utf-8"))
    assert r["trials"] == 128 and r["forward_calls"] >= 2 * 2  # 2 batches: prefill + readout
    assert r["seconds"] == pytest.approx(r["forward_seconds"] + r["outside_seconds"])
    assert 0 < r["outside_share"] < 1
    before = {**r, "outside_seconds": 2 * r["outside_seconds"]}
    assert "(x2.00 less)" in sweep_host.report(r, before)
    assert "outside" in capsys.readouterr().out


def test_the_spec_plans_the_trials_asked_for():
    from mechintro.experiments.sweeps import plan

    assert len(plan(sweep_host.spec_for(256, 4))) == 256
    with pytest.raises(ValueError, match="multiple of 128"):
        sweep_host.spec_for(100, 4)
