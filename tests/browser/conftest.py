"""A real headless browser for the page tests: Debian's chromium driven by Playwright.

Skipped where chromium or playwright is missing, except under CI (``CI=true``), where their
absence fails the tests: ``.ci/run`` installs both. Chromium starts with the flags that keep it
off the network (no background requests, updates or sync) and with a fresh profile.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browsers import CHROMIUM, CHROMIUM_ARGS, need_browser


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A Playwright browser context on a fresh chromium profile."""
    need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=str(CHROMIUM),
            args=list(CHROMIUM_ARGS),
            headless=True,
            viewport={"width": 1400, "height": 900},
        )
        yield context
        context.close()


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small run of ``mechintro demo`` (every step and figure, fewer trials)."""
    need_browser()  # no minute-long demo for tests that would skip
    from mechintro.organism.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    run_demo(small_demo(out))
    return out


def small_demo(out: Path) -> Any:
    """The demo's config with every step, at a size that runs in about a minute."""
    from mechintro.organism.demo import DemoConfig

    return DemoConfig(
        out=str(out),
        strengths=(0.5, 1.0),
        sweep_strengths=(1.0,),
        sweep_concepts=1,
        n_controls=20,
        n_random=2,
        battery=1,
    )
