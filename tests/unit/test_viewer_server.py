"""circuits.viewer_server and ``mechintro viewer``: what is served, to whom, and what is not."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest

from circuits.graph import AttributionGraph, Edge, Node
from circuits.viewer_server import CSP, serve, viewer_folder
from mechintro.app.viewer_command import main as viewer_main


def write_folder(folder: Path) -> Path:
    nodes = [
        Node("C", "concept", -1, role="concept", label="bread"),
        Node("G", "feature", 1, 2, feature=5, role="gate", activation=1.0),
        Node("R", "logit", 2, 2, feature=3, role="logit", label="yes", probability=0.5),
    ]
    edges = [Edge("C", "G", 1.0), Edge("G", "R", 2.0)]
    graph = AttributionGraph(nodes, edges, {"prompt_tokens": ["a", "b", "c"]}, root="R")
    return graph.to_viewer_json(folder, slug="g")


def get(port: int, path: str, host: str | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Host": host} if host is not None else {}
    conn.request("GET", path, headers=headers)
    r = conn.getresponse()
    out = r.status, dict(r.getheaders()), r.read()
    conn.close()
    return out


def test_serves_the_page_and_the_folder_and_nothing_else(tmp_path: Path) -> None:
    write_folder(tmp_path / "run" / "circuits" / "viewer")
    (tmp_path / "secret.json").write_text("{}")
    (tmp_path / "run" / "circuits" / "viewer" / "notes.txt").write_text("x")
    with serve(tmp_path / "run") as server:  # a demo run's folder: its circuits/viewer
        assert server.host == "127.0.0.1" and server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/"
        status, headers, body = get(server.port, "/")
        assert status == 200 and b"viewer.js" in body
        assert headers["Content-Security-Policy"] == CSP and "default-src 'self'" in CSP
        for path in ("/viewer.js", "/viewer.css"):
            assert get(server.port, path)[0] == 200
        status, _, body = get(server.port, "/data/graph-metadata.json")
        assert status == 200 and json.loads(body)["graphs"][0]["slug"] == "g"
        status, _, body = get(server.port, "/graph_data/g.json")
        assert status == 200 and json.loads(body)["metadata"]["slug"] == "g"
        for path in (
            "/data/../../../secret.json",
            "/data/%2e%2e/%2e%2e/%2e%2e/secret.json",
            "/data/notes.txt",  # JSON only
            "/circuits/viewer_server.py",
            "/data/missing.json",
        ):
            assert get(server.port, path)[0] == 404, path
        # a page elsewhere that rebinds its name to 127.0.0.1 is refused
        assert get(server.port, "/data/g.json", host="evil.example:80")[0] == 403
        assert get(server.port, "/", host=f"localhost:{server.port}")[0] == 200


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="mechintro demo"):
        viewer_folder(tmp_path)
    write_folder(tmp_path / "a")
    write_folder(tmp_path / "b" / "viewer")
    with pytest.raises(FileNotFoundError, match="2 viewer folders"):
        viewer_folder(tmp_path)
    assert viewer_folder(tmp_path / "b") == (tmp_path / "b" / "viewer").resolve()
    with pytest.raises(ValueError, match="loopback"):
        serve(tmp_path / "a", host="0.0.0.0")
    with pytest.raises(ValueError, match="port"):
        serve(tmp_path / "a", port=70000)


def test_the_command_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = {"dir": str(tmp_path), "port": 0, "host": "127.0.0.1", "no_browser": True}
    assert viewer_main(args) == 2
    assert "mechintro demo --out DIR" in capsys.readouterr().err
