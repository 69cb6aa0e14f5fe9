"""The test tree's own rule: no two test files share a basename. pytest imports each test
file as a top-level module named after it, so a second file of the same name in another tier
stops the whole run at collection ("import file mismatch") when the tiers run together."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_files_share_a_name():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert not [n for n, k in names.items() if k > 1]
