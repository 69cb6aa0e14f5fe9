"""The one model load of the command line and ``mechintro run``: a name or folder at a
revision, on a backend, dtype and device (or split over GPUs), logged as it starts."""

from __future__ import annotations

import logging
import typing
from typing import Any

logger = logging.getLogger(__name__)


def load(
    name: str,
    backend: str,
    dtype: str,
    device: str,
    *,
    revision: str | None = None,
    n_devices: int = 1,
) -> Any:
    """``mechintro.models.load_model`` with the options as the command line spells them
    (``dtype`` a torch dtype's name; ``revision`` a Hub branch, tag or commit, or None)."""
    import torch

    from mechintro.models import Backend, load_model

    split = f" over {n_devices} GPUs" if n_devices > 1 else ""
    at = f"@{revision}" if revision else ""
    logger.info("loading %s%s (%s, %s, %s%s)", name, at, backend, dtype, device, split)
    if n_devices > 1 and backend == "bridge":
        device = "cpu"  # the default: accelerate's map places the modules
    return load_model(
        name,
        backend=typing.cast(Backend, backend),  # checked by the config
        revision=revision or None,
        dtype=getattr(torch, dtype),
        device=device,
        n_devices=n_devices,
    )
