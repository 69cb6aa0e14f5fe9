"""``mechintro viewer`` in a real browser, on a demo run: the page loads, the graph draws with
its gate and carrier groups, a click on a feature shows its top-activating examples, and no
request leaves 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from circuits.viewer_server import serve

pytestmark = pytest.mark.slow


def test_the_viewer_draws_the_demo_graph_offline(browser: Any, demo_run: Path) -> None:
    folder = demo_run / "circuits" / "viewer"
    graph_file = next(p for p in folder.glob("*.json") if p.name != "graph-metadata.json")
    data = json.loads(graph_file.read_text())
    with serve(demo_run) as server:
        page = browser.new_page()
        requests: list[str] = []
        outside: list[str] = []
        errors: list[str] = []

        def route(r: Any) -> None:  # every request: answered only if it is the server's
            if r.request.url.startswith(server.url):
                r.continue_()
            else:
                outside.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(server.url)
        page.wait_for_selector("body[data-ready=true]", timeout=20_000)

        # the graph: every node drawn, with the stored supernodes as boxes from the start
        assert page.locator("#graph .node").count() == len(data["nodes"]) > 0
        assert page.locator("#graph .link").count() == len(data["links"]) > 0
        groups = {g[0] for g in data["qParams"]["supernodes"]}
        assert groups == {"gates", "evidence carriers"}
        for label in groups:
            assert page.locator(f'#graph .group-box[data-group="{label}"]').count() > 0
        # it opens on the root: the target logit, with its real token and probability
        root = next(n for n in data["nodes"] if n["is_target_logit"])
        assert 0 < root["token_prob"] <= 1 and root["feature"] >= 0
        assert page.locator("#detail h2").inner_text() == root["clerp"]

        # a click on a gate shows its examples, from the feature file the demo wrote
        page.locator("#graph .node[data-role=gate] circle").first.click()
        page.wait_for_selector("#detail .examples .example", timeout=20_000)
        assert page.locator("#detail .examples .example").count() > 0
        assert page.locator("#detail .examples .tok.peak").count() > 0
        assert "cross layer transcoder" not in page.locator("#detail h2").inner_text()
        page.close()

    assert not outside, f"requests left the machine: {outside}"
    assert requests and all(u.startswith(server.url) for u in requests), requests
    assert any("/data/features/" in u for u in requests)
    assert not errors, errors
