"""Which real browsers the tests may use, and the rule for their absence: a test that needs
one is skipped where it is missing, except under CI (``CI=true``), where ``.ci/run`` installs
them and their absence fails the test (a check not run never passes there)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
#: the flags Chromium starts with, here (tests/browser) and in scripts/screenshots.py: headless
#: and off the network (no background requests, updates or sync)
CHROMIUM_ARGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _missing(why: str | None) -> None:
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"this test must run in CI: {why}")
    pytest.skip(why)


def need_browser() -> None:
    """Debian's chromium driven by Playwright (tests/browser)."""
    why = None
    if not CHROMIUM.is_file():
        why = f"no {CHROMIUM} (apt-get install chromium)"
    elif importlib.util.find_spec("playwright") is None:
        why = "no playwright (pip install -e '.[test]')"
    _missing(why)


def need_image_renderer() -> None:
    """kaleido and a headless Chromium it can draw in (mechintro.plotting's static images)."""
    from mechintro.plotting import BROWSERS

    why = None
    if importlib.util.find_spec("kaleido") is None:
        why = "no kaleido (pip install -e '.[test]')"
    elif not any(shutil.which(b) for b in BROWSERS):
        why = "no headless Chromium (apt-get install chromium-headless-shell)"
    _missing(why)
