"""Atomic writes: a reader (or a crashed run) never sees a half-written checkpoint, cache or report.

Each writer writes a temporary file in the destination folder, flushes it to disk, then renames it
over the destination (``os.replace`` is atomic on POSIX within one file system).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from common.errors import UserError

# errors that mean "this file system will not take the write": reported as one line, not a traceback
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def current_umask() -> int:
    """The process umask (read without changing it where ``/proc`` allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def shared_mkdtemp(prefix: str, dir: str | os.PathLike) -> Path:
    """``tempfile.mkdtemp`` with the permissions of a normal ``mkdir`` (``0o777 & ~umask``): a report
    folder renamed into place from it is as readable as any other folder, not private (0700)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
    path.chmod(0o777 & ~current_umask())
    return path


def write_error(path: str | os.PathLike, err: OSError) -> UserError:
    """The one-line ``UserError`` for an OS error while writing ``path`` (disk full, read-only, ...)."""
    reason = err.strerror or type(err).__name__
    hint = ("free some disk space" if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            else "write somewhere you can write to")
    return UserError(f"cannot write '{path}' ({reason}); {hint} and run again (nothing was changed)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``, else removed.

    The file gets the mode a plain ``open(path, "w")`` would give (the existing file's mode, else
    ``0o666 & ~umask``), not ``mkstemp``'s private 0600. A full disk or a read-only folder while
    writing is a one-line ``UserError`` naming ``path``; ``path`` keeps its old content.
    """
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            mode = 0o666 & ~current_umask()
        yield tmp_path
        os.chmod(tmp_path, mode)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except OSError as err:
        if err.errno in WRITE_ERRNOS:
            raise write_error(path, err) from None
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (a full disk is a one-line ``UserError``)."""
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as err:  # torch's zip writer reports a failed write as a RuntimeError
            text = str(err)
            if "inline_container" not in text and "write" not in text.lower():
                raise
            if _nearly_full(tmp.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
            raise OSError(errno.EIO, f"write failed: {text.splitlines()[0][:80]}") from None
    return Path(path)


def _nearly_full(folder: Path, margin: int = 1 << 20) -> bool:
    try:
        return shutil.disk_usage(folder).free < margin
    except OSError:
        return False


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def replace_between_markers(path: str | os.PathLike, begin: str, end: str, text: str) -> bool:
    """Atomically replace what lies between the markers ``begin`` and ``end`` of the UTF-8 file at
    ``path`` with ``text`` (markers kept, each on its own line); False, file untouched, without them."""
    doc = Path(path).read_text(encoding="utf-8")
    start, stop = doc.find(begin), doc.find(end)
    if start < 0 or stop < start:
        return False
    atomic_write_text(path, doc[:start + len(begin)] + "\n" + text.strip("\n") + "\n" + doc[stop:])
    return True


def first_non_finite(obj: Any, prefix: str = "") -> tuple[str, float] | None:
    """``(dotted key, value)`` of the first NaN/inf float nested in ``obj``'s dicts and lists, or ``None``."""
    if isinstance(obj, float):
        return None if math.isfinite(obj) else (prefix or "<value>", obj)
    if isinstance(obj, dict):
        items = ((f"{prefix}.{k}" if prefix else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{prefix}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for key, value in items:
        found = first_non_finite(value, key)
        if found is not None:
            return found
    return None


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, strict JSON to ``path`` atomically.

    NaN and infinity are not JSON (``allow_nan=False``): such a value is a one-line ``UserError``
    naming the file and the key, and nothing is written, so a diverged run never leaves a
    ``results.json`` that looks finished.
    """
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    except ValueError as err:
        found = first_non_finite(obj)
        where = f"'{found[0]}' is {found[1]}" if found else str(err)
        raise UserError(f"not writing '{path}': {where}, which is not valid JSON; the run produced a "
                        f"non-finite number (diverged?): lower the lr or check the inputs") from None
    return atomic_write_text(path, text + "\n")


def check_writable_dir(path: str | os.PathLike, what: str, create: bool = True) -> Path:
    """Prove ``path`` is (or can become) a writable folder; a one-line ``UserError`` names it if not.

    With ``create=False`` nothing is written: the nearest existing ancestor is probed instead.
    """
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
