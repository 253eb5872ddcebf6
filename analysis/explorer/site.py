"""Write the explorer: a static site that opens from ``file://`` (no server, no CDN, no framework).

Layout of ``<output_dir>``::

    index.html, latent.html, explorer.js, explorer.css   the viewer (vendored from assets/)
    data/index.js       window.EXPLORER_INDEX = {meta, rows}: one row per live latent
    data/chunk_<k>.js   EXPLORER_CHUNK(k, {id: record}): latent pages' records, ``chunk_size`` ids each
    sprites/*.png       thumbnails (SpriteBook sheets)
    latents.json        meta, rows and every record in one JSON (for scripts; the page reads data/)

Pages read their data through ``<script>`` tags, because browsers refuse ``fetch`` of local
files. The folder is built in a temporary sibling and renamed into place (a failed build leaves the
previous site, or none).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from analysis.explorer.sprites import SpriteBook
from analysis.universality.report import atomic_dir

ASSETS = Path(__file__).with_name("assets")
VIEWER_FILES = ("index.html", "latent.html", "explorer.js", "explorer.css")


def compact(obj: Any, digits: int = 4) -> Any:
    """JSON-ready copy: numpy to Python, floats to ``digits`` significant digits, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): compact(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [compact(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return compact(obj.tolist(), digits)
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return float(f"{v:.{digits}g}") if math.isfinite(v) else None
    return obj


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def write_site(output_dir: str | Path, meta: dict, rows: list[list[Any]], records: Mapping[int, dict],
               books: Iterable[SpriteBook], chunk_size: int = 256) -> Path:
    """Write the whole site atomically; ``rows[i][0]`` and the keys of ``records`` are latent ids."""
    output_dir = Path(output_dir)
    with atomic_dir(output_dir) as out:
        (out / "data").mkdir()
        (out / "sprites").mkdir()
        for name in VIEWER_FILES:
            shutil.copyfile(ASSETS / name, out / name)
        meta = dict(meta, books={b.name: b.write(out / "sprites") for b in books}, chunk_size=int(chunk_size))
        meta, rows = compact(meta), compact(rows)
        (out / "data" / "index.js").write_text(
            f"window.EXPLORER_INDEX = {_dumps({'meta': meta, 'rows': rows})};\n", encoding="utf-8")
        chunks: dict[int, dict] = {}
        for latent, record in records.items():
            chunks.setdefault(int(latent) // chunk_size, {})[str(int(latent))] = compact(record)
        for k, chunk in sorted(chunks.items()):
            (out / "data" / f"chunk_{k}.js").write_text(f"EXPLORER_CHUNK({k}, {_dumps(chunk)});\n", encoding="utf-8")
        everything = {"meta": meta, "rows": rows,
                      "records": {key: rec for chunk in chunks.values() for key, rec in chunk.items()}}
        (out / "latents.json").write_text(_dumps(everything) + "\n", encoding="utf-8")
    return output_dir


def process_seconds() -> float | None:
    """Seconds since this process started (imports and data loading included); None off Linux."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def folder_size(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
