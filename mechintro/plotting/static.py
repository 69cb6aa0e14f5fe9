"""Notebook figures that travel (docs/figures.md §13): the interactive plotly figure and a
static image of it, drawn offline by plotly.js in a headless Chromium (kaleido), so that
nbconvert's HTML and GitHub show it. :func:`use_static_images` does it for every figure a
notebook shows; :func:`show`, :func:`figure_bundle` and :func:`static_image` for one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import plotly.graph_objects as go

#: browsers kaleido can draw in, by executable name, tried in this order before kaleido's own
#: search (which does not know Debian's ``chromium-headless-shell``)
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
_DRAWER: list[_Drawer] = []  # the one running browser of this process, once started
_WARNED: list[str] = []


class _Drawer:
    """One kaleido browser, open in a thread of its own (its asyncio loop there), serving
    every image of the process; each call waits at most ``timeout`` seconds, so a browser
    that fails to start or hangs raises here instead of blocking the caller."""

    def __init__(self, opts: dict[str, Any], timeout: float = 120.0) -> None:
        import asyncio
        import threading

        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True, name="kaleido").start()
        try:
            self.kaleido = self._run(self._open(opts))
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise

    @staticmethod
    async def _open(opts: dict[str, Any]) -> Any:
        import kaleido

        k = kaleido.Kaleido(**opts)
        await k.open()
        return k

    def _run(self, coroutine: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(self.timeout)

    def draw(self, spec: dict[str, Any], opts: dict[str, Any]) -> bytes:
        return bytes(self._run(self.kaleido.calc_fig(spec, opts=opts)))

    def close(self) -> None:
        try:
            self._run(self.kaleido.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)


def _drawer() -> _Drawer:
    """The process's browser, started on first use (stopped at exit): plotly.js from the
    installed plotly package and no MathJax, so the page fetches nothing from the network."""
    import atexit
    import shutil
    from pathlib import Path

    if _DRAWER:
        return _DRAWER[0]
    try:
        import kaleido  # noqa: F401
        import plotly
    except ImportError as e:
        raise RuntimeError(
            "static images need kaleido >= 1: pip install 'kaleido>=1' (docs/figures.md §13)"
        ) from e
    js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    opts: dict[str, Any] = {"plotlyjs": str(js), "mathjax": False, "n": 1}
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser:
        opts["path"] = browser
    try:
        drawer = _Drawer(opts)
    except Exception as e:  # kaleido's ChromeNotFoundError, a browser that does not start
        raise RuntimeError(
            f"kaleido could not start a browser to draw in ({type(e).__name__}: {e}); "
            "install a headless Chromium (Debian/Ubuntu: apt-get install "
            "chromium-headless-shell; elsewhere: plotly_get_chrome), see docs/figures.md §13"
        ) from e
    atexit.register(drawer.close)
    _DRAWER.append(drawer)
    return drawer


def _spec(fig: go.Figure | dict[str, Any]) -> dict[str, Any]:
    return fig if isinstance(fig, dict) else fig.to_dict()


def static_image(
    fig: go.Figure | dict[str, Any],
    format: str = "png",
    *,
    width: int | None = None,
    height: int | None = None,
    scale: float = 1.0,
) -> bytes:
    """``fig`` drawn as a PNG or SVG by plotly.js itself, offline, in a headless Chromium
    (kaleido); the size is the figure's own or plotly's default (700 × 500).

    The browser starts with the first image (about 2 s) and serves every later one (about
    0.2 s). Raises a ``RuntimeError`` naming the install step if kaleido or a browser is
    missing.

    Example::

        Path("tpr.png").write_bytes(static_image(dose_response(table, "tpr")))
    """
    import plotly.io as pio

    if format not in ("png", "svg"):
        raise ValueError(f"format must be 'png' or 'svg', got {format!r}")
    spec = _spec(fig)
    layout = spec.get("layout", {})
    opts = {
        "format": format,
        "width": width or layout.get("width") or pio.defaults.default_width,
        "height": height or layout.get("height") or pio.defaults.default_height,
        "scale": scale,
    }
    return _drawer().draw(spec, opts)


def figure_bundle(fig: go.Figure | dict[str, Any], format: str = "png") -> dict[str, Any]:
    """The display bundle of ``fig`` for a notebook: the interactive plotly figure
    (``application/vnd.plotly.v1+json``, drawn by JupyterLab, Notebook 7 and VS Code), a
    static image of it (``image/png`` or ``image/svg+xml``, what nbconvert's HTML and GitHub
    show) and a one-line text. Without kaleido or a browser the image is left out and a
    warning saying how to install them is logged once.
    """
    import base64
    import json
    import logging

    import plotly.io as pio

    spec = _spec(fig)
    title = (spec.get("layout", {}).get("title") or {}).get("text") or "figure"
    bundle: dict[str, Any] = {
        "application/vnd.plotly.v1+json": json.loads(pio.to_json(spec, validate=False)),
        "text/plain": f"<plotly figure: {title}>",
    }
    try:
        image = static_image(spec, format)
    except RuntimeError as e:
        if not _WARNED:
            _WARNED.append(str(e))
            logging.getLogger("mechintro.plotting").warning(
                "figures shown without a static image: %s", e
            )
        return bundle
    if format == "png":
        bundle["image/png"] = base64.b64encode(image).decode("ascii")
    else:
        bundle["image/svg+xml"] = image.decode("utf-8")
    return bundle


def show(fig: go.Figure, format: str = "png") -> None:
    """Display ``fig`` in a notebook with a static image beside it (:func:`figure_bundle`).

    Example::

        show(dose_response(table, "tpr"))
    """
    from IPython.display import display

    display(figure_bundle(fig, format), raw=True)


def use_static_images(format: str = "png") -> None:
    """From now on, every plotly figure a notebook cell shows (``fig`` as a cell's last line,
    ``fig.show()``, plotly express) carries a static image too (:func:`figure_bundle`):
    registers plotly renderer ``"mechintro"`` and makes it the default. Call it once, at the
    top of a notebook.

    Example::

        from mechintro.plotting import use_static_images
        use_static_images()
    """
    import plotly.io as pio
    from plotly.io.base_renderers import MimetypeRenderer

    class _Renderer(MimetypeRenderer):
        def to_mimebundle(self, fig_dict: dict[str, Any]) -> dict[str, Any]:
            return figure_bundle(fig_dict, format)

    pio.renderers["mechintro"] = _Renderer()
    pio.renderers.default = "mechintro"
