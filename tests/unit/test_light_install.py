"""The light parts run without TransformerLens, sae-lens and transformers (docs/architecture.md
§7): tests/light_parts.py in a fresh interpreter where importing any of them fails, as it does
where they are not installed. tests/integration/test_light_install_venv.py does the same in a real
venv holding only ``pip install "mechintro[graph]"``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BLOCKED = """
import importlib.abc, runpy, sys

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("transformer_lens", "sae_lens", "transformers"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Missing())
try:
    import transformers  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    raise SystemExit("the blocker does not block")
runpy.run_path(sys.argv[1], run_name="__main__")
"""


def test_the_light_parts_import_and_run_without_the_heavy_packages():
    out = subprocess.run(
        [sys.executable, "-c", BLOCKED, str(ROOT / "tests" / "light_parts.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("light parts ok")


def test_the_blocker_stops_what_needs_the_full_install():
    """The same blocker makes the heavy parts fail, so the test above proves something."""
    code = BLOCKED.replace(
        'runpy.run_path(sys.argv[1], run_name="__main__")',
        "from mechintro.models import load_model\nload_model('builtin:organism')",
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode != 0
    assert "No module named 'transformer" in out.stderr
