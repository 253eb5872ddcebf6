"""The contract every ``analyze.py`` job follows, and the one rule for writing its report folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from common.errors import UserError
from common.io import shared_mkdtemp

#: File every report folder holds: ``report_dir`` replaces an existing folder only if it has one.
REPORT_MARKER = ".report-of-analyze"


class Analysis:
    """An analysis job built from YAML by ``analyze.py``: ``run()`` writes a report, returns its folder.

    Subclasses validate their inputs in ``__init__`` or at the start of ``run`` (raising
    ``common.errors.UserError``) and write their report through ``report_dir``, so a failed run
    leaves no partial report behind and no folder but an earlier report is ever replaced.
    """

    def run(self) -> Path:
        raise NotImplementedError


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_dir(output_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> Path:
    """``output_dir`` if writing a report there can lose nothing, else a one-line ``UserError``.

    Allowed: a folder that does not exist, an empty one, or one that ``report_dir`` wrote before
    (it holds ``REPORT_MARKER``) — and in every case one that neither is nor holds any of ``inputs``
    (the run folders, checkpoints and configs the analysis reads). A run folder, a data folder or
    any other folder of the user's is never replaced.
    """
    final = Path(output_dir)
    resolved = final.resolve()
    for item in inputs:
        if item is None:
            continue
        source = Path(item).resolve()
        if _inside(source, resolved):
            raise UserError(f"output_dir '{final}' holds an input of this analysis ('{item}'); "
                            f"choose a new folder for the report (e.g. '{final / 'report'}')")
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise UserError(f"output_dir '{final}' exists and is not a report folder; choose a new folder")
    if final.is_dir() and any(final.iterdir()) and not (final / REPORT_MARKER).is_file():
        raise UserError(f"output_dir '{final}' exists and was not written by analyze.py (no "
                        f"{REPORT_MARKER}); it is never replaced: choose a new folder, or move it away yourself")
    return final


@contextlib.contextmanager
def report_dir(output_dir: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> Iterator[Path]:
    """Yield an empty staging folder beside ``output_dir``; on success it replaces ``output_dir``.

    ``check_output_dir`` runs first (an existing folder is replaced only if an earlier report
    wrote it); the finished folder gets ``REPORT_MARKER``; an older report is swapped out and removed
    only after the new one is in place; on any error the staging folder is deleted and
    ``output_dir`` is untouched. The folder gets the user's umask, like ``mkdir``.
    """
    final = check_output_dir(output_dir, list(inputs))
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = shared_mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    except OSError as err:
        raise UserError(f"cannot write the report folder '{final}' ({err.strerror}); "
                        "set output_dir to a folder you can write to") from None
    try:
        yield tmp
        (tmp / REPORT_MARKER).write_text("written by analyze.py; the next report may replace this folder\n",
                                         encoding="utf-8")
        old = None
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / final.name)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
