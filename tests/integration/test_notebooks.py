"""Every notebook in notebooks/ runs top to bottom without an error (offline, on the organism).

Each notebook is executed with nbclient in a fresh kernel of *this* interpreter: a kernelspec
named ``python3`` is written to a temporary folder, pointing at ``sys.executable``, and the
kernel manager looks only there (a ``python3`` kernelspec installed elsewhere, for another
Python, cannot be picked up by mistake). The working directory is a temporary folder, so a
notebook that writes files leaves nothing in the repository.

Every figure a notebook shows must travel: beside the interactive plotly figure its output
holds a static PNG (``mechintro.plotting.use_static_images``), which nbconvert's HTML and
GitHub show (docs/figures.md §13).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from browsers import need_image_renderer

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 300
PLOTLY = "application/vnd.plotly.v1+json"


def _kernel_manager(folder: Path):
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    kernels = folder / "kernels"
    write_kernel_spec(kernels / "python3", overrides={"display_name": "mechintro test"})
    ksm = KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)
    spec = ksm.get_kernel_spec("python3")
    assert Path(spec.argv[0]) == Path(sys.executable), spec.argv
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=ksm)


def test_notebooks_exist() -> None:
    names = {p.name for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "noise_controls.ipynb", "circuits.ipynb"} <= names


@pytest.mark.slow  # each under a minute on 2 CPU cores (the README gives the measured times)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(
    path: Path, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # committed without outputs: small, deterministic diffs
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, (
                f"{path.name}: clear the outputs before committing"
            )
    work = tmp_path / "cwd"
    work.mkdir()
    client = nbclient.NotebookClient(
        nb,
        km=_kernel_manager(tmp_path),
        timeout=CELL_TIMEOUT,
        resources={"metadata": {"path": str(work)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError with the cell and its traceback
    record_property("seconds", round(time.perf_counter() - start, 1))
    errors = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.get("output_type") == "error"
    ]
    assert not errors, json.dumps(errors, indent=1)[:4000]
    figures = [
        o.data
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if PLOTLY in o.get("data", {})
    ]
    assert figures, f"{path.name} shows no figure"
    if path.stem == "circuits":  # the viewer's files land in a folder the user keeps
        assert (work / "runs" / "circuits-viewer" / "graph-metadata.json").is_file()
    need_image_renderer()  # the notebook ran; its static images need kaleido and a Chromium
    bare = [f[PLOTLY].get("layout", {}).get("title", {}).get("text") for f in figures]
    bare = [t for t, f in zip(bare, figures) if not f.get("image/png")]
    assert not bare, f"{path.name}: figures without a static PNG: {bare}"
