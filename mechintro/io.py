"""Atomic file writes: readers see the old file or the new one, never half of either."""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)``, fsync, then ``os.replace`` onto ``path`` (same folder).

    The temp file is removed if ``write`` raises; the final file gets the usual
    ``0o666 & ~umask`` permissions rather than ``mkstemp``'s private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


def json_ready(x: Any) -> Any:
    """``x`` as JSON values: dataclasses as dicts, mappings with string keys, tuples as lists,
    tensors and numpy arrays as (nested) lists, numpy and 0-d tensor scalars as numbers,
    NaN and infinities as ``None`` (JSON has none), anything else unknown as its ``str``."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return json_ready(dataclasses.asdict(x))
    if isinstance(x, Mapping):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if hasattr(x, "tolist"):  # tensors, numpy arrays and numpy scalars
        return json_ready(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)
