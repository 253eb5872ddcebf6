"""Atomic writes: a reader (or a crashed run) never sees a half-written checkpoint, cache or report.

Each writer writes a temporary file in the destination folder, flushes it to disk, then renames it
over the destination (``os.replace`` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def check_writable_dir(path: str | os.PathLike, what: str, create: bool = True) -> Path:
    """Prove ``path`` is (or can become) a writable folder; a one-line ``UserError`` names it if not.

    With ``create=False`` nothing is written: the nearest existing ancestor is probed instead.
    """
    from common.errors import UserError

    path = Path(path)
    probe_dir = path
    if not create:
        while not probe_dir.exists() and probe_dir != probe_dir.parent:
            probe_dir = probe_dir.parent
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        elif not probe_dir.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        probe = tempfile.NamedTemporaryFile(dir=probe_dir, prefix=".write-test-", delete=True)
        probe.close()
    except OSError as err:
        raise UserError(
            f"{what} '{path}' is not writable ({err.strerror}); pass a folder you can write to"
        ) from None
    return path
