"""Progress bars and log lines that do not print over each other: one bar per loop.

:func:`progress_bar` makes every bar of mechintro. On a terminal or in a notebook it is tqdm's
bar: the notebook widget where ipywidgets is installed, else the text bar (tqdm.auto without
ipywidgets warns "IProgress not found" and prints the text bar anyway). Where the output cannot
redraw a line in place (a log file, CI), it is a :class:`LoggedBar`: the bar's state goes to
the log, at most every 30 s and once at the end, instead of one ``\\r``-joined line per update
with the last one printed twice. :class:`TqdmHandler` writes log records through
``tqdm.write``, above the bars; the command line logs through it, and while a bar is shown,
mechintro's own warnings do too where no logging is configured (a notebook).
:func:`quiet_loading` turns Hugging Face's per-load "Loading weights" bar off around a load
(mechintro logs the load itself); downloads keep their bars.

Example::

    for item in progress_bar(items, desc="score", unit="item"):
        ...
"""

from __future__ import annotations

import functools
import importlib.util
import io
import logging
import math
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.std import TqdmWarning, tqdm

logger = logging.getLogger(__name__)

#: seconds between two log lines of a bar that cannot redraw in place
LOG_INTERVAL = 30.0


def interactive() -> bool:
    """Whether a bar can redraw in place: stderr is a terminal, or this is a Jupyter kernel."""
    stream = sys.stderr
    if stream is not None and stream.isatty():
        return True
    ipython = sys.modules.get("IPython")  # a kernel has imported it; then ask it (as tqdm.auto)
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config


@functools.cache
def _bar_class() -> Any:
    """tqdm.auto's bar where ipywidgets is installed (the widget in a notebook), else the text
    bar. tqdm.auto is imported once here, quietly, because transformers imports it too."""
    if importlib.util.find_spec("ipywidgets") is not None:
        return importlib.import_module("tqdm.auto").tqdm
    with warnings.catch_warnings():
        # in a notebook without ipywidgets, importing tqdm.auto warns that IProgress is missing
        # and falls back to the text bar, which is the bar chosen here anyway
        warnings.filterwarnings("ignore", message="IProgress not found", category=TqdmWarning)
        importlib.import_module("tqdm.auto")
    return tqdm


class TqdmHandler(logging.Handler):
    """A logging handler that writes each record through ``tqdm.write`` (to stderr), so a log
    line lands above the progress bars instead of on them.

    Example::

        logging.basicConfig(level=logging.INFO, handlers=[TqdmHandler()])
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


class _UnconfiguredHandler(TqdmHandler):
    """Python's last resort (warnings and errors, the bare message) for the ``mechintro``
    logger, through ``tqdm.write``: silent wherever logging has a handler of its own."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if not logging.getLogger().handlers:
            super().emit(record)


def _log_above_bars() -> None:
    package = logging.getLogger("mechintro")
    if not any(isinstance(h, _UnconfiguredHandler) for h in package.handlers):
        package.addHandler(_UnconfiguredHandler())


class LoggedBar(tqdm):
    """A tqdm bar whose state is a log line (``desc: 4/10 [elapsed<left, rate]``) at most
    every 30 s and once at the end, never twice for one count, and at the start where it
    starts past 0 (a resumed sweep says where it resumes): for output that cannot redraw in
    place."""

    def __init__(self, iterable: Iterable[Any] | None = None, **kwargs: Any) -> None:
        kwargs["mininterval"] = max(float(kwargs.get("mininterval", 0.0)), LOG_INTERVAL)
        kwargs.update(
            file=io.StringIO(),
            bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]",
        )
        self._logged, self._logged_at = 0, -math.inf  # the first count past 0 is logged
        super().__init__(iterable, **kwargs)

    def display(self, msg: Any = None, pos: Any = None) -> bool:
        now = time.monotonic()
        due = self.disable or now - self._logged_at >= self.mininterval  # disable: closing
        if self.n != self._logged and due:
            self._logged, self._logged_at = self.n, now
            logger.info("%s", msg if msg is not None else str(self))
        return True


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """A tqdm bar (``tqdm(iterable, **kwargs)``) for a terminal or a notebook, else a
    :class:`LoggedBar`. ``disable=True``: no bar."""
    if kwargs.get("disable"):
        return tqdm(iterable, **kwargs)
    _log_above_bars()
    if interactive():
        return _bar_class()(iterable, **kwargs)
    return LoggedBar(iterable, **kwargs)


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Hugging Face's per-load "Loading weights" bar off for the block (downloads keep theirs).

    Example::

        with quiet_loading():
            hf = AutoModelForCausalLM.from_pretrained(path)
    """
    _bar_class()  # tqdm.auto imported quietly before transformers imports it
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    downloads_on = not are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # also turns the Hub's download bars off: back on below
    if downloads_on:
        enable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()
            if not downloads_on:
                from huggingface_hub.utils import disable_progress_bars

                disable_progress_bars()


__all__ = ["LoggedBar", "TqdmHandler", "interactive", "progress_bar", "quiet_loading"]
