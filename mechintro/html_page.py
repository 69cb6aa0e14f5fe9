"""One self-contained HTML page of headings, paragraphs, plotly figures and escaped tables."""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from mechintro.io import atomic_write_text


@dataclass(frozen=True)
class Code:
    """Preformatted text in a report (a config, a command line), shown verbatim, escaped."""

    text: str


@dataclass(frozen=True)
class Section:
    """A heading and its items, in order: ``str`` (a paragraph), a plotly figure, a
    DataFrame (a table, at most ``max_rows`` rows shown) or :class:`Code`."""

    heading: str
    items: Sequence[Any] = field(default_factory=tuple)
    max_rows: int = 200


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222}h1{font-size:1.7em}h2{margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;
padding:3px 7px;text-align:left;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f6f6;padding:1em;overflow-x:auto}.note{color:#666;font-size:12px}
nav li{margin:2px 0}"""


def _cell_text(v: Any) -> tuple[str, bool]:
    """(text, is_number) of a table cell."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return "–", False
    if isinstance(v, bool):
        return str(v), False
    if isinstance(v, int) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") in "iu"):
        return str(v), True
    if isinstance(v, float) or (hasattr(v, "dtype") and getattr(v.dtype, "kind", "") == "f"):
        f = float(v)
        return (str(int(f)) if f.is_integer() and abs(f) < 1e15 else f"{f:.4g}"), True
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, ensure_ascii=False, default=str), False
    return str(v), False


def frame_html(df: pd.DataFrame, max_rows: int = 200) -> str:
    """``df`` as an HTML table, every header and cell escaped, floats to 4 significant digits."""
    if df.empty:
        return '<p class="note">(no rows)</p>'
    part = df.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in part.columns)
    rows = []
    for rec in part.itertuples(index=False, name=None):
        cells = []
        for v in rec:
            text, num = _cell_text(v)
            cls = ' class="num"' if num else ""
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    more = f'<p class="note">{max_rows} of {len(df)} rows shown.</p>' if len(df) > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"


def _is_figure(x: Any) -> bool:
    return hasattr(x, "to_html") and hasattr(x, "to_plotly_json")


def html_report(
    title: str,
    sections: Sequence[Section],
    *,
    path: str | os.PathLike[str] | None = None,
    footer: str | None = None,
) -> str:
    """One self-contained HTML page: a table of contents, then each :class:`Section`.

    plotly.js is inlined once in the head (only if there is a figure), so the file opens
    offline; headings, paragraphs, table cells and code are HTML-escaped. With ``path`` the
    page is also written there atomically (``mechintro.io.atomic_write_text``); the HTML is
    returned either way.

    Example::

        html_report("Sweep", [Section("Rates", ["Greedy replies.", fig, table])], path="r.html")
    """
    body: list[str] = []
    toc: list[str] = []
    n_fig = 0
    for i, sec in enumerate(sections):
        if not isinstance(sec, Section):
            raise TypeError(f"sections must be Section objects, got {type(sec).__name__}")
        anchor = f"s{i + 1}"
        toc.append(f'<li><a href="#{anchor}">{html.escape(sec.heading)}</a></li>')
        body.append(f'<h2 id="{anchor}">{html.escape(sec.heading)}</h2>')
        for item in sec.items:
            if isinstance(item, str):
                body.append(f"<p>{html.escape(item)}</p>")
            elif isinstance(item, Code):
                body.append(f"<pre>{html.escape(item.text)}</pre>")
            elif isinstance(item, pd.DataFrame):
                body.append(frame_html(item, sec.max_rows))
            elif _is_figure(item):
                n_fig += 1
                body.append(
                    item.to_html(
                        full_html=False,
                        include_plotlyjs=False,
                        include_mathjax=False,
                        div_id=f"figure-{n_fig}",
                        config={"displaylogo": False, "responsive": True},
                    )
                )
            else:
                raise TypeError(
                    f"section {sec.heading!r}: cannot show a {type(item).__name__}; use str, "
                    "Code, a pandas DataFrame or a plotly Figure"
                )
    script = ""
    if n_fig:
        from plotly.offline import get_plotlyjs

        script = f'<script type="text/javascript">{get_plotlyjs()}</script>'
    foot = f'<p class="note">{html.escape(footer)}</p>' if footer else ""
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>{script}</head>\n<body>"
        f"<h1>{html.escape(title)}</h1><nav><ul>{''.join(toc)}</ul></nav>\n"
        + "\n".join(body)
        + f"\n{foot}</body></html>\n"
    )
    if path is not None:
        atomic_write_text(path, page)
    return page
