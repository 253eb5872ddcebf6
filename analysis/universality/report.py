"""The report folder: an offline HTML page (inline CSS, PNG figures by relative link), ``report.json``
with every number, written atomically (built in a temporary sibling folder, renamed at the end)."""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any, ContextManager, Iterable, Sequence

import numpy as np

from analysis.base import report_dir
from common.io import atomic_write_text
from common.json_safe import json_safe


def atomic_dir(final: str | os.PathLike, inputs: Iterable[str | os.PathLike | None] = ()) -> ContextManager[Path]:
    """``analysis.base.report_dir``: the one rule for writing (and replacing) a report folder."""
    return report_dir(final, inputs)


def write_json(path: Path, obj: Any) -> Path:
    """``report.json``: ``obj`` through ``common.json_safe`` (NaN/inf as null: undefined numbers, e.g.
    a correlation without alive latents), keys in the report's order, written atomically."""
    return atomic_write_text(path, json.dumps(json_safe(obj, non_finite="null"), indent=1, allow_nan=False) + "\n")


def fmt(value: Any, digits: int = 3) -> str:
    """A table cell: floats to ``digits`` decimals, NaN/None as an en dash."""
    if value is None:
        return "–"
    if isinstance(value, (float, np.floating)):
        return "–" if not math.isfinite(float(value)) else f"{float(value):.{digits}f}"
    return str(value)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.9em;color:#555}
.note{color:#555;font-size:.92em}code{background:#f5f5f5;padding:0 .2em}
"""


class HtmlReport:
    """Collects headings, paragraphs, tables and figures; ``render()`` gives one offline HTML page."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]], caption: str | None = None) -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def figure(self, relpath: str, caption: str) -> None:
        src = html.escape(Path(relpath).as_posix(), quote=True)
        self.parts.append(f'<figure><img src="{src}" alt="{html.escape(caption, quote=True)}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def render(self) -> str:
        body = "\n".join(self.parts)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>\n"
                f"<body><h1>{html.escape(self.title)}</h1>\n{body}\n</body></html>\n")
