"""Regenerate docs/images/report.png and docs/images/viewer.png from a demo run.

    python scripts/screenshots.py            # runs `mechintro demo` (defaults) in a temp folder
    python scripts/screenshots.py DEMO_OUT   # or uses a finished run

Needs Debian's chromium (/usr/bin/chromium; `apt-get install chromium`) and playwright (the
test extra). The report is opened as a file with the network blocked, the viewer served by
`circuits.viewer_server` on 127.0.0.1, as the browser tests do (tests/browser), in the same
Chromium with the same flags (tests/browsers.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "images"


def offline(page: Any, allowed: str) -> None:
    """Abort every request whose URL does not start with ``allowed``."""
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(allowed) else r.abort())


def shoot(run: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    from circuits.viewer_server import serve

    sys.path.insert(0, str(ROOT / "tests"))  # the page tests' browser and flags
    from browsers import CHROMIUM, CHROMIUM_ARGS

    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            profile,
            executable_path=str(CHROMIUM),
            args=list(CHROMIUM_ARGS),
            headless=True,
            viewport={"width": 1400, "height": 900},
        )
        page = browser.new_page()
        page.set_viewport_size({"width": 1400, "height": 1700})  # the table and a figure
        offline(page, "file://")
        page.goto((run / "report.html").resolve().as_uri(), wait_until="load")
        page.wait_for_function(
            "() => [...document.querySelectorAll('.plotly-graph-div')]"
            ".every(d => d.querySelector('.main-svg'))"
        )
        page.screenshot(path=str(out / "report.png"))
        page.close()
        with serve(run) as server:
            page = browser.new_page()
            offline(page, server.url)
            page.goto(server.url)
            page.wait_for_selector("body[data-ready=true]")
            page.locator("#graph .node[data-role=gate] circle").first.click()
            page.wait_for_selector("#detail .examples .example")
            page.screenshot(path=str(out / "viewer.png"))
            page.close()
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", type=Path, help="a finished demo run's folder")
    parser.add_argument("--out", type=Path, default=DOCS, help="where the PNGs go")
    args = parser.parse_args()
    if args.run is not None:
        shoot(args.run, args.out)
        return
    from mechintro.organism.demo import DemoConfig, run_demo

    with tempfile.TemporaryDirectory() as tmp:
        run_demo(DemoConfig(out=tmp))
        shoot(Path(tmp), args.out)


if __name__ == "__main__":
    main()
