"""``pip install "mechintro[graph]"`` in a fresh venv (no system site-packages) installs no
TransformerLens, sae-lens or transformers, and the light parts run there (tests/light_parts.py;
docs/architecture.md §7). About a minute: most of it unpacking torch."""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("pyproject.toml", "README.md", "constraints.txt", "mechintro", "circuits")


@pytest.mark.slow
def test_the_graph_extra_installs_and_runs_without_the_heavy_packages(tmp_path):
    src = tmp_path / "src"  # a copy: pip builds in the source tree (build/, egg-info)
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    env = tmp_path / "venv"
    venv.create(env, with_pip=True, system_site_packages=False)
    python = env / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--no-compile"]
    subprocess.run([*pip, "-c", str(src / "constraints.txt"), f"{src}[graph]"], check=True)
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.lower()
    names = {line.split("==")[0].replace("_", "-") for line in listed.splitlines()}
    assert "mechintro" in names
    assert not names & {"transformer-lens", "sae-lens", "transformers"}, sorted(names)
    out = subprocess.run(
        [str(python), str(ROOT / "tests" / "light_parts.py")],
        cwd=tmp_path,  # not the repository: mechintro comes from the venv
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("light parts ok")
