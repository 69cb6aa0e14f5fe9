"""``mechintro viewer DIR``: browse a results folder's attribution graphs in a local page.

Finds the viewer folder in ``DIR`` (a demo run's ``circuits/viewer``, or any folder written by
:meth:`circuits.graph.AttributionGraph.to_viewer_json`), serves it with mechintro's own
viewer on 127.0.0.1 (:mod:`circuits.viewer_server`: no request leaves the machine, nothing is
fetched from the internet), prints the address and opens it in the default browser, then
serves until Ctrl-C. The page opens on the graph's root with the gate and evidence-carrier
groups drawn; a click on a feature shows its top-activating examples, which the demo computed
with the organism's transcoders and wrote beside the graph.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)


def main(args: Mapping[str, Any]) -> int:
    """Serve ``args["dir"]`` (keys ``dir``, ``port``, ``host``, ``no_browser``, as
    :class:`mechintro.app.options.ViewerConfig`); 0 after Ctrl-C, 2 when there is nothing to
    serve or the address is refused."""
    from circuits.viewer_server import serve

    try:
        server = serve(args["dir"], host=args.get("host", "127.0.0.1"), port=args.get("port", 0))
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"mechintro viewer: {e}", file=sys.stderr)
        return 2
    print(f"serving {server.folder} at {server.url} (Ctrl-C to stop)", flush=True)
    if not args.get("no_browser", False):
        import webbrowser

        if not webbrowser.open(server.url):
            logger.info("no browser to open here: open %s yourself", server.url)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
