"""Batches: the one loop that cuts a list of trials, prompts or jobs into batches.

Every runner that works through many items (detection trials, the intention, control and
noise experiments, vector extraction, grading, transcoder sites) walks them with
:func:`in_batches`: consecutive batches in the given order, so that row ``i`` of the whole
list is row ``i - offset`` of its batch whatever the batch size (a per-row seed ``seed + i``
stays the same). :func:`check_batch_size` is the one validation of a ``batch_size`` argument.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


def check_batch_size(batch_size: object, *, auto: bool = False) -> None:
    """Refuse anything but a positive int (or ``"auto"`` where ``auto=True``)."""
    if auto and batch_size == "auto":
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        also = " or 'auto'" if auto else ""
        raise ValueError(f"batch_size must be a positive int{also}, got {batch_size!r}")


def in_batches(
    items: Sequence[T], batch_size: int, *, label: str | None = None, progress: bool = False
) -> Iterator[tuple[int, Sequence[T]]]:
    """``(offset, batch)`` for consecutive batches of at most ``batch_size`` items.

    Args:
        items: anything with ``len`` and slicing (a list, a tensor's rows).
        batch_size: a positive int (:func:`check_batch_size`).
        label: names the loop on the bar, or without a bar in the progress log (``"label: k
            of n"`` after each batch); ``None`` logs nothing.
        progress: show a tqdm bar over items.

    Example::

        for i, part in in_batches(rows, 32, label="intention"):
            ...  # row i + j of rows is part[j]
    """
    check_batch_size(batch_size)
    n = len(items)
    bar = None
    if progress and n:
        from mechintro.progress import progress_bar

        bar = progress_bar(total=n, desc=label, unit="item")
    try:
        for i in range(0, n, batch_size):
            part = items[i : i + batch_size]
            yield i, part
            if bar is not None:
                bar.update(len(part))
            if label is not None and bar is None:  # a bar logs itself where it cannot show
                logger.info("%s: %d of %d", label, i + len(part), n)
    finally:
        if bar is not None:
            bar.close()


__all__ = ["check_batch_size", "in_batches"]
