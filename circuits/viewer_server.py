"""Serve a viewer folder to mechintro's own graph viewer, on this machine only, offline.

The page (``circuits/viewer_page/``: HTML, CSS and a self-written SVG renderer, no library)
and a folder written by :func:`circuits.viewer.to_viewer_json` (``graph-metadata.json``, one
JSON per graph, ``features/L{layer}/{index}.json``) are served by the standard library's
HTTP server, bound to a loopback address only. The URLs are the ones circuit-tracer's local
server answers, so the same folder works in either viewer:

* ``/`` and the page's own files;
* ``/data/<path>`` and ``/graph_data/<path>``: the folder's files (``.json`` only, nothing
  outside the folder).

Every answer carries a Content-Security-Policy that lets the page reach this server only
(``default-src 'self'``), and a request whose ``Host`` header names another machine is
refused (a page elsewhere cannot read the folder through DNS rebinding).

Example::

    from circuits.viewer_server import serve

    server = serve("demo_out/circuits/viewer")  # a free port on 127.0.0.1
    print(server.url)
    ...
    server.stop()
"""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

PAGE = Path(__file__).with_name("viewer_page")
"""The viewer's own files."""
PAGE_FILES = {
    "/": "index.html",
    "/index.html": "index.html",
    "/viewer.js": "viewer.js",
    "/viewer.css": "viewer.css",
}
DATA_PREFIXES = ("/data/", "/graph_data/")
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
INDEX = "graph-metadata.json"


def viewer_folder(path: str | Path) -> Path:
    """The folder holding ``graph-metadata.json``: ``path`` itself, its ``viewer/`` or
    ``circuits/viewer/`` (a demo run's folder), else the one such folder below ``path``.

    Raises:
        FileNotFoundError: None, or several below ``path`` (the message lists them).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    for folder in (root, root / "viewer", root / "circuits" / "viewer"):
        if (folder / INDEX).is_file():
            return folder.resolve()
    found = sorted(p.parent for p in root.rglob(INDEX))
    if len(found) == 1:
        return found[0].resolve()
    if found:
        listed = "\n  ".join(str(f) for f in found)
        raise FileNotFoundError(f"{len(found)} viewer folders below {root}; give one:\n  {listed}")
    raise FileNotFoundError(
        f"no {INDEX} in or below {root}: give a demo run's folder (mechintro demo --out DIR) "
        "or a folder written by AttributionGraph.to_viewer_json"
    )


def check_loopback(host: str) -> str:
    """``host`` resolved to its IPv4 address, which must be a loopback one.

    Raises:
        ValueError: Another address; the message says how to reach the viewer from another
            machine instead.
    """
    try:
        address = socket.gethostbyname(host)
    except OSError as e:
        raise ValueError(f"cannot resolve host {host!r}: {e}") from e
    if not ipaddress.ip_address(address).is_loopback:
        raise ValueError(
            f"host {host!r} is {address}, not a loopback address: the viewer serves this "
            "machine only (127.0.0.1); to look from elsewhere, forward the port, e.g. "
            "ssh -L 8000:127.0.0.1:8000 this-machine"
        )
    return address


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the command prints the URL; errors are answered to the page

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _fail(self, status: int, why: str) -> None:
        self._send(status, why.encode(), "text/plain; charset=utf-8")

    def _file(self) -> Path | None:
        path = unquote(urlsplit(self.path).path)
        if path in PAGE_FILES:
            return PAGE / PAGE_FILES[path]
        for prefix in DATA_PREFIXES:
            if path.startswith(prefix):
                folder = self.server.folder
                target = (folder / path[len(prefix) :]).resolve()
                if target.suffix == ".json" and target.is_relative_to(folder):
                    return target
        return None

    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        if host not in self.server.hosts:
            self._fail(403, f"host {host!r} is not this viewer's")
            return
        target = self._file()
        if target is None or not target.is_file():
            self._fail(404, "not found")
            return
        self._send(200, target.read_bytes(), TYPES.get(target.suffix, "application/octet-stream"))

    do_HEAD = do_GET


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], folder: Path, hosts: frozenset[str]) -> None:
        self.folder = folder
        self.hosts = hosts
        super().__init__(address, _Handler)


@dataclass
class ViewerServer:
    """A running viewer: ``url`` to open, :meth:`stop` to end it (also a context manager)."""

    folder: Path
    host: str
    port: int
    _server: _Server = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C raises KeyboardInterrupt here)."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> ViewerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(path: str | Path, host: str = "127.0.0.1", port: int = 0) -> ViewerServer:
    """Serve the viewer folder of ``path`` (:func:`viewer_folder`) on ``host``:``port`` (0: a
    free port) in a background thread.

    Raises:
        FileNotFoundError: No viewer folder at ``path``.
        ValueError: ``host`` is not a loopback address, or ``port`` is out of range.
    """
    folder = viewer_folder(path)
    address = check_loopback(host)
    if not 0 <= port < 65536:
        raise ValueError(f"port must be in 0..65535 (0: a free one), got {port}")
    server = _Server((address, port), folder, frozenset({host, address, "localhost"}))
    thread = threading.Thread(target=server.serve_forever, name="mechintro-viewer", daemon=True)
    thread.start()
    return ViewerServer(folder, address, server.server_address[1], server, thread)
